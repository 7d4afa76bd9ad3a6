//! The one mapping from errors to HTTP statuses: [`ApiError`], answered as
//! `{"error": "..."}`, and what each library error becomes.

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use serde::Serialize;
use tracing::{error, warn};

use crate::{keys::KeyError, links::LinkError, store::WriteError};

/// A client or server error answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A `503` telling the client when to try again.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message).with_retry_after(retry_after_secs)
    }

    pub fn write(&self, res: &mut Response) {
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res.status_code(self.status);
        res.render(Json(ErrorBody {
            error: &self.message,
        }));
    }
}

impl From<LinkError> for ApiError {
    /// Server-side failures are logged with their cause and answered without it.
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            ),
            // Deleted while the request was on its way.
            LinkError::Gone => Self::not_found("no such link"),
            LinkError::Unavailable => {
                Self::unavailable("this link cannot be served right now, try again", 1)
            }
            LinkError::Timeout => {
                warn!(cause = %e, "link operation timed out");
                Self::unavailable("the service is busy, try again", 1)
            }
            // A cluster store's servers out of reach: nothing was changed; it passes.
            LinkError::Write(WriteError::Unavailable(_)) => {
                warn!(cause = %e, "link operation not possible now");
                Self::unavailable("the store cannot be reached now, try again", 1)
            }
            LinkError::Store(ref store) if store.is_unavailable() => {
                warn!(cause = %e, "link operation not possible now");
                Self::unavailable("the store cannot be reached now, try again", 1)
            }
            other => {
                error!(cause = %other, "link operation failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::BadName(_) | KeyError::LastAdmin => Self::bad_request(e.to_string()),
            KeyError::NotFound(_) => Self::not_found(e.to_string()),
            KeyError::Store(cause) => {
                error!(cause = %cause, "an API key operation failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}
