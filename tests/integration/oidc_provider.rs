//! Test support: a real OpenID provider (`tests/oidc/provider.mjs`, node-oidc-provider) on a
//! free port of 127.0.0.1, and a browser-less walk through its sign-in pages.
//!
//! [`Provider::start`] installs the provider's npm packages on first use (`npm ci`, from the
//! lock file) if `tests/oidc/node_modules` lacks them, starts `node provider.mjs`, waits for its
//! `ready` line, and kills it when dropped.
//!
//! [`sign_in`] goes from an authorization URL to the callback URL with `code` and `state`, as a
//! browser would without JavaScript: it follows the provider's redirects by hand, keeps its
//! cookies by hand (reqwest has no cookie store here), fills the login form's `login` field and
//! submits it (and submits any further form, such as a consent page, as it is), and stops at
//! the first redirect that leaves the provider's origin.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::OnceCell,
};

/// How long the provider may take to say `ready`.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long `npm ci` may take.
const NPM_WAIT: Duration = Duration::from_secs(300);
/// At most this many requests from the authorization URL to the callback.
const MAX_STEPS: usize = 12;

/// A running `provider.mjs`, killed when dropped.
pub struct Provider {
    /// `http://127.0.0.1:{port}`: the issuer and the base of every endpoint.
    pub issuer: String,
    pub port: u16,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    extra_env: Vec<(String, String)>,
    child: Child,
    /// What the provider wrote to stderr (warnings, errors), for failure messages.
    stderr: Arc<Mutex<String>>,
}

impl Provider {
    /// Starts a provider with one confidential client.
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
    ) -> anyhow::Result<Provider> {
        Self::start_with(client_id, client_secret, redirect_uri, &[]).await
    }

    /// Like [`Provider::start`], with more environment for `provider.mjs` (e.g.
    /// `ID_TOKEN_CLAIMS=1` to put the email claims in the ID token as well as in userinfo).
    pub async fn start_with(
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Provider> {
        install().await?;
        let port = free_port()?;
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let issuer = format!("http://127.0.0.1:{port}");
        let (child, stderr) = spawn(
            port,
            &issuer,
            client_id,
            client_secret,
            redirect_uri,
            &extra_env,
        )
        .await?;
        Ok(Provider {
            issuer,
            port,
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            extra_env,
            child,
            stderr,
        })
    }

    /// Stops the provider and starts a new one on the same port: the same issuer and client,
    /// but a new signing key (a key rotation) and no sessions, codes or tokens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let (child, stderr) = spawn(
            self.port,
            &self.issuer,
            &self.client_id,
            &self.client_secret,
            &self.redirect_uri,
            &self.extra_env,
        )
        .await?;
        self.child = child;
        self.stderr = stderr;
        Ok(())
    }

    /// Stops the provider (it is unreachable until [`Provider::restart`]).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// What the provider wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// `npm ci` in tests/oidc, once per test process, if the packages are not there.
async fn install() -> anyhow::Result<()> {
    static INSTALLED: OnceCell<Result<(), String>> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let dir = dir();
            if dir.join("node_modules/oidc-provider/package.json").exists() {
                return Ok(());
            }
            let run = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(NPM_WAIT, run).await {
                Err(_) => Err(format!(
                    "npm ci in {} took over {NPM_WAIT:?}",
                    dir.display()
                )),
                Ok(Err(e)) => Err(format!(
                    "npm ci in {}: {e} (is npm installed?)",
                    dir.display()
                )),
                Ok(Ok(out)) if !out.status.success() => Err(format!(
                    "npm ci in {} failed ({}): {}{}",
                    dir.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
                Ok(Ok(_)) => Ok(()),
            }
        })
        .await
        .clone()
        .map_err(|e| anyhow!(e))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn spawn(
    port: u16,
    issuer: &str,
    client_id: &str,
    client_secret: &str,
    redirect_uri: &str,
    extra_env: &[(String, String)],
) -> anyhow::Result<(Child, Arc<Mutex<String>>)> {
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .current_dir(dir())
        .env("PORT", port.to_string())
        .env("ISSUER", issuer)
        .env("CLIENT_ID", client_id)
        .env("CLIENT_SECRET", client_secret)
        .env("REDIRECT_URI", redirect_uri)
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting node tests/oidc/provider.mjs (is node installed?)")?;
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        tokio::spawn(collect(err, stderr.clone()));
    }
    let stdout = child.stdout.take().context("the provider's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(START_WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "ready" {
                return Ok(true);
            }
        }
        Ok::<_, std::io::Error>(false)
    })
    .await;
    let said = |stderr: &Arc<Mutex<String>>| stderr.lock().map(|s| s.clone()).unwrap_or_default();
    match ready {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            // Give the stderr reader a moment to take the last words.
            tokio::time::sleep(Duration::from_millis(200)).await;
            bail!("provider.mjs exited before it was ready: {}", said(&stderr));
        }
        Ok(Err(e)) => bail!("reading provider.mjs's stdout: {e}"),
        Err(_) => bail!(
            "provider.mjs not ready within {START_WAIT:?}: {}",
            said(&stderr)
        ),
    }
    // Keep draining stdout so the provider never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, stderr))
}

async fn collect(from: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut s) = into.lock() {
            s.push_str(&line);
            s.push('\n');
        }
    }
}

/// Signs in as `login` from `authorization_url`, and returns the URL the provider finally
/// redirects to (the client's redirect URI with `code`, `state` and `iss`, or with `error`).
pub async fn sign_in(authorization_url: &str, login: &str) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let start = reqwest::Url::parse(authorization_url).context("the authorization URL")?;
    let origin = start.origin();
    let mut jar = Jar::default();
    let mut next = Step::Get(start);
    for _ in 0..MAX_STEPS {
        let (url, request) = match next {
            Step::Get(url) => (url.clone(), http.get(url)),
            Step::Post(url, fields) => (
                url.clone(),
                http.post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form_body(&fields)),
            ),
        };
        let request = match jar.header(&url) {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        let status = response.status();
        jar.store(&url, response.headers());
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .with_context(|| format!("{status} from {url} without a Location"))?;
            let target = url
                .join(location)
                .with_context(|| format!("Location {location:?}"))?;
            if target.origin() != origin {
                return Ok(target.into());
            }
            next = Step::Get(target);
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{status} from {url}: {}", snippet(&body));
        }
        let form = Form::parse(&body)
            .with_context(|| format!("no form on the page at {url}: {}", snippet(&body)))?;
        let action = url.join(form.action.as_deref().unwrap_or(url.as_str()))?;
        if form.method != "post" {
            bail!("the form at {url} is not a POST form: {form:?}");
        }
        let fields = form.fill(login);
        next = Step::Post(action, fields);
    }
    bail!("no redirect out of the provider after {MAX_STEPS} requests")
}

enum Step {
    Get(reqwest::Url),
    Post(reqwest::Url, Vec<(String, String)>),
}

fn form_body(fields: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

fn snippet(body: &str) -> String {
    body.chars().take(600).collect()
}

/// The provider's cookies: name, value and path (all on the one host).
#[derive(Default)]
struct Jar(Vec<(String, String, String)>);

impl Jar {
    fn store(&mut self, url: &reqwest::Url, headers: &reqwest::header::HeaderMap) {
        for header in headers.get_all("set-cookie") {
            let Ok(header) = header.to_str() else {
                continue;
            };
            let mut parts = header.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let mut path = default_path(url.path());
            let mut removed = value.is_empty();
            for attr in parts {
                let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
                match key.to_ascii_lowercase().as_str() {
                    "path" if val.starts_with('/') => path = val.to_owned(),
                    "max-age" if val.trim().parse::<i64>().is_ok_and(|s| s <= 0) => removed = true,
                    "expires" if val.contains("1970") => removed = true,
                    _ => {}
                }
            }
            self.0.retain(|(n, _, p)| !(n == name && *p == path));
            if !removed {
                self.0.push((name.to_owned(), value.to_owned(), path));
            }
        }
    }

    fn header(&self, url: &reqwest::Url) -> Option<String> {
        let path = url.path();
        let cookies: Vec<String> = self
            .0
            .iter()
            .filter(|(_, _, p)| path_matches(path, p))
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect();
        (!cookies.is_empty()).then(|| cookies.join("; "))
    }
}

/// RFC 6265 5.1.4.
fn path_matches(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request[cookie.len()..].starts_with('/')))
}

/// RFC 6265 5.1.4: the request path up to its last `/`.
fn default_path(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

/// The first form of a page, read the simple way (the provider's pages are plain HTML).
#[derive(Debug)]
struct Form {
    action: Option<String>,
    method: String,
    /// Name, type (lower case) and value of each input.
    inputs: Vec<(String, String, String)>,
}

impl Form {
    fn parse(html: &str) -> Option<Form> {
        let start = html.find("<form")?;
        let rest = &html[start..];
        let end = rest.find("</form>").unwrap_or(rest.len());
        let body = &rest[..end];
        let tag_end = body.find('>')?;
        let tag = &body[..tag_end];
        let action = attr(tag, "action");
        let method = attr(tag, "method")
            .unwrap_or_else(|| "get".into())
            .to_ascii_lowercase();
        let mut inputs = Vec::new();
        let mut at = tag_end;
        while let Some(i) = body[at..].find("<input") {
            let from = at + i;
            let close = body[from..].find('>').map_or(body.len(), |j| from + j);
            let tag = &body[from..close];
            if let Some(name) = attr(tag, "name") {
                let kind = attr(tag, "type")
                    .unwrap_or_else(|| "text".into())
                    .to_ascii_lowercase();
                inputs.push((name, kind, attr(tag, "value").unwrap_or_default()));
            }
            at = close;
        }
        Some(Form {
            action,
            method,
            inputs,
        })
    }

    /// The fields to submit: `login` is the login, a password anything, the rest as given.
    fn fill(&self, login: &str) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .filter(|(_, kind, _)| !matches!(kind.as_str(), "submit" | "button" | "checkbox"))
            .map(|(name, kind, value)| {
                let value = match (name.as_str(), kind.as_str()) {
                    ("login", _) => login.to_owned(),
                    (_, "password") => "any-password".to_owned(),
                    _ => value.clone(),
                };
                (name.clone(), value)
            })
            .collect()
    }
}

/// An attribute's value in a tag, quoted with `"` or `'`, entities `&amp;` `&quot;` `&#NN;`
/// decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at > 0 && lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let value = tag[value_start..].trim_start();
        let quote = value.chars().next()?;
        let raw = if quote == '"' || quote == '\'' {
            let inner = &value[1..];
            &inner[..inner.find(quote)?]
        } else {
            value
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()?
        };
        return Some(decode_entities(raw));
    }
    None
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "lt" => Some('<'),
            "gt" => Some('>'),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
