//! The OpenAPI document (`GET /api/openapi.json`) and a page that shows it (`GET /api/docs`).
//!
//! The document is made from the router: every handler describes itself with salvo-oapi's
//! `#[endpoint(..)]` on its `impl` block (parameters, body, answers, security), and
//! [`document`] walks the routes as they are built, so a route's path and methods in the
//! document are the ones it is served on. It is made once, when the router is, and served as
//! bytes. The page is our own, small and self-contained (no CDN, no bundled Swagger UI): it
//! fetches the document and lists the operations with plain JavaScript.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use salvo_oapi::{
    Components, OpenApi, RefOr, Responses, SecurityScheme, ToResponses, ToSchema, endpoint,
    security::{Http, HttpAuthScheme},
};

use super::ApiError;

/// The name of the bearer scheme that operations needing an API key refer to.
pub const BEARER: &str = "bearer";

/// The document of every route of `router`, as JSON.
pub fn document(router: &Router) -> Result<Bytes, serde_json::Error> {
    let doc = OpenApi::new("linkpulse", env!("CARGO_PKG_VERSION"))
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::new(HttpAuthScheme::Bearer)
                    .description("An API key, sent as `Authorization: Bearer <key>`."),
            ),
        )
        .merge_router(router);
    let mut json: serde_json::Value = serde_json::from_str(&doc.to_json()?)?;
    short_operation_ids(&mut json);
    serde_json::to_vec(&json).map(Bytes::from)
}

/// What a generated client calls each operation, by the handler's type (salvo-oapi names an
/// operation by its handler's path, `linkpulse.http.api.CreateLink`, the same for `GET` and
/// `HEAD`). A handler not named here is called by its type, first letter lower case.
const OPERATION_NAMES: &[(&str, &str)] = &[
    ("AcmeAnswer", "acmeChallenge"),
    ("AddDomain", "addDomain"),
    ("ApiDocs", "apiDocsPage"),
    ("Asset", "getAsset"),
    ("AuditPageRoute", "auditPage"),
    ("AuthMethods", "getAuthMethods"),
    ("Badge", "getBadge"),
    ("BulkCreate", "bulkCreateLinks"),
    ("BulkDelete", "bulkDeleteLinks"),
    ("BulkPatch", "bulkUpdateLinks"),
    ("EventsRoute", "streamEvents"),
    ("Health", "getHealth"),
    ("Home", "homePage"),
    ("ImportLinks", "importLinks"),
    ("LinkStats", "getLinkStats"),
    ("MetricsText", "getMetrics"),
    ("OidcCallback", "oidcCallback"),
    ("OpenApiJson", "getOpenApi"),
    ("PatchDomainRoute", "updateDomain"),
    ("PatchLink", "updateLink"),
    ("PatchMemberRoute", "updateMember"),
    ("Qr", "getLinkQr"),
    ("ReadLink", "getLink"),
    ("Ready", "getReady"),
    ("Realtime", "streamLink"),
    ("ShowInvitation", "getInvitation"),
    ("SignInRoute", "signIn"),
    ("SignOutRoute", "signOut"),
    ("SignUpPage", "signUpPage"),
    ("SignUpRoute", "signUp"),
    ("StartOidc", "startOidc"),
    ("StatsPage", "statsPage"),
    ("Unlock", "unlockLink"),
    ("WhoAmI", "getSession"),
];

/// Gives every operation of `doc` a short, unique `operationId` (`listLinks`, `createLink`,
/// `getLinkStats`; `headListLinks` for a `HEAD`), as client generators need.
fn short_operation_ids(doc: &mut serde_json::Value) {
    let mut taken = std::collections::HashSet::new();
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            let full = operation
                .get("operationId")
                .and_then(|id| id.as_str())
                .unwrap_or(path);
            let handler = full.rsplit('.').next().unwrap_or(full);
            let base = match (path.as_str(), handler) {
                // The redirect's handler is wrapped in a timer: named by its path instead.
                ("/{code}", "Timed") => "followLink".to_owned(),
                _ => OPERATION_NAMES
                    .iter()
                    .find(|(name, _)| *name == handler)
                    .map_or_else(|| lower_first(handler), |(_, id)| (*id).to_owned()),
            };
            let mut id = if method == "head" {
                format!("head{}", upper_first(&base))
            } else {
                base
            };
            if taken.contains(&id) {
                id = format!("{id}{}", upper_first(method));
            }
            taken.insert(id.clone());
            operation.insert("operationId".into(), serde_json::Value::String(id));
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// The document, filled in once the router holding this handler is complete.
pub type Document = Arc<OnceLock<Bytes>>;

/// `GET /api/openapi.json`.
pub struct OpenApiJson(pub Document);

/// The OpenAPI 3 document of this service
#[endpoint(
    tags("docs"),
    responses((status_code = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
impl OpenApiJson {
    async fn handle(&self, res: &mut Response) {
        let Some(doc) = self.0.get() else {
            // Cannot happen: `router` fills it in before the router is served.
            return ApiError::unavailable("the document is not ready", 1).write(res);
        };
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let _ = res.write_body(doc.clone());
    }
}

const DOCS_PAGE: &str = include_str!("../pages/api_docs.html");

/// `GET /api/docs`.
pub struct ApiDocs;

/// A page listing the operations of `/api/openapi.json`
#[endpoint(
    tags("docs"),
    responses((status_code = 200, description = "An HTML page", content_type = "text/html"))
)]
impl ApiDocs {
    async fn handle(&self, res: &mut Response) {
        res.status_code(StatusCode::OK);
        res.render(Text::Html(DOCS_PAGE));
    }
}

/// The error answers, `{"error": "..."}`, one type per status, for `#[endpoint(responses(..))]`.
macro_rules! error_responses {
    ($($name:ident = $code:literal, $what:literal;)*) => {$(
        #[doc = concat!("`", stringify!($code), "`: ", $what, ".")]
        pub struct $name;

        impl ToResponses for $name {
            fn to_responses(components: &mut Components) -> Responses {
                error_response(components, $code, $what)
            }
        }
    )*};
}

error_responses! {
    E400 = "400", "the request is not valid; the message says what is wrong";
    E401 = "401", "no API key, or not a valid one";
    E403 = "403", "the key's scope does not allow this";
    E404 = "404", "no such link (or not the caller's)";
    E409 = "409", "the code is taken";
    E413 = "413", "the request body is too large";
    E415 = "415", "the body is not `application/json`";
    E429 = "429", "too many requests from this key or address (link creations by a `links` key, failed authentications from an address); see `Retry-After`";
    E503 = "503", "busy or shutting down; see `Retry-After`";
}

fn error_response(components: &mut Components, code: &str, what: &str) -> Responses {
    let schema: RefOr<salvo_oapi::schema::Schema> = schemas::Error::to_schema(components);
    Responses::new().response(
        code,
        salvo_oapi::Response::new(what).add_content("application/json", schema),
    )
}

/// The shapes of answers the handlers write with borrowed fields (salvo-oapi derives schemas
/// only for owned types). Each mirrors one serialized type, named beside it; the `openapi`
/// integration test checks real answers against them.
#[allow(dead_code)] // Read by the document only.
pub mod schemas {
    use salvo_oapi::ToSchema;
    use serde::Serialize;

    use crate::{
        domain::{DeviceClass, RuleDevice},
        keys::KeyInfo,
    };

    /// An error answer (`super::ErrorBody`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "Error"))]
    pub struct Error {
        /// What was wrong (client errors), or `internal error`.
        error: String,
    }

    /// A link as the API shows it (`api::LinkBody`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "Link"))]
    #[serde(rename_all = "camelCase")]
    pub struct Link {
        code: String,
        /// The domain the link lives on (the default one: the host of `--base-url`).
        domain: String,
        url: String,
        short_url: String,
        stats_url: String,
        realtime_url: String,
        qr_url: String,
        created_at: String,
        updated_at: String,
        title: Option<String>,
        tags: Vec<String>,
        expires_at: Option<String>,
        expired_url: Option<String>,
        max_visits: Option<u64>,
        /// 301, 302 (the default), 307 or 308.
        redirect_status: u16,
        forward_query: bool,
        public_stats: bool,
        password_protected: bool,
        rules: Vec<Rule>,
        click_count: u64,
        /// The visits the shortener it was imported from counted (never part of
        /// `clickCount`); `null` for a link made here.
        imported_click_count: Option<u64>,
        last_click: Option<Click>,
    }

    /// A redirect rule (`api::RuleOut`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "Rule"))]
    pub struct Rule {
        device: Option<RuleDevice>,
        country: Option<String>,
        url: String,
    }

    /// One click's details (`links::frame::Analytics`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "Click"))]
    #[serde(rename_all = "camelCase")]
    pub struct Click {
        short_code: String,
        created_at: String,
        ip_address: Option<String>,
        user_agent: String,
        referer: Option<String>,
        country: Option<String>,
        browser: String,
        os: String,
        device: DeviceClass,
        bot: bool,
    }

    /// A stored click with its number (`api::ClickItem`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "NumberedClick"))]
    pub struct NumberedClick {
        seq: u64,
        #[serde(flatten)]
        click: Click,
    }

    /// `GET /api/links/{code}/clicks`, newest first.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "ClickPage"))]
    pub struct ClickPage {
        clicks: Vec<NumberedClick>,
    }

    /// `GET /api/links` (`manage::Listing`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "LinkPage"))]
    pub struct LinkPage {
        links: Vec<Link>,
        /// The `cursor` of the next page; `null` on the last.
        next: Option<String>,
    }

    /// `POST /api/links/bulk` (`bulk::BulkCreate`); a bare array of links is taken too.
    #[derive(ToSchema)]
    #[salvo(schema(name = "BulkCreateRequest"))]
    pub struct BulkCreateRequest {
        /// At most 1000, each as `POST /api/links` takes it.
        links: Vec<crate::http::fields::LinkFields>,
    }

    /// One item of a bulk creation's answer: `201` with the link, or the error a single
    /// creation would have answered (`400`, `404` for a domain, `409`, `503`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "BulkCreateItem"))]
    pub struct BulkCreateItem {
        status: u16,
        link: Option<Link>,
        error: Option<String>,
    }

    /// `POST /api/links/bulk`'s answer, in the request's order.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "BulkCreateAnswer"))]
    pub struct BulkCreateAnswer {
        results: Vec<BulkCreateItem>,
    }

    /// `PATCH /api/links/bulk`: the links (`codes` or `tag`) and the fields to `set`.
    #[derive(ToSchema)]
    #[salvo(schema(name = "BulkPatchRequest"))]
    pub struct BulkPatchRequest {
        /// At most 1000 codes, on the `?domain=` domain.
        codes: Option<Vec<String>>,
        /// Every link with this tag (any case), at most 1000.
        tag: Option<String>,
        /// As `PATCH /api/links/{code}` takes them (not `code` or `domain`).
        set: crate::http::fields::LinkFields,
    }

    /// `DELETE /api/links/bulk`: the links (`codes` or `tag`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "BulkDeleteRequest"))]
    pub struct BulkDeleteRequest {
        codes: Option<Vec<String>>,
        tag: Option<String>,
    }

    /// One link of a bulk change: `200` with the link (PATCH), `204` (DELETE), or `400`,
    /// `404`, `503` with an error.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "BulkChangeItem"))]
    pub struct BulkChangeItem {
        code: String,
        status: u16,
        link: Option<Link>,
        error: Option<String>,
    }

    /// `PATCH` and `DELETE /api/links/bulk`'s answer, in the selection's order.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "BulkChangeAnswer"))]
    pub struct BulkChangeAnswer {
        results: Vec<BulkChangeItem>,
    }

    /// A row skipped by an import: its code is taken.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "ImportSkipped"))]
    pub struct ImportSkipped {
        line: u64,
        code: String,
        reason: String,
    }

    /// A row an import refused.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "ImportError"))]
    pub struct ImportError {
        line: u64,
        error: String,
    }

    /// `POST /api/import`'s answer (`transfer::peers::PeerReport`).
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "ImportReport"))]
    #[serde(rename_all = "camelCase")]
    pub struct ImportReport {
        format: String,
        dry_run: bool,
        /// Rows read.
        rows: u64,
        /// Links created (in a dry run: that would be).
        created: u64,
        skipped: Vec<ImportSkipped>,
        errors: Vec<ImportError>,
    }

    /// `GET /api/keys`, oldest first.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "KeyList"))]
    pub struct KeyList {
        keys: Vec<KeyInfo>,
    }

    /// What waits for the disk.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "Backlog"))]
    #[serde(rename_all = "camelCase")]
    pub struct Backlog {
        clicks: u64,
        limit: u64,
        writer_queue: u64,
    }

    /// `GET /healthz`.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "Health"))]
    pub struct Health {
        /// `ok` or `unavailable`.
        status: String,
        /// Why not `ok`.
        reason: Option<String>,
        backlog: Backlog,
        /// Domains whose certificate ends within 7 days (absent when none).
        #[serde(rename = "certificatesExpiringSoon")]
        certificates_expiring_soon: Option<Vec<String>>,
    }

    /// `GET /readyz`.
    #[derive(Serialize, ToSchema)]
    #[salvo(schema(name = "Ready"))]
    pub struct Ready {
        ready: bool,
        /// Why not ready.
        reason: Option<String>,
    }
}
