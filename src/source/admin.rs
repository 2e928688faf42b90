//! The source's answers to the daemon's admin socket (`divert ingest`, `divert forget`, `divert keys status`, `divert keys rotate`), and its refusals of the steward's requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::daemon::admin::{Request, Response};
use crate::daemon::service::{AdminAnswer, RoleService};

use super::file::FileError;
use super::Source;

/// Said to a request only the steward answers.
const ON_THE_STEWARD: &str = "budgets are kept by the steward; run this on the steward host";

impl RoleService for Source {
    fn role(&self) -> &'static str {
        "source"
    }

    fn status(&self) -> serde_json::Value {
        Source::status(self)
    }

    fn admin(self: Arc<Self>, request: Request) -> AdminAnswer {
        Box::pin(async move {
            match request {
                Request::Ingest { kind, path, force_snapshot } => {
                    answer(self.ingest(&kind, &path, force_snapshot).await)
                }
                Request::Forget { kind, ids } => answer(self.forget(&kind, ids).await),
                Request::KeyStatus => Response::ok(self.key_status().await),
                Request::KeysChanged => {
                    self.wake_rotation();
                    Response::ok(serde_json::json!({ "woken": true }))
                }
                Request::KeysExcuse { .. } => {
                    Response::err("run this with the steward's config: the steward decides the switch")
                }
                Request::BudgetGrant { .. } | Request::Budgets => Response::err(ON_THE_STEWARD),
                // The runner answers status itself.
                Request::Status => Response::ok(Source::status(&self)),
            }
        })
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Source::close(self))
    }
}

/// Why `divert ingest` or `divert forget` was not done: what the CLI prints.
/// Names a file, a line or a column, never a value.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("`{kind}` is not a record kind of the schema; kinds: {kinds}")]
    UnknownKind { kind: String, kinds: String },
    #[error("{path}: cannot tell the format from the extension (.csv, .jsonl or .ndjson)")]
    Format { path: String },
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    #[error("{path}: {error}")]
    Unreadable { path: String, error: std::io::Error },
    #[error("the source service has stopped")]
    Stopped,
    #[error("the {what} task failed: {detail}")]
    Task { what: &'static str, detail: String },
    #[error("{path}: {error}")]
    File { path: String, error: FileError },
    #[error("{0}")]
    Forget(FileError),
}

fn answer(result: Result<serde_json::Value, RequestError>) -> Response {
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(e.to_string()),
    }
}
