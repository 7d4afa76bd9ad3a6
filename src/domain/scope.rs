//! What an API key may do.

use serde::{Deserialize, Serialize};

/// What a key may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    salvo_oapi::ToSchema,
)]
#[salvo(schema(name = "Scope"))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every link, and the keys themselves.
    Admin,
    /// Full control of its own links.
    Links,
    /// Reading links and their stats (every link: an admin makes it), nothing else.
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Links => "links",
            Self::Read => "read",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
