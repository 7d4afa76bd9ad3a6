//! The control socket, `<data-dir>/control.sock`: how `linkpulse keys create|list|revoke` and
//! `linkpulse users create|list|disable` manage keys and users while the server runs (the store admits one process). A connection carries one JSON
//! request and one JSON answer, each on a line. The socket is made in a private directory with
//! mode 0600 and renamed into place (replacing one a killed server left), so only the data
//! directory's owner can talk to it; it is removed at a clean stop.
//!
//! The server and the command run the same [`execute`] on an [`ApiKeys`]: the server on its
//! own, the command (when no server answers) on the store it opens itself.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    accounts::{AccountError, Accounts, FIRST_WORKSPACE, Role, UserRecord},
    keys::{ApiKeys, KeyError, KeyInfo, KeyName, NewKey, Scope},
};

/// The socket's file name in the data directory.
pub use crate::store::SOCKET_NAME;
/// The longest request taken.
const MAX_REQUEST: u64 = 16 * 1024;
/// How long either side waits for the other.
const WAIT: Duration = Duration::from_secs(10);

/// What the command asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Create {
        name: String,
        scope: Scope,
    },
    List,
    Revoke {
        id: String,
    },
    UserCreate {
        email: String,
        role: Role,
        password: String,
    },
    UserInvite {
        email: String,
        role: Role,
    },
    UserList,
    UserDisable {
        email: String,
    },
}

/// A user as `linkpulse users` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub created_at: String,
    pub disabled: bool,
}

impl From<UserRecord> for UserInfo {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            email: u.email,
            role: u.role,
            created_at: crate::domain::format_ms(u.created_at),
            disabled: u.disabled,
        }
    }
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    Created(NewKey),
    Keys(Vec<KeyInfo>),
    Revoked(String),
    User(UserInfo),
    Users(Vec<UserInfo>),
    /// A sign-up link's path (`/auth/signup?invite=...`), to open on the server's address.
    Invited(String),
    Error(String),
}

/// Who the audit log says made a change from the command line.
const COMMAND_LINE: &str = "the command line (whoever holds the data directory)";

/// Writes a change made from the command line to the first workspace's audit log (where the
/// command makes keys and people). A failure is logged: the change is made.
fn audit(keys: &ApiKeys, action: &str, target: &str, after: Option<serde_json::Value>) {
    let record = crate::store::records::AuditRecord {
        v: crate::store::records::RECORD_VERSION,
        seq: 0,
        at: crate::domain::now_ms(),
        workspace: FIRST_WORKSPACE.to_owned(),
        who: COMMAND_LINE.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        before: None,
        after: after.map(|a| a.to_string()),
    };
    if let Err(e) = keys.store().append_audit(&record) {
        warn!(action, target, cause = %e, "an audit entry was not stored");
    }
}

/// Runs `request` on `keys` and the users of their store (blocking: store writes are synced).
/// Each change is written to the audit log.
pub fn execute(keys: &ApiKeys, request: Request) -> Answer {
    let accounts = Accounts(keys.store().as_ref());
    let user_answer = |done: Result<Answer, AccountError>| {
        done.unwrap_or_else(|e| {
            if let AccountError::Store(cause) = &e {
                warn!(cause = %cause, "a user operation from the control socket failed");
            }
            Answer::Error(e.to_string())
        })
    };
    let done = match request {
        Request::Create { name, scope } => KeyName::parse(&name).and_then(|name| {
            let made = keys.create(&name, scope, FIRST_WORKSPACE)?;
            let shown =
                serde_json::json!({ "id": made.id, "name": made.name, "scope": made.scope });
            audit(keys, "key.created", &made.id, Some(shown));
            Ok(Answer::Created(made))
        }),
        Request::List => Ok(Answer::Keys(keys.list(None))),
        // The command stands for whoever owns the data directory: it may revoke any key,
        // the last admin key too (it can make another).
        Request::Revoke { id } => keys.revoke(&id, None).map(|()| {
            audit(keys, "key.revoked", &id, None);
            Answer::Revoked(id)
        }),
        Request::UserCreate {
            email,
            role,
            password,
        } => {
            return user_answer(
                accounts
                    .create_user(&email, role, Some(&password), FIRST_WORKSPACE)
                    .map(|u| {
                        let shown =
                            serde_json::json!({ "id": u.id, "email": u.email, "role": role });
                        audit(keys, "member.created", &u.id, Some(shown));
                        Answer::User(u.into())
                    }),
            );
        }
        Request::UserInvite { email, role } => {
            return user_answer(
                accounts
                    .invite(
                        Some(&email),
                        role,
                        "linkpulse users",
                        false,
                        FIRST_WORKSPACE,
                    )
                    .map(|(token, made)| {
                        let shown = serde_json::json!({ "email": made.email, "role": made.role });
                        audit(keys, "member.invited", &made.id, Some(shown));
                        Answer::Invited(crate::http::signup_url("", &token))
                    }),
            );
        }
        Request::UserList => {
            return user_answer(
                accounts
                    .users()
                    .map(|all| Answer::Users(all.into_iter().map(UserInfo::from).collect())),
            );
        }
        Request::UserDisable { email } => {
            return user_answer(accounts.disable(&email).map(|u| {
                let shown = serde_json::json!({ "id": u.id, "email": u.email, "disabled": true });
                audit(keys, "member.updated", &u.id, Some(shown));
                Answer::User(u.into())
            }));
        }
    };
    done.unwrap_or_else(|e| {
        if let KeyError::Store(cause) = &e {
            warn!(cause = %cause, "a key operation from the control socket failed");
        }
        Answer::Error(e.to_string())
    })
}

/// The bound socket of a server.
pub struct ControlSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ControlSocket {
    /// Binds `<data_dir>/control.sock`. Call it only while holding the store: any socket file
    /// already there was left by a server that is gone.
    pub fn bind(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(SOCKET_NAME);
        let private = data_dir.join(format!(".control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let bound = (|| {
            let inner = private.join("s");
            let listener = std::os::unix::net::UnixListener::bind(&inner)?;
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&inner, &path)?;
            listener.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        Ok(Self {
            path,
            listener: bound?,
        })
    }

    /// Answers requests until `stop` is cancelled, then removes the socket file.
    pub async fn serve(self, keys: Arc<ApiKeys>, stop: CancellationToken) {
        info!(path = %self.path.display(), "control socket for `linkpulse keys` listening");
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(cause = %e, "control socket accept failed");
                        continue;
                    }
                },
            };
            let keys = keys.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, keys).await {
                    warn!(cause = %e, "a control socket connection failed");
                }
            });
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(stream: tokio::net::UnixStream, keys: Arc<ApiKeys>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    let read = tokio::time::timeout(WAIT, reader.read_line(&mut line)).await;
    let answer = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => tokio::task::spawn_blocking(move || execute(&keys, request))
                .await
                .unwrap_or_else(|_| Answer::Error("the server is stopping".into())),
            Err(e) => Answer::Error(format!("malformed request: {e}")),
        },
        Ok(Err(e)) => return Err(e),
        Err(_) => Answer::Error("no request within the time limit".into()),
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    tokio::time::timeout(WAIT, write.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Sends `request` to the server on `data_dir`: `Ok(None)` when no server is there (no socket,
/// or one a killed server left). Blocking.
pub fn call(data_dir: &Path, request: &Request) -> anyhow::Result<Option<Answer>> {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    let path = data_dir.join(SOCKET_NAME);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), NotFound | ConnectionRefused) => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot connect to the server at {}",
                path.display()
            )));
        }
    };
    let mut talk = || -> std::io::Result<Answer> {
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        let mut out = serde_json::to_vec(request)?;
        out.push(b'\n');
        stream.write_all(&out)?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    };
    talk().map(Some).map_err(|e| {
        anyhow::Error::new(e).context("the server did not answer on its control socket")
    })
}
