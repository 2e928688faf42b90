//! The local admin interface: a Unix socket (0600, in the 0700 data directory, peers checked to be the daemon's own user) speaking one JSON request and one JSON response per line.
//!
//! The CLI (`divert status`, `divert ingest`, later `divert budget grant`)
//! talks to a running daemon through it, because the daemon holds the
//! store's lock.

use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest request line accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to the running daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Role, identity, certificate expiry and the role's counters.
    Status,
    /// Ingest a file (source only); `path` is absolute.
    Ingest {
        kind: String,
        path: PathBuf,
        /// A whole-table export may delete more than the configured share of its kind.
        #[serde(default)]
        force_snapshot: bool,
    },
    /// Delete records of a kind by agency record id (source only): raw store,
    /// outbox, and a tombstone to the steward. The ids never appear in `Debug`.
    Forget { kind: String, ids: RecordIds },
    /// Set an evaluator's total privacy budget (steward only), in micro-epsilon.
    BudgetGrant { evaluator: String, epsilon_micro: u64 },
    /// Every evaluator's budget and the program cap (steward only).
    Budgets,
    /// Key epochs: a source's own and the steward's view of every source; a steward's view.
    KeyStatus,
    /// A key file was added to the keys directory (`divert keys rotate`): look now (source only).
    KeysChanged,
    /// Stop the pending key epoch's switch from waiting for a source that is gone (steward only).
    KeysExcuse { source: String },
}

/// Record ids to delete. `Debug` shows how many, never one.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RecordIds(pub Vec<String>);

impl std::fmt::Debug for RecordIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordIds({} ids, redacted)", self.0.len())
    }
}

impl zeroize::Zeroize for RecordIds {
    fn zeroize(&mut self) {
        self.0.iter_mut().for_each(zeroize::Zeroize::zeroize);
        self.0.clear();
    }
}

impl Drop for RecordIds {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

/// The daemon's answer: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response { ok: true, result: Some(result), error: None }
    }

    pub fn err(error: impl Into<String>) -> Response {
        Response { ok: false, result: None, error: Some(error.into()) }
    }
}

/// Handles one request.
pub type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Why the admin socket could not be opened or reached.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{path}: another divert daemon is running with this data directory (its admin socket answers)")]
    InUse { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: no daemon answers ({source}); is `divert serve --config …` running with this config?")]
    NotRunning { path: PathBuf, source: io::Error },
    #[error("{path}: the daemon's answer was not understood: {detail}")]
    BadResponse { path: PathBuf, detail: String },
}

/// Bind the admin socket: refuse if a daemon already answers on it, remove a
/// stale socket file, and make the socket 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let io_err = |source| AdminError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(AdminError::InUse { path: path.to_path_buf() });
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Serve requests until `shutdown`; each connection on its own task.
pub async fn serve(listener: UnixListener, handler: Handler, shutdown: CancellationToken, tracker: TaskTracker) {
    // Only our own user may talk to us: the socket is 0600 in a 0700
    // directory, and the peer's uid is checked as well.
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
        if own_uid.is_none() || peer_uid != own_uid {
            tracing::warn!(peer_uid = ?peer_uid, "admin socket: refused a peer of another user");
            continue;
        }
        let handler = handler.clone();
        tracker.spawn(async move {
            if let Err(e) = handle(stream, handler).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(stream: UnixStream, handler: Handler) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = String::new();
    let n = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))??;
    let response = if n == 0 {
        return Ok(());
    } else if line.len() > MAX_REQUEST_BYTES {
        Response::err("request too long")
    } else {
        match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(req) => handler(req).await,
            Err(e) => Response::err(format!("not a request this daemon understands: {e}")),
        }
    };
    let mut bytes = serde_json::to_vec(&response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Send one request to the daemon whose admin socket is `path`.
pub async fn request(path: &Path, req: &Request) -> Result<Response, AdminError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| AdminError::NotRunning { path: path.to_path_buf(), source })?;
    let io_err = |source| AdminError::Io { path: path.to_path_buf(), source };
    let (read, mut write) = stream.into_split();
    let mut bytes = serde_json::to_vec(req).map_err(|e| io_err(io::Error::other(e)))?;
    bytes.push(b'\n');
    write.write_all(&bytes).await.map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await.map_err(io_err)?;
    serde_json::from_str(line.trim_end())
        .map_err(|e| AdminError::BadResponse { path: path.to_path_buf(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = bind(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handler: Handler = Arc::new(|req| {
            Box::pin(async move {
                match req {
                    Request::Status => Response::ok(serde_json::json!({"role": "test"})),
                    Request::Ingest { .. } => Response::err("not here"),
                    _ => Response::err("unexpected"),
                }
            })
        });
        let server = tokio::spawn(serve(listener, handler, shutdown.clone(), tracker.clone()));
        let r = request(&path, &Request::Status).await.unwrap();
        assert_eq!(r.result.unwrap()["role"], "test");
        let r = request(&path, &Request::Ingest { kind: "arrest".into(), path: "/x".into(), force_snapshot: false })
            .await
            .unwrap();
        assert_eq!(r.error.as_deref(), Some("not here"));
        // A second daemon on the same socket is refused.
        assert!(matches!(bind(&path).await, Err(AdminError::InUse { .. })));
        shutdown.cancel();
        server.await.unwrap();
    }
}
