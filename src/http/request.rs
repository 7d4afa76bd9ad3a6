//! What a handler reads of a request: its JSON body, its caller (API key and the rights it
//! gives), its client address and its `{code}`.

use std::net::IpAddr;

use salvo::{
    http::{HeaderValue, StatusCode, header, mime},
    prelude::*,
};
use serde::de::DeserializeOwned;

use super::{ApiError, AppState, limit};
use crate::keys::Caller;

/// `403` for a `read` key asking to change something.
pub fn require_write(caller: &Caller) -> Result<(), ApiError> {
    if caller.may_write() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this key is read-only (scope read)",
        ))
    }
}

/// `403` for a key that is not an admin key.
pub fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this needs an admin key (scope admin)",
        ))
    }
}

/// `415` unless the body is declared `application/json`.
pub fn require_json(req: &Request) -> Result<(), ApiError> {
    let is_json = req
        .content_type()
        .is_some_and(|m| m.type_() == mime::APPLICATION && m.subtype() == mime::JSON);
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ))
    }
}

/// A body of at most `max` bytes (`413` for a larger one, refused before it is read when its
/// length is declared: salvo would wait for a body it is told is too large).
pub async fn read_body(req: &mut Request, max: usize) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = req.payload_with_max_size(max).await.map_err(|e| match e {
        salvo::http::ParseError::PayloadTooLarge => too_large(),
        _ => ApiError::bad_request("could not read the request body"),
    })?;
    Ok(body.clone())
}

/// A JSON object body of at most `max` bytes, as `T`: `415` for another content type, `413`
/// for a larger body (refused before it is read, when its length is declared), `400` for
/// anything that is not a JSON object of `T`'s fields.
pub async fn read_json_object<T: DeserializeOwned>(
    req: &mut Request,
    max: usize,
) -> Result<T, ApiError> {
    require_json(req)?;
    let body = read_body(req, max).await?;
    // serde would also take a JSON array as the fields in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("JSON body must be an object"));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The caller behind `Authorization: Bearer <key>`, or a 401.
pub async fn authenticate(state: &AppState, req: &Request) -> Result<Caller, ApiError> {
    let ip = client_ip(state, req);
    if let Some(ip) = ip {
        state
            .client_limits()
            .check_auth(ip)
            .map_err(limit::Limited::into_error)?;
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        // No key: a signed-in person's session cookie, checked against the store now.
        if let Some((caller, _)) = super::session::signed_in(state, req).await? {
            return Ok(caller);
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <api key> (or sign in)",
        ));
    };
    // A key was presented: a wrong, revoked or malformed one counts against the address
    // (`--auth-failures-per-ip`); a missing one guesses nothing and does not.
    presented_key(state, value).inspect_err(|_| {
        if let Some(ip) = ip {
            state.client_limits().auth_failed(ip);
        }
    })
}

/// The `limit` query parameter of a listing: `default` when absent, else 1 to `max`.
pub fn page_limit(req: &Request, default: usize, max: usize) -> Result<usize, ApiError> {
    match req.query::<String>("limit") {
        None => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {max}"))),
    }
}

/// The caller whose key the `Authorization` header holds.
fn presented_key(state: &AppState, value: &HeaderValue) -> Result<Caller, ApiError> {
    let unauthorized = |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, msg);
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("Authorization must be 'Bearer <api key>'"))?;
    state
        .keys
        .authenticate(key.trim())
        .ok_or_else(|| unauthorized("invalid API key"))
}

/// The client address: the socket peer, or the last `X-Forwarded-For` entry when the operator
/// trusts a proxy in front.
pub fn client_ip(state: &AppState, req: &Request) -> Option<IpAddr> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .map(HeaderValue::as_bytes);
    client_addr(
        state.config.trust_forwarded_for,
        req.remote_addr().ip(),
        forwarded,
    )
}

/// [`client_ip`] from its parts, for the lean stream writer, which has no salvo request.
pub(crate) fn client_addr(
    trust_forwarded_for: bool,
    peer: Option<IpAddr>,
    forwarded_for: Option<&[u8]>,
) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(forwarded) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok())
        && let Some(last) = forwarded.rsplit(',').next()
        && let Ok(ip) = last.trim().parse::<IpAddr>()
    {
        return Some(ip);
    }
    peer
}

/// The `{code}` path parameter. Codes never hold `%`, so a path with a percent-escape names no
/// code (salvo would decode `/%41bc` into `Abc`).
pub fn code_param(req: &Request) -> &str {
    if req.uri().path().contains('%') {
        return "";
    }
    req.params().get("code").map_or("", String::as_str)
}

/// The host a salvo request names: the URI's authority (HTTP/2, absolute-form), else `Host`.
pub fn request_host(req: &Request) -> Option<&str> {
    req.uri().host().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// The domain (other than the default) a request's host names, if it is one added: the port
/// dropped, the case folded, a trailing dot ignored. Hosts are ASCII on the wire (punycode),
/// as domains are kept, so this is a lookup, not a parse.
pub fn domain_of_host(
    state: &AppState,
    host: Option<&str>,
) -> Option<std::sync::Arc<crate::store::records::DomainRecord>> {
    if state.domains.is_empty() {
        return None;
    }
    state.domains.get(&host_name(host?))
}

/// A host as sent, as domains are kept: the port dropped, the case folded, a trailing dot
/// ignored (an IPv6 literal keeps its brackets).
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        Some((name, port))
            if name.starts_with('[')
                && name.ends_with(']')
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// With `--strict-host`, `Err` (a `404` with JSON) for a request whose host names neither
/// the default domain nor one added; without it every host is served.
pub fn check_host(state: &AppState, host: Option<&str>) -> Result<(), ApiError> {
    if !state.config.strict_host {
        return Ok(());
    }
    let known = host
        .map(host_name)
        .is_some_and(|name| name == state.default_host || state.domains.get(&name).is_some());
    if known {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "no such domain here (--strict-host): the Host names no domain of this service",
        ))
    }
}

/// The link key `raw` (a code as sent) names on the domain `domain`: `None` when `raw` is no
/// code.
pub fn key_on(
    domain: Option<&crate::store::records::DomainRecord>,
    raw: &str,
) -> Option<crate::domain::ShortCode> {
    let code = crate::domain::ShortCode::parse(raw).ok()?;
    Some(match domain {
        None => code,
        // Stored names were checked when added.
        Some(domain) => crate::domain::ShortCode::on_checked(&domain.name, &code),
    })
}
