//! `/api/openapi.json` describes every route the router has, with each of its methods, and
//! `/api/docs` shows it. The routes are read from the router itself (salvo's public `Router`
//! tree: `routers()`, `filters()`, `goal`), so a route added without a description fails here.

use std::collections::{BTreeMap, BTreeSet};

use linkpulse::{App, ServeConfig};
use reqwest::Method;
use salvo::{Router, routing::FilterInfo};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{KEY, TestResult, client};

/// The routes of a router: each path (params as `{name}`) with the methods that have a
/// handler, and the paths whose handler has no method (a goal that takes any method).
#[derive(Default, Debug)]
struct Routes {
    methods: BTreeMap<String, BTreeSet<String>>,
    any_method: BTreeSet<String>,
}

fn walk(router: &Router, path: &str, method: Option<&str>, routes: &mut Routes) {
    let mut path = path.to_owned();
    let mut method = method.map(str::to_owned);
    for filter in router.filters() {
        match filter.info() {
            FilterInfo::Path(segment) => {
                for part in segment.split('/').filter(|p| !p.is_empty()) {
                    path.push('/');
                    path.push_str(&normalise(part));
                }
            }
            FilterInfo::Method(m) => method = Some(m.as_str().to_owned()),
            // A filter of its own only narrows what the route matches (the home page takes `/`
            // and nothing longer): it adds no path segment and no method.
            FilterInfo::Other(_) => {}
            other => panic!("a filter this test does not know: {other:?}"),
        }
    }
    let shown = if path.is_empty() { "/" } else { &path }.to_owned();
    if router.goal.is_some() {
        match &method {
            Some(m) => {
                routes.methods.entry(shown).or_default().insert(m.clone());
            }
            None => {
                routes.any_method.insert(shown);
            }
        }
    }
    for child in router.routers() {
        walk(child, &path, method.as_deref(), routes);
    }
}

/// `{code}`, `{id:num}`, `{**rest}` → `{code}`, `{id}`, `{**rest}` (the wildcard kept, so it
/// is told apart).
fn normalise(segment: &str) -> String {
    match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        Some(param) => {
            let name = param.split([':', '|']).next().unwrap_or(param);
            format!("{{{name}}}")
        }
        None => segment.to_owned(),
    }
}

/// A concrete path for a route path: each parameter replaced by a value no link has.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| {
            if part.starts_with("{**") {
                "no/such/thing"
            } else if part.starts_with('{') {
                "zzNoSuch9"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_document_with_each_method() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut config = ServeConfig::for_dir(dir.path());
    config.initial_api_key = Some(KEY.to_owned());
    let app = App::build(config).await?;
    let mut routes = Routes::default();
    walk(&app.router(), "", None, &mut routes);
    let base = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let served = tokio::spawn(app.run(async move { signal.cancelled().await }));
    let client = client();

    let res = client
        .get(format!("{base}/api/openapi.json"))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert!(
        crate::support::content_type(&res).starts_with("application/json"),
        "{}",
        crate::support::content_type(&res)
    );
    let doc: Value = res.json().await?;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi: {version}");
    let paths = doc["paths"].as_object().ok_or("no paths")?;

    // Enough routes were found that the walk itself cannot have missed the tree.
    for (path, method) in [
        ("/{code}", "GET"),
        ("/{code}", "POST"),
        ("/api/links", "POST"),
        ("/api/links/{code}/stats", "GET"),
        ("/api/openapi.json", "GET"),
    ] {
        assert!(
            routes.methods.get(path).is_some_and(|m| m.contains(method)),
            "the walk did not find {method} {path}: {routes:?}"
        );
    }
    let mut missing = Vec::new();
    for (path, methods) in &routes.methods {
        for method in methods {
            let operation = &paths
                .get(path)
                .unwrap_or(&Value::Null)
                .get(method.to_lowercase())
                .unwrap_or(&Value::Null);
            if !operation.is_object() {
                missing.push(format!("{method} {path}"));
            } else {
                let responses = operation["responses"].as_object();
                assert!(
                    responses.is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a description: {missing:?}\ndocumented: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    // Nothing documented that the router does not serve.
    for (path, item) in paths {
        for method in item.as_object().ok_or("path item")?.keys() {
            assert!(
                routes
                    .methods
                    .get(path)
                    .is_some_and(|m| m.contains(&method.to_uppercase())),
                "documented but not routed: {method} {path}"
            );
        }
    }

    // The routes left out: goals that take any method. Each may only refuse: 404 (the
    // `{**rest}` fallback, `/realtime` without a code) or 405 (a method the route does not
    // have), for every method the route's documented methods leave.
    assert!(routes.any_method.contains("/{**rest}"), "{routes:?}");
    for path in &routes.any_method {
        let documented = routes.methods.get(path).cloned().unwrap_or_default();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            if documented.contains(method) {
                continue;
            }
            let url = format!("{base}{}", concrete(path));
            let res = client
                .request(Method::from_bytes(method.as_bytes())?, &url)
                .bearer_auth(KEY)
                .send()
                .await?;
            let status = res.status().as_u16();
            assert!(
                (status == 404 && documented.is_empty()) || status == 405,
                "{method} {url} (an undocumented route) answered {status}"
            );
        }
    }

    // The bearer scheme, and the API operations that need it refer to it.
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    assert_eq!(
        paths["/api/links"]["post"]["security"],
        json!([{"bearer": []}])
    );
    assert!(paths["/{code}"]["get"].get("security").is_none());

    // Every operation has a short id of its own, as a generated client names its methods.
    let mut ids = BTreeMap::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().ok_or("path item")? {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{method} {path}: operationId {id:?}"
            );
            if let Some(other) = ids.insert(id.clone(), format!("{method} {path}")) {
                panic!("{method} {path} and {other} share the operationId {id}");
            }
        }
    }
    for (id, at) in [
        ("listLinks", "get /api/links"),
        ("headListLinks", "head /api/links"),
        ("createLink", "post /api/links"),
        ("getLinkStats", "get /api/links/{code}/stats"),
        ("followLink", "get /{code}"),
        ("streamEvents", "get /api/events"),
    ] {
        assert_eq!(ids.get(id).map(String::as_str), Some(at), "{id}");
    }
    // A standard validator takes it (openapi-spec-validator from PyPI, as .ci/run installs it).
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc)?)?;
    let checked = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()?;
    assert!(
        checked.status.success(),
        "openapi-spec-validator (pip install openapi-spec-validator) refused the document: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The schemas say what the handlers send: a link's keys, an error's.
    let schema_keys = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    };
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let created = client
        .post(format!("{base}/api/links"))
        .bearer_auth(KEY)
        .json(&json!({"url": "https://example.com/", "code": "oapi"}))
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let link: Value = created.json().await?;
    assert_eq!(
        keys(&link),
        schema_keys("Link"),
        "{link}\nschemas: {:?}",
        keys(&doc["components"]["schemas"])
    );
    let created = paths["/api/links"]["post"]["responses"]["201"]["content"]["application/json"]
        ["schema"]["$ref"]
        .as_str();
    assert_eq!(created, Some("#/components/schemas/Link"));
    let listing: Value = client
        .get(format!("{base}/api/links"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(keys(&listing), schema_keys("LinkPage"), "{listing}");
    let refused: Value = client
        .get(format!("{base}/api/links"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(keys(&refused), schema_keys("Error"), "{refused}");

    // The page: HTML that reads the document, and loads nothing from elsewhere.
    let res = client.get(format!("{base}/api/docs")).send().await?;
    assert_eq!(res.status(), 200);
    assert!(crate::support::content_type(&res).starts_with("text/html"));
    let page = res.text().await?;
    assert!(page.contains("/api/openapi.json"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"));
    for path in ["/api/docs", "/api/openapi.json"] {
        let res = client.head(format!("{base}{path}")).send().await?;
        assert_eq!(res.status(), 200, "HEAD {path}");
        let res = client.post(format!("{base}{path}")).send().await?;
        assert_eq!(res.status(), 405, "POST {path}");
    }

    stop.cancel();
    served.await??;
    Ok(())
}

/// A client generated from the document by a generator from PyPI (`openapi-python-client`, as
/// .ci/run installs it) creates a link, follows it, reads it and its stats, and makes and reads
/// a webhook against the real server (`tests/client/use_client.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_creates_follows_and_reads_a_link() -> TestResult {
    let app = crate::support::spawn_app().await;
    let doc = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await?
        .bytes()
        .await?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("openapi.json");
    std::fs::write(&file, &doc)?;
    let package = work.path().join("linkpulse_client");
    let generated = tokio::process::Command::new("python3")
        .args([
            "-m",
            "openapi_python_client",
            "generate",
            "--meta",
            "none",
            "--path",
        ])
        .arg(&file)
        .arg("--output-path")
        .arg(&package)
        .output()
        .await?;
    assert!(
        generated.status.success() && package.join("api/links/create_link.py").exists(),
        "openapi-python-client (pip install openapi-python-client) did not generate the client: {}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/use_client.py");
    let used = tokio::process::Command::new("python3")
        .arg(&script)
        .env("BASE", &app.base)
        .env("KEY", KEY)
        .env("CLIENT_DIR", work.path())
        .output()
        .await?;
    let said = String::from_utf8_lossy(&used.stdout);
    assert!(
        used.status.success() && said.trim() == "ok",
        "the generated client: {said}{}",
        String::from_utf8_lossy(&used.stderr)
    );
    assert_eq!(app.count("generated").await, 1);
    app.stop().await;
    Ok(())
}
