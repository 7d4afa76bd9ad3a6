//! A short link: the code, where it points, who owns it.

use super::{ShortCode, TargetUrl};

/// The public id of an API key (a prefix of its hash); links record their owner by it.
pub type KeyId = String;

/// A stored short link. Immutable once created (editing is a later feature: it will replace the
/// record and the cached copy together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub code: ShortCode,
    pub target: TargetUrl,
    pub owner: KeyId,
    /// Creation time in epoch milliseconds.
    pub created_at: i64,
}
