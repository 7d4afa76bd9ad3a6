//! A domain's HTTPS rules, on every transport: `"httpsOnly"` answers a plain-HTTP request
//! with a `308` to the same path over HTTPS (the ACME HTTP-01 check excepted), and `"hsts"`
//! sends `Strict-Transport-Security` on HTTPS answers (browsers ignore it over plain HTTP).

use std::sync::Arc;

use salvo::{
    http::{HeaderValue, StatusCode, header, uri::Scheme},
    prelude::*,
};

use salvo_oapi::endpoint;

use super::{AppState, domain_of_host, request_host};
use crate::store::records::DomainRecord;

/// The `Strict-Transport-Security` value: a year, the figure browsers' preload lists ask.
pub const HSTS: &str = "max-age=31536000";
/// Where the ACME server reads HTTP-01 answers: never sent to HTTPS.
pub const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// What a request on `domain` gets from its rules, given whether it came over TLS.
pub enum Rule {
    /// Served as it is.
    Serve,
    /// Served with `Strict-Transport-Security`.
    ServeWithHsts,
    /// Answered `308` to this URL.
    ToHttps(String),
}

/// The rule for a request for `path_and_query` on `domain`.
pub fn rule(domain: Option<&DomainRecord>, secure: bool, path_and_query: &str) -> Rule {
    let Some(domain) = domain else {
        return Rule::Serve;
    };
    if secure {
        return if domain.hsts {
            Rule::ServeWithHsts
        } else {
            Rule::Serve
        };
    }
    if domain.https_only && !path_and_query.starts_with(ACME_CHALLENGE_PATH) {
        return Rule::ToHttps(format!("https://{}{path_and_query}", domain.name));
    }
    Rule::Serve
}

/// Whether a request came over HTTPS: TLS here, or at a trusted proxy that ended it
/// (`X-Forwarded-Proto: https` under `--trust-forwarded-for`).
pub fn is_https(state: &AppState, req: &Request) -> bool {
    req.scheme() == &Scheme::HTTPS
        || (state.config.trust_forwarded_for
            && req
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https")))
}

/// Whether a domain has a rule the lean paths leave to salvo.
pub fn has_rules(domain: &DomainRecord) -> bool {
    domain.hsts || domain.https_only
}

/// The rules for requests salvo serves.
pub struct HttpsRules(pub Arc<AppState>);

#[async_trait]
impl Handler for HttpsRules {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        if self.0.domains.is_empty() {
            return;
        }
        let domain = domain_of_host(&self.0, request_host(req));
        let secure = is_https(&self.0, req);
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        match rule(domain.as_deref(), secure, &path) {
            Rule::Serve => {}
            Rule::ServeWithHsts => {
                ctrl.call_next(req, depot, res).await;
                res.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS),
                );
            }
            Rule::ToHttps(location) => {
                res.status_code(StatusCode::PERMANENT_REDIRECT);
                if let Ok(value) = HeaderValue::from_str(&location) {
                    res.headers_mut().insert(header::LOCATION, value);
                }
                ctrl.skip_rest();
            }
        }
    }
}

/// `GET /.well-known/acme-challenge/{token}`: the key authorization of an HTTP-01 check under
/// way, on whichever node the ACME server reaches.
pub struct AcmeAnswer(pub Arc<AppState>);

/// An ACME HTTP-01 challenge answer (for the ACME server checking a domain)
#[endpoint(
    tags("operations"),
    parameters(("token" = String, Path, description = "The challenge's token")),
    responses(
        (status_code = 200, description = "The key authorization", content_type = "application/octet-stream", body = String),
        (status_code = 404, description = "No check under way has this token", body = super::openapi::schemas::Error),
    )
)]
impl AcmeAnswer {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let token = req.params().get("token").cloned().unwrap_or_default();
        match self.0.certificates.http_answer(&token) {
            Some(answer) => {
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                res.body(answer);
            }
            None => super::ApiError::not_found("no such ACME challenge").write(res),
        }
    }
}
