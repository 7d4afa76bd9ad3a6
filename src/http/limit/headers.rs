//! The size of request headers, one by one and together: the same limits on both stream
//! transports.

use salvo::{http::StatusCode, prelude::*};

use super::super::ApiError;

/// The most bytes one request header (name and value) may have.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The most bytes all request headers together may have.
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;

/// Refuses requests whose headers are larger than [`MAX_HEADER_BYTES`] one by one or
/// [`MAX_HEADERS_BYTES`] together with `431`, before any handler sees them (hyper alone takes
/// up to about 400 KiB of headers, and refuses more than 100 of them with an empty `431`).
pub struct HeaderLimit;

#[async_trait]
impl Handler for HeaderLimit {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let sizes = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len());
        match check_header_sizes(sizes) {
            Ok(()) => {
                ctrl.call_next(req, depot, res).await;
            }
            Err(e) => {
                e.write(res);
                ctrl.skip_rest();
            }
        }
    }
}

/// The header size limits of [`HeaderLimit`], for each header's name and value length: shared
/// with the lean stream writer so both transports refuse the same heads.
pub fn check_header_sizes(sizes: impl IntoIterator<Item = usize>) -> Result<(), ApiError> {
    let mut total = 0;
    for size in sizes {
        total += size;
        if size > MAX_HEADER_BYTES || total > MAX_HEADERS_BYTES {
            return Err(ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers are too large (at most {MAX_HEADER_BYTES} bytes each, \
                     {MAX_HEADERS_BYTES} in all)"
                ),
            ));
        }
    }
    Ok(())
}
