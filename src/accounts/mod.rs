//! People who sign in: users with an email and a password (argon2id, as link passwords are),
//! each with a role, and their sessions. Both are settings in the store (`user.{id}`,
//! `session.{SHA-256 of the cookie's token}`), so every node of a cluster honours a session and
//! a signed-out one is refused on every node at once: a session is read from the store at each
//! request that carries its cookie (API requests only; redirects carry none).

pub mod oidc;
mod workspaces;

use std::{collections::BTreeMap, sync::LazyLock};

pub use workspaces::{
    FIRST_WORKSPACE, WorkspaceRecord, Workspaces, parse_name as parse_workspace_name, stored_id,
    workspace_of,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    domain::now_ms,
    keys::Scope,
    store::{Backend, StoreError, records},
};

/// How long a session lasts from sign-in.
pub const SESSION_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
/// The shortest and longest password taken.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=1024;

const USER: &str = "user.";
const SESSION: &str = "session.";
const INVITE: &str = "invite.";
/// How long an invitation may be used.
pub const INVITATION_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

/// What a user may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, salvo_oapi::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, members included.
    Owner,
    /// Everything but owners.
    Admin,
    /// Creates and changes links.
    Member,
    /// Reads and watches.
    Viewer,
}

impl Role {
    /// The API scope the role acts with.
    pub fn scope(self) -> Scope {
        match self {
            Self::Owner | Self::Admin => Scope::Admin,
            Self::Member => Scope::Links,
            Self::Viewer => Scope::Read,
        }
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub v: u8,
    /// 16 hex digits, drawn at creation.
    pub id: String,
    /// Lower case, as typed otherwise.
    pub email: String,
    /// The argon2id PHC string; `None` until the user sets one.
    pub password_hash: Option<String>,
    /// The role in the first workspace, as a record from before workspaces kept it; see
    /// [`UserRecord::roles`].
    pub role: Role,
    pub created_at: i64,
    pub disabled: bool,
    /// The workspaces the user is a member of, with the role in each; empty in a record from
    /// before workspaces (a member of the first, with `role`).
    #[serde(default)]
    pub workspaces: BTreeMap<String, Role>,
}

impl UserRecord {
    /// Each workspace the user is a member of, with the role there.
    pub fn roles(&self) -> BTreeMap<String, Role> {
        if self.workspaces.is_empty() {
            BTreeMap::from([(FIRST_WORKSPACE.to_owned(), self.role)])
        } else {
            self.workspaces.clone()
        }
    }

    /// The role in `workspace`, if a member.
    pub fn role_in(&self, workspace: &str) -> Option<Role> {
        self.roles().get(workspace).copied()
    }

    fn set_roles(&mut self, roles: BTreeMap<String, Role>) {
        if let Some(role) = roles.get(FIRST_WORKSPACE).or_else(|| roles.values().next()) {
            self.role = *role;
        }
        self.workspaces = roles;
    }
}

/// A session as stored, under the hash of its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub v: u8,
    /// What lists and revokes it: the first 16 hex digits of the token's hash.
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub user_agent: Option<String>,
    pub address: Option<String>,
    /// The workspace the session acts in; `None`: the user's first.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// An invitation as stored, under the hash of its token: whoever holds the link may sign up
/// once, within its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationRecord {
    pub v: u8,
    pub id: String,
    /// The email the new user will have; `None`: the one signing up gives it.
    pub email: Option<String>,
    pub role: Role,
    pub created_at: i64,
    pub expires_at: i64,
    /// The user or key that made it.
    pub created_by: String,
    pub used_at: Option<i64>,
    /// The first start's link: good only while no user exists.
    pub first_owner: bool,
    /// The workspace the invited person joins; `None`: the first.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    #[error("a user with the email {0} exists")]
    Exists(String),
    #[error("no user with the email {0}")]
    NoSuchUser(String),
    /// A change the caller's role may not make.
    #[error("{0}")]
    Forbidden(String),
    /// An invitation used, expired, or never made.
    #[error("{0}")]
    Gone(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An email as kept: trimmed, lower case, one `@` with text on both sides, no spaces.
pub fn parse_email(raw: &str) -> Result<String, AccountError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, host)| {
            !local.is_empty() && host.contains('.') && !host.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(AccountError::Invalid(format!(
            "email: {raw:?} is not an email address"
        )))
    }
}

/// A password's length checked.
pub fn check_password(password: &str) -> Result<(), AccountError> {
    let len = password.chars().count();
    if PASSWORD_LEN.contains(&len) {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "password: {} to {} characters",
            PASSWORD_LEN.start(),
            PASSWORD_LEN.end()
        )))
    }
}

/// The hash a session is stored under.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A hash that matches no password, checked when the email names nobody, so a wrong email
/// costs the same time as a wrong password.
static NOBODY: LazyLock<String> =
    LazyLock::new(|| crate::http::hash_password("linkpulse: no such user").unwrap_or_default());

/// The users and sessions in a store (every call blocks: run it off the async threads).
pub struct Accounts<'a>(pub &'a dyn Backend);

impl Accounts<'_> {
    /// Every user, oldest first.
    pub fn users(&self) -> Result<Vec<UserRecord>, AccountError> {
        let mut users: Vec<UserRecord> = self
            .0
            .settings(USER)?
            .iter()
            .filter_map(|(_, v)| records::decode_any("user", v).ok())
            .collect();
        users.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(users)
    }

    pub fn user(&self, id: &str) -> Result<Option<UserRecord>, AccountError> {
        Ok(self
            .0
            .setting(&format!("{USER}{id}"))?
            .and_then(|v| records::decode_any("user", &v).ok()))
    }

    pub fn by_email(&self, email: &str) -> Result<Option<UserRecord>, AccountError> {
        Ok(self.users()?.into_iter().find(|u| u.email == email))
    }

    fn put_user(&self, user: &UserRecord) -> Result<(), AccountError> {
        self.0
            .put_setting(&format!("{USER}{}", user.id), &records::encode_any(user))?;
        Ok(())
    }

    /// The members of `workspace`, oldest first.
    pub fn members(&self, workspace: &str) -> Result<Vec<UserRecord>, AccountError> {
        let mut users = self.users()?;
        users.retain(|u| u.role_in(workspace).is_some());
        Ok(users)
    }

    /// Makes a user, a member of `workspace` with `role`; `password` is hashed here (about
    /// 20 ms).
    pub fn create_user(
        &self,
        email: &str,
        role: Role,
        password: Option<&str>,
        workspace: &str,
    ) -> Result<UserRecord, AccountError> {
        let email = parse_email(email)?;
        if let Some(password) = password {
            check_password(password)?;
        }
        if self.by_email(&email)?.is_some() {
            return Err(AccountError::Exists(email));
        }
        let password_hash = password
            .map(crate::http::hash_password)
            .transpose()
            .map_err(AccountError::Invalid)?;
        let user = UserRecord {
            v: records::RECORD_VERSION,
            id: format!("{:016x}", rand::random::<u64>()),
            email,
            password_hash,
            role,
            created_at: now_ms(),
            disabled: false,
            workspaces: BTreeMap::from([(workspace.to_owned(), role)]),
        };
        self.put_user(&user)?;
        Ok(user)
    }

    /// Adds the user `id` to `workspace` with `role` (or changes the role there).
    pub fn join(&self, id: &str, workspace: &str, role: Role) -> Result<UserRecord, AccountError> {
        let mut user = self
            .user(id)?
            .ok_or_else(|| AccountError::NoSuchUser(id.to_owned()))?;
        let mut roles = user.roles();
        roles.insert(workspace.to_owned(), role);
        user.set_roles(roles);
        self.put_user(&user)?;
        Ok(user)
    }

    /// The member `id` of `workspace`.
    fn member(&self, id: &str, workspace: &str) -> Result<(UserRecord, Role), AccountError> {
        self.user(id)?
            .and_then(|u| Some((u.role_in(workspace)?, u)))
            .map(|(role, u)| (u, role))
            .ok_or_else(|| AccountError::NoSuchUser(id.to_owned()))
    }

    /// Changes the member `id`'s role in `workspace` or whether they are disabled, as `by` (an
    /// owner, an admin user, or `None` for an admin key): an admin changes no owner and makes
    /// none, and the last owner is neither demoted nor disabled. Disabling ends the user's
    /// sessions.
    pub fn change_user(
        &self,
        id: &str,
        workspace: &str,
        role: Option<Role>,
        disabled: Option<bool>,
        by: Option<Role>,
    ) -> Result<UserRecord, AccountError> {
        let (mut user, now) = self.member(id, workspace)?;
        self.may_change(now, role, by)?;
        // Disabling holds everywhere: it is for a person of this workspace alone.
        if disabled.is_some_and(|d| d != user.disabled) && user.roles().len() > 1 {
            return Err(AccountError::Forbidden(format!(
                "{} is a member of other workspaces too: remove them from this one instead",
                user.email
            )));
        }
        let demoted = role.is_some_and(|r| r != Role::Owner) || disabled == Some(true);
        if now == Role::Owner && demoted && self.owners(workspace)? <= 1 {
            return Err(AccountError::Forbidden(
                "the last owner stays an owner: make another first".into(),
            ));
        }
        if let Some(role) = role {
            let mut roles = user.roles();
            roles.insert(workspace.to_owned(), role);
            user.set_roles(roles);
        }
        user.disabled = disabled.unwrap_or(user.disabled);
        self.put_user(&user)?;
        if user.disabled {
            self.end_sessions_of(&user.id)?;
        }
        Ok(user)
    }

    /// Removes the member `id` from `workspace`, under the rules of [`Self::change_user`]. A
    /// user left in no workspace is removed with their sessions.
    pub fn remove_user(
        &self,
        id: &str,
        workspace: &str,
        by: Option<Role>,
    ) -> Result<UserRecord, AccountError> {
        let (mut user, now) = self.member(id, workspace)?;
        self.may_change(now, None, by)?;
        if now == Role::Owner && self.owners(workspace)? <= 1 {
            return Err(AccountError::Forbidden(
                "the last owner is not removed: make another first".into(),
            ));
        }
        let mut roles = user.roles();
        roles.remove(workspace);
        if roles.is_empty() {
            self.end_sessions_of(&user.id)?;
            self.0.delete_setting(&format!("{USER}{id}"))?;
        } else {
            user.set_roles(roles);
            self.put_user(&user)?;
        }
        Ok(user)
    }

    fn may_change(
        &self,
        now: Role,
        role: Option<Role>,
        by: Option<Role>,
    ) -> Result<(), AccountError> {
        let owner_involved = now == Role::Owner || role == Some(Role::Owner);
        if owner_involved && by.is_some_and(|by| by != Role::Owner) {
            return Err(AccountError::Forbidden(
                "only an owner changes an owner or makes one".into(),
            ));
        }
        Ok(())
    }

    /// Enabled owners of `workspace`.
    fn owners(&self, workspace: &str) -> Result<usize, AccountError> {
        Ok(self
            .users()?
            .iter()
            .filter(|u| u.role_in(workspace) == Some(Role::Owner) && !u.disabled)
            .count())
    }

    fn end_sessions_of(&self, user_id: &str) -> Result<(), AccountError> {
        for (name, session) in self.stored_sessions()? {
            if session.user_id == user_id {
                self.0.delete_setting(&name)?;
            }
        }
        Ok(())
    }

    /// Disables the user with `email` and ends every session of theirs.
    pub fn disable(&self, email: &str) -> Result<UserRecord, AccountError> {
        let email = parse_email(email)?;
        let mut user = self
            .by_email(&email)?
            .ok_or_else(|| AccountError::NoSuchUser(email.clone()))?;
        user.disabled = true;
        self.put_user(&user)?;
        self.end_sessions_of(&user.id)?;
        Ok(user)
    }

    /// The user `email` and `password` name, if they do (a disabled user included: the caller
    /// says so). Costs one password check whether or not the email names anybody.
    pub fn check_sign_in(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<UserRecord>, AccountError> {
        let user = match parse_email(email) {
            Ok(email) => self.by_email(&email)?,
            Err(_) => None,
        };
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| NOBODY.clone());
        let matches = crate::http::verify_password(&hash, password);
        Ok(user.filter(|u| matches && u.password_hash.is_some()))
    }

    /// Starts a session for `user`: the cookie's token (shown once) and the session.
    pub fn start_session(
        &self,
        user: &UserRecord,
        user_agent: Option<String>,
        address: Option<String>,
        workspace: Option<&str>,
    ) -> Result<(String, SessionRecord), AccountError> {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let hash = token_hash(&token);
        let now = now_ms();
        let session = SessionRecord {
            v: records::RECORD_VERSION,
            id: hash[..16].to_owned(),
            user_id: user.id.clone(),
            created_at: now,
            expires_at: now + SESSION_LIFETIME_MS,
            user_agent: user_agent.map(|ua| ua.chars().take(256).collect()),
            address,
            workspace: workspace.map(str::to_owned),
        };
        self.0
            .put_setting(&format!("{SESSION}{hash}"), &records::encode_any(&session))?;
        Ok((token, session))
    }

    /// The live session a cookie's `token` names and its user (enabled).
    pub fn session(
        &self,
        token: &str,
    ) -> Result<Option<(SessionRecord, UserRecord)>, AccountError> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Some(bytes) = self.0.setting(&format!("{SESSION}{}", token_hash(token)))? else {
            return Ok(None);
        };
        let Ok(session) = records::decode_any::<SessionRecord>("session", &bytes) else {
            return Ok(None);
        };
        if session.expires_at <= now_ms() {
            return Ok(None);
        }
        Ok(self
            .user(&session.user_id)?
            .filter(|u| !u.disabled)
            .map(|u| (session, u)))
    }

    /// Moves the session a cookie's `token` names to `workspace` (the caller checked that the
    /// user is a member).
    pub fn switch_workspace(&self, token: &str, workspace: &str) -> Result<(), AccountError> {
        let name = format!("{SESSION}{}", token_hash(token));
        let Some(bytes) = self.0.setting(&name)? else {
            return Err(AccountError::Gone(
                "your session has ended: sign in again".into(),
            ));
        };
        let mut session: SessionRecord = records::decode_any("session", &bytes)
            .map_err(|e| AccountError::Invalid(e.to_string()))?;
        session.workspace = Some(workspace.to_owned());
        self.0.put_setting(&name, &records::encode_any(&session))?;
        Ok(())
    }

    /// Ends the session a cookie's `token` names.
    pub fn end_session(&self, token: &str) -> Result<(), AccountError> {
        self.0
            .delete_setting(&format!("{SESSION}{}", token_hash(token)))?;
        Ok(())
    }

    fn stored_sessions(&self) -> Result<Vec<(String, SessionRecord)>, AccountError> {
        Ok(self
            .0
            .settings(SESSION)?
            .into_iter()
            .filter_map(|(name, v)| Some((name, records::decode_any("session", &v).ok()?)))
            .collect())
    }

    /// The live sessions of the user `user_id`, newest first.
    pub fn sessions_of(&self, user_id: &str) -> Result<Vec<SessionRecord>, AccountError> {
        let now = now_ms();
        let mut mine: Vec<SessionRecord> = self
            .stored_sessions()?
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.user_id == user_id && s.expires_at > now)
            .collect();
        mine.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(mine)
    }

    /// Makes an invitation: its token (for the link, shown once) and the invitation.
    pub fn invite(
        &self,
        email: Option<&str>,
        role: Role,
        by: &str,
        first_owner: bool,
        workspace: &str,
    ) -> Result<(String, InvitationRecord), AccountError> {
        let email = email.map(parse_email).transpose()?;
        if let Some(email) = &email
            && self
                .by_email(email)?
                .is_some_and(|u| u.role_in(workspace).is_some())
        {
            return Err(AccountError::Exists(email.clone()));
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        let hash = token_hash(&token);
        let now = now_ms();
        let invitation = InvitationRecord {
            v: records::RECORD_VERSION,
            id: hash[..16].to_owned(),
            email,
            role,
            created_at: now,
            expires_at: now + INVITATION_LIFETIME_MS,
            created_by: by.to_owned(),
            used_at: None,
            first_owner,
            workspace: stored_id(workspace),
        };
        self.0.put_setting(
            &format!("{INVITE}{hash}"),
            &records::encode_any(&invitation),
        )?;
        Ok((token, invitation))
    }

    /// The invitation a link's `token` names, if it may still be used (`Gone` says why not).
    pub fn invitation(&self, token: &str) -> Result<InvitationRecord, AccountError> {
        let gone = |why: &str| Err(AccountError::Gone(why.to_owned()));
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return gone("this invitation link is not valid");
        }
        let Some(bytes) = self.0.setting(&format!("{INVITE}{}", token_hash(token)))? else {
            return gone("this invitation link is not valid");
        };
        let Ok(invitation) = records::decode_any::<InvitationRecord>("invitation", &bytes) else {
            return gone("this invitation link is not valid");
        };
        if invitation.used_at.is_some() {
            return gone("this invitation was used already: ask for another");
        }
        if invitation.expires_at <= now_ms() {
            return gone("this invitation has expired: ask for another");
        }
        if invitation.first_owner && !self.users()?.is_empty() {
            return gone("the first owner has signed up already");
        }
        Ok(invitation)
    }

    /// Signs up with an invitation: the new user (the invitation's email, else `email`) and the
    /// workspace they joined. A person who has an account already joins the invitation's
    /// workspace with it, given its password.
    pub fn redeem(
        &self,
        token: &str,
        email: Option<&str>,
        password: &str,
    ) -> Result<(UserRecord, String), AccountError> {
        let mut invitation = self.invitation(token)?;
        let email = match (&invitation.email, email) {
            (Some(invited), _) => invited.clone(),
            (None, Some(given)) => given.to_owned(),
            (None, None) => return Err(AccountError::Invalid("email: needed".into())),
        };
        let workspace = workspace_of(invitation.workspace.as_deref()).to_owned();
        let email = parse_email(&email)?;
        let user = match self.by_email(&email)? {
            None => self.create_user(&email, invitation.role, Some(password), &workspace)?,
            Some(user) => {
                if user.role_in(&workspace).is_some() {
                    return Err(AccountError::Exists(email));
                }
                if self.check_sign_in(&email, password)?.is_none() {
                    return Err(AccountError::Forbidden(format!(
                        "{email} has an account: give its password to join"
                    )));
                }
                self.join(&user.id, &workspace, invitation.role)?
            }
        };
        invitation.used_at = Some(now_ms());
        self.0.put_setting(
            &format!("{INVITE}{}", token_hash(token)),
            &records::encode_any(&invitation),
        )?;
        Ok((user, workspace))
    }

    /// The person a provider vouches for by `email` (verified there): a user with that email,
    /// or one made now from an open invitation for it (and the workspace joined). `None`:
    /// nobody here, and no invitation.
    pub fn by_verified_email(
        &self,
        email: &str,
    ) -> Result<Option<(UserRecord, Option<String>)>, AccountError> {
        let email = parse_email(email)?;
        if let Some(user) = self.by_email(&email)? {
            return Ok(Some((user, None)));
        }
        let now = now_ms();
        for (name, bytes) in self.0.settings(INVITE)? {
            let Ok(mut invitation) = records::decode_any::<InvitationRecord>("invitation", &bytes)
            else {
                continue;
            };
            let open = invitation.used_at.is_none() && invitation.expires_at > now;
            if !open || invitation.email.as_deref() != Some(email.as_str()) {
                continue;
            }
            let workspace = workspace_of(invitation.workspace.as_deref()).to_owned();
            let user = self.create_user(&email, invitation.role, None, &workspace)?;
            invitation.used_at = Some(now);
            self.0
                .put_setting(&name, &records::encode_any(&invitation))?;
            return Ok(Some((user, Some(workspace))));
        }
        Ok(None)
    }

    /// Ends the session `id` of the user `user_id`: whether there was one.
    pub fn end_session_by_id(&self, user_id: &str, id: &str) -> Result<bool, AccountError> {
        for (name, session) in self.stored_sessions()? {
            if session.user_id == user_id && session.id == id {
                self.0.delete_setting(&name)?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn an_expired_invitation_is_gone_and_a_first_owner_link_ends_with_the_first_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let accounts = Accounts(&store);
        let (token, mut invitation) = accounts
            .invite(
                Some("late@example.test"),
                Role::Member,
                "test",
                false,
                FIRST_WORKSPACE,
            )
            .unwrap();
        invitation.expires_at = now_ms() - 1;
        store
            .put_setting(
                &format!("{INVITE}{}", token_hash(&token)),
                &records::encode_any(&invitation),
            )
            .unwrap();
        let refused = accounts.redeem(&token, None, "a good password");
        assert!(matches!(refused, Err(AccountError::Gone(ref why)) if why.contains("expired")));
        assert!(accounts.users().unwrap().is_empty(), "nobody was made");

        let (first, _) = accounts
            .invite(None, Role::Owner, "first start", true, FIRST_WORKSPACE)
            .unwrap();
        let (other, _) = accounts
            .invite(None, Role::Owner, "first start", true, FIRST_WORKSPACE)
            .unwrap();
        let (owner, workspace) = accounts
            .redeem(&first, Some("owner@example.test"), "a good password")
            .unwrap();
        assert_eq!(owner.role_in(&workspace), Some(Role::Owner));
        let late = accounts.redeem(&other, Some("second@example.test"), "a good password");
        assert!(matches!(late, Err(AccountError::Gone(ref why)) if why.contains("first owner")));
    }
}
