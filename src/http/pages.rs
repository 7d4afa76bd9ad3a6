//! HTML pages: the stats page of a link, and the page for an unknown code.

use std::sync::Arc;

use html_escape::encode_double_quoted_attribute as attr;
use salvo::{http::StatusCode, prelude::*};

use super::{AppState, code_param};
use crate::domain::ShortCode;

const STATS: &str = include_str!("../pages/stats.html");
const NOT_FOUND: &str = include_str!("../pages/not_found.html");

/// A small HTML 404 for people who followed a bad link.
pub fn not_found(res: &mut Response) {
    res.status_code(StatusCode::NOT_FOUND);
    res.render(Text::Html(NOT_FOUND));
}

/// Anything no route matched: JSON under `/api/`, the HTML page elsewhere.
pub struct Fallback;

#[async_trait]
impl Handler for Fallback {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let path = req.uri().path();
        if path.starts_with("/api/") || path.starts_with("/realtime/") {
            super::ApiError::not_found("no such API endpoint").write(res);
        } else {
            not_found(res);
        }
    }
}

/// `GET /links/{code}`: the page an `EventSource` keeps current. Public, like the original.
pub struct StatsPage(pub Arc<AppState>);

#[async_trait]
impl Handler for StatsPage {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let Ok(code) = ShortCode::parse(code_param(req)) else {
            return not_found(res);
        };
        let link = match state.links.find(&code).await {
            Ok(Some(link)) => link,
            Ok(None) => return not_found(res),
            Err(e) => return super::ApiError::from(e).write(res),
        };
        // The page opens with the count it has and the stream brings it up to date.
        let count = match state.links.snapshot(&link).await {
            Ok(snapshot) => snapshot.count.to_string(),
            Err(_) => "…".to_owned(),
        };
        let short_url = format!("{}/{}", state.base_url, link.code);
        let stream = format!("/realtime/{}", link.code);
        let page = STATS
            .replace("{{code}}", &attr(link.code.as_str()))
            .replace("{{stream}}", &attr(&stream))
            .replace("{{short_url}}", &attr(&short_url))
            .replace("{{target}}", &attr(link.target.as_str()))
            .replace("{{count}}", &count);
        res.render(Text::Html(page));
    }
}
