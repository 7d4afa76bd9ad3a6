//! `GET /{code}`: answer `302` at once and cast the click; `HEAD /{code}` answers the same
//! without counting. In strict durability the answer waits for the click's fsync.

use std::{sync::Arc, time::Duration};

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use tokio::sync::oneshot;
use tracing::error;

use super::{AppState, client_ip, code_param, pages};
use crate::{
    analytics::{anonymise_ip, clip},
    domain::{ShortCode, now_ms},
    links::Click,
    store::Durability,
};

const MAX_USER_AGENT: usize = 512;
const MAX_REFERER: usize = 1024;
/// How long a strict-mode redirect waits for its fsync before giving up with a 503.
const STRICT_WAIT: Duration = Duration::from_secs(5);

pub struct Redirect {
    pub state: Arc<AppState>,
    /// False for HEAD: answer the same, count nothing.
    pub count: bool,
}

impl Redirect {
    fn click(&self, req: &Request) -> Click {
        let state = &self.state;
        let header_text = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let client = client_ip(state, req);
        let referer = header_text(header::REFERER);
        // The proxy's header first, else the country database, with the full address.
        let country = state
            .config
            .country_header
            .as_deref()
            .and_then(|name| {
                let value = req.headers().get(name)?.to_str().ok()?.trim();
                (value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()))
                    .then(|| value.to_ascii_uppercase())
            })
            .or_else(|| state.country_db.as_ref()?.country(client?));
        let ip = client.map(|ip| {
            if state.config.store_full_ip {
                ip.to_string()
            } else {
                anonymise_ip(ip).to_string()
            }
        });
        Click {
            at: now_ms(),
            ip,
            user_agent: clip(header_text(header::USER_AGENT), MAX_USER_AGENT),
            referer: (!referer.is_empty()).then(|| clip(referer, MAX_REFERER)),
            country,
            ack: None,
        }
    }
}

#[async_trait]
impl Handler for Redirect {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let Ok(code) = ShortCode::parse(code_param(req)) else {
            return pages::not_found(res);
        };
        let link = match self.state.links.find(&code).await {
            Ok(Some(link)) => link,
            Ok(None) => return pages::not_found(res),
            Err(e) => return super::ApiError::from(e).write(res),
        };
        let Ok(location) = HeaderValue::from_str(link.target.as_str()) else {
            // Cannot happen: targets are ASCII without control characters by construction.
            error!(code = %code, "stored target is not a valid header value");
            res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
            return;
        };
        if self.count {
            let mut click = self.click(req);
            let fsynced = if self.state.config.durability == Durability::Strict {
                let (tx, rx) = oneshot::channel();
                click.ack = Some(tx);
                Some(rx)
            } else {
                None
            };
            // In default durability a click that cannot be taken (the store failed, the backlog
            // is full) is dropped and counted in the metrics; the visitor still gets the
            // redirect. In strict durability the redirect waits for the click's fsync, so a
            // click that cannot be stored is a 503.
            let taken = self.state.links.click(&link, click);
            if let Some(fsynced) = fsynced
                && (taken.is_err()
                    || !matches!(tokio::time::timeout(STRICT_WAIT, fsynced).await, Ok(Ok(()))))
            {
                return super::ApiError::unavailable("the click could not be stored", 1).write(res);
            }
        }
        res.status_code(StatusCode::FOUND);
        let headers = res.headers_mut();
        headers.insert(header::LOCATION, location);
        // Said explicitly so HEAD answers carry it too (load tools wait for a length).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        // Every click must reach us: no caching of the redirect by browsers or proxies.
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=0, no-store"),
        );
    }
}
