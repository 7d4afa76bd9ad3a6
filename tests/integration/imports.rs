//! Imports of other shorteners' exports (`tests/fixtures/imports/`): through
//! `POST /api/import` on a running server, and through `linkpulse import --format ...` on a
//! stopped one's data directory; a dry run first (nothing changes, the report is right), then
//! for real (links with their titles, tags, creation times and `importedClickCount`).

use serde_json::{Value, json};

use crate::support::{KEY, TestApp, TestResult, spawn_app, spawn_with};
use crate::transfer::run;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/imports/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).expect("fixture")
}

/// What each sample holds: its format, its file, the codes it gives with (title, tags,
/// createdAt, importedClickCount) of the first, and the lines it refuses.
struct Sample {
    format: &'static str,
    file: &'static str,
    codes: &'static [&'static str],
    first: (Value, Value, &'static str, u64),
    refused: &'static [u64],
}

fn samples() -> Vec<Sample> {
    vec![
        Sample {
            format: "bitly",
            file: "bitly.csv",
            codes: &["3Kx9aQz", "launch-day", "49pQw2r"],
            first: (
                json!("Spring sale, 20% off"),
                json!(["marketing", "spring"]),
                "2024-03-01T09:15:00Z",
                1520,
            ),
            refused: &[5],
        },
        Sample {
            format: "shlink",
            file: "shlink.csv",
            codes: &["docs-2023", "xmas", "plain"],
            first: (
                json!("Docs, version 2"),
                json!(["docs", "v2"]),
                "2023-11-02T10:20:30Z",
                412,
            ),
            refused: &[],
        },
        Sample {
            format: "yourls",
            file: "yourls.csv",
            codes: &["gh", "cafe", "old-one"],
            first: (
                json!("YOURLS: Your Own URL Shortener, on GitHub"),
                json!([]),
                "2019-06-01T12:00:00Z",
                2048,
            ),
            refused: &[],
        },
        Sample {
            format: "kutt",
            file: "kutt.json",
            codes: &["k-docs", "tokyo"],
            first: (
                json!("Kutt docs, self-hosting"),
                json!([]),
                "2024-02-10T11:22:33Z",
                31,
            ),
            refused: &[2],
        },
    ]
}

impl TestApp {
    async fn import(&self, format: &str, dry_run: bool, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/import?format={format}&dryRun={dry_run}")))
            .bearer_auth(KEY)
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .expect("sent")
    }

    async fn read_status(&self, code: &str) -> u16 {
        self.client
            .get(self.url(&format!("/api/links/{code}")))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16()
    }
}

fn lines(list: &Value) -> Vec<u64> {
    list.as_array()
        .map(|l| l.iter().filter_map(|e| e["line"].as_u64()).collect())
        .unwrap_or_default()
}

/// The first link of `sample` as the API shows it.
async fn check_first(app: &TestApp, sample: &Sample) {
    let link = app.read(sample.codes[0]).await;
    let (title, tags, created, visits) = &sample.first;
    assert_eq!(&link["title"], title, "{}: {link}", sample.format);
    assert_eq!(&link["tags"], tags, "{}", sample.format);
    assert_eq!(link["createdAt"], *created, "{}", sample.format);
    assert_eq!(link["importedClickCount"], *visits, "{}", sample.format);
    assert_eq!(link["clickCount"], 0, "never added to the count");
}

#[tokio::test]
async fn each_sample_imports_through_the_api_after_a_dry_run_that_changes_nothing() -> TestResult {
    let app = spawn_app().await;
    for sample in samples() {
        let res = app.import(sample.format, true, fixture(sample.file)).await;
        assert_eq!(res.status(), 200, "{}", sample.format);
        let report: Value = res.json().await?;
        assert_eq!(report["format"], sample.format);
        assert_eq!(report["dryRun"], true);
        assert_eq!(report["created"], sample.codes.len(), "{report}");
        assert_eq!(lines(&report["errors"]), sample.refused, "{report}");
        for code in sample.codes {
            assert_eq!(app.read_status(code).await, 404, "dry run made {code}");
        }

        let report: Value = app
            .import(sample.format, false, fixture(sample.file))
            .await
            .json()
            .await?;
        assert_eq!(report["dryRun"], false);
        assert_eq!(report["created"], sample.codes.len(), "{report}");
        assert_eq!(report["skipped"], json!([]));
        check_first(&app, &sample).await;
        for code in sample.codes {
            assert_eq!(app.click(code).await.status(), 302, "{code}");
        }

        // Again: every code is taken now, named with its line.
        let report: Value = app
            .import(sample.format, true, fixture(sample.file))
            .await
            .json()
            .await?;
        assert_eq!(report["created"], 0, "{report}");
        let skipped = report["skipped"].as_array().cloned().unwrap_or_default();
        assert_eq!(skipped.len(), sample.codes.len(), "{report}");
        assert_eq!(skipped[0]["code"], sample.codes[0]);
        assert_eq!(skipped[0]["reason"], "the code is taken");
    }
    // Each imported link is in the audit log.
    let audit: Value = app
        .client
        .get(app.url("/api/audit?limit=1"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(audit["entries"][0]["action"], "link.created");
    assert_eq!(audit["entries"][0]["target"], "tokyo");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_malformed_export_names_its_line_and_imports_nothing() -> TestResult {
    let app = spawn_app().await;
    let broken = b"keyword,url,title\nok,https://example.com/,fine\nbad,https://example.com/\n";
    let res = app.import("yourls", false, broken.to_vec()).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await?;
    assert_eq!(body["line"], 3, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("line 3") && error.contains("2 fields where the header has 3"),
        "{error}"
    );
    assert_eq!(app.read_status("ok").await, 404, "nothing imported");
    let huge = vec![b'a'; 16 * 1024 * 1024 + 1];
    let (status, error) = crate::support::json_error(app.import("shlink", false, huge).await).await;
    assert_eq!(status, 413, "{error}");
    for (query, word) in [("format=tinyurl", "tinyurl"), ("dryRun=true", "format")] {
        let res = app
            .client
            .post(app.url(&format!("/api/import?{query}")))
            .bearer_auth(KEY)
            .body("x")
            .send()
            .await?;
        let (status, error) = crate::support::json_error(res).await;
        assert_eq!(status, 400, "{query}");
        assert!(error.contains(word), "{query}: {error}");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn each_sample_imports_through_the_cli_on_a_stopped_store_after_a_dry_run() -> TestResult {
    let app = spawn_app().await;
    let dir = app.stop().await;
    let files = tempfile::tempdir()?;
    for sample in samples() {
        let file = files.path().join(sample.file);
        std::fs::write(&file, fixture(sample.file))?;
        let file = file.to_str().unwrap_or_default();
        let (ok, stdout, stderr) = run(
            &["import", "--format", sample.format, "--dry-run", file],
            dir.path(),
        );
        assert!(ok, "{stderr}");
        let n = sample.codes.len();
        assert!(
            stdout.contains(&format!(
                "would create {n} links, skipped 0, refused {}",
                sample.refused.len()
            )) && stdout.contains("dry run, nothing changed"),
            "{stdout}"
        );
        for line in sample.refused {
            assert!(
                stdout.contains(&format!("refused line {line}: ")),
                "{stdout}"
            );
        }
        let (ok, stdout, stderr) = run(&["import", "--format", sample.format, file], dir.path());
        assert!(ok, "{stderr}");
        assert!(stdout.contains(&format!("created {n} links")), "{stdout}");
    }
    // Twice: every code taken now.
    let file = files.path().join("shlink.csv");
    let (ok, stdout, _) = run(
        &[
            "import",
            "--format",
            "shlink",
            "--dry-run",
            file.to_str().unwrap_or_default(),
        ],
        dir.path(),
    );
    assert!(ok);
    assert!(
        stdout.contains("would create 0 links, skipped 3")
            && stdout.contains("skipped line 2: docs-2023: the code is taken"),
        "{stdout}"
    );
    // A broken file: the line named, nothing imported.
    let broken = files.path().join("broken.csv");
    std::fs::write(
        &broken,
        "keyword,url,title\nfresh,https://example.com/,x\nbad,https://example.com/\n",
    )?;
    let (ok, _, stderr) = run(
        &[
            "import",
            "--format",
            "yourls",
            broken.to_str().unwrap_or_default(),
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("line 3") && stderr.contains("nothing was imported"),
        "{stderr}"
    );

    let app = spawn_with(Some(dir), |_| {}).await;
    for sample in samples() {
        check_first(&app, &sample).await;
        for code in sample.codes {
            assert_eq!(app.click(code).await.status(), 302, "{code}");
        }
    }
    assert_eq!(app.read_status("fresh").await, 404);
    app.stop().await;
    Ok(())
}
