//! Workspaces: what links, domains and keys belong to, and what a user is a member of with a
//! role. Each is a setting in the store (`workspace.{id}`). The first workspace is always there,
//! stored or not: a store from before workspaces holds every link and key in it, as records
//! that name no workspace.

use serde::{Deserialize, Serialize};

use super::AccountError;
use crate::{
    domain::now_ms,
    store::{Backend, records},
};

/// The first workspace's id: records that name no workspace belong to it.
pub const FIRST_WORKSPACE: &str = "default";
/// Its name until someone renames it.
const FIRST_NAME: &str = "Default";
const WORKSPACE: &str = "workspace.";
/// The longest workspace name, in characters.
const MAX_NAME_CHARS: usize = 100;

/// A workspace as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub v: u8,
    /// [`FIRST_WORKSPACE`], or 12 hex digits drawn at creation.
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// A workspace's id as a record keeps it: `None` is the first.
pub fn stored_id(workspace: &str) -> Option<String> {
    (workspace != FIRST_WORKSPACE).then(|| workspace.to_owned())
}

/// The workspace a record that may name none belongs to.
pub fn workspace_of(stored: Option<&str>) -> &str {
    stored.unwrap_or(FIRST_WORKSPACE)
}

/// A name checked: 1 to 100 characters, trimmed, no control characters.
pub fn parse_name(raw: &str) -> Result<String, AccountError> {
    let name = raw.trim();
    let chars = name.chars().count();
    if !(1..=MAX_NAME_CHARS).contains(&chars) || name.chars().any(char::is_control) {
        return Err(AccountError::Invalid(format!(
            "name: 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(name.to_owned())
}

/// The workspaces in a store (every call blocks: run it off the async threads).
pub struct Workspaces<'a>(pub &'a dyn Backend);

impl Workspaces<'_> {
    /// Every workspace, the first one first.
    pub fn list(&self) -> Result<Vec<WorkspaceRecord>, AccountError> {
        let mut all: Vec<WorkspaceRecord> = self
            .0
            .settings(WORKSPACE)?
            .iter()
            .filter_map(|(_, v)| records::decode_any("workspace", v).ok())
            .collect();
        if !all.iter().any(|w| w.id == FIRST_WORKSPACE) {
            all.push(first());
        }
        all.sort_by(|a, b| {
            (a.id != FIRST_WORKSPACE, a.created_at, &a.id).cmp(&(
                b.id != FIRST_WORKSPACE,
                b.created_at,
                &b.id,
            ))
        });
        Ok(all)
    }

    pub fn get(&self, id: &str) -> Result<Option<WorkspaceRecord>, AccountError> {
        let stored = self
            .0
            .setting(&format!("{WORKSPACE}{id}"))?
            .and_then(|v| records::decode_any("workspace", &v).ok());
        Ok(stored.or_else(|| (id == FIRST_WORKSPACE).then(first)))
    }

    /// Makes a workspace named `name`.
    pub fn create(&self, name: &str) -> Result<WorkspaceRecord, AccountError> {
        let workspace = WorkspaceRecord {
            v: records::RECORD_VERSION,
            id: format!("{:012x}", rand::random::<u64>() >> 16),
            name: parse_name(name)?,
            created_at: now_ms(),
        };
        self.put(&workspace)?;
        Ok(workspace)
    }

    /// Renames the workspace `id`.
    pub fn rename(&self, id: &str, name: &str) -> Result<WorkspaceRecord, AccountError> {
        let mut workspace = self
            .get(id)?
            .ok_or_else(|| AccountError::Invalid(format!("no workspace {id}")))?;
        workspace.name = parse_name(name)?;
        self.put(&workspace)?;
        Ok(workspace)
    }

    fn put(&self, workspace: &WorkspaceRecord) -> Result<(), AccountError> {
        self.0.put_setting(
            &format!("{WORKSPACE}{}", workspace.id),
            &records::encode_any(workspace),
        )?;
        Ok(())
    }
}

fn first() -> WorkspaceRecord {
    WorkspaceRecord {
        v: records::RECORD_VERSION,
        id: FIRST_WORKSPACE.to_owned(),
        name: FIRST_NAME.to_owned(),
        created_at: 0,
    }
}
