//! The key custodian's server: `GET /v1/keys` over mutual TLS hands the
//! linkage keys in the custodian's keys directory to source daemons of the
//! program — and to nobody else. A steward's or evaluator's certificate is
//! refused (403) and the attempt logged at warn: the steward must never be
//! able to test a guess of a person's name and date of birth against tokens.
//!
//! One request per connection; handshakes must finish within
//! [`HANDSHAKE_TIMEOUT`], and the server config is read per connection, so
//! a certificate or CRL reload applies to the next handshake.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::keys;
use crate::spiffe::{Role, SpiffeId};
use crate::tls;
use crate::wire::{ErrorBody, KeyEntry, KeySet, KEYS_PATH};

use super::Source;

/// A TLS handshake must complete within this (from accept).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request must arrive and be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Authenticated connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Bind the key server's address (a startup error names it).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for key requests on {addr} (source.key_listen): {e}"))?;
    Ok(listener)
}

/// Serve key requests until shutdown. Connections are admitted as the
/// steward's are (see `accept`): unauthenticated ones under their own caps,
/// the oldest idle one evicted to make room, so idle sockets cannot keep a
/// source from its key; refusals of unauthenticated peers are rate-limited in the log.
pub async fn serve(src: Arc<Source>, listener: TcpListener) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let admission = crate::accept::Admission::new(crate::accept::Limits::default());
    let log = Arc::new(crate::accept::LogLimiter::new(10, Duration::from_secs(10)));
    if let Ok(a) = listener.local_addr() {
        tracing::info!(listen = %a, "key custodian: serving linkage keys to source daemons");
    }
    let src2 = src.clone();
    crate::accept::serve(listener, src.ctx.shutdown.clone(), "key server", move |tcp, peer| {
        let (pending, _) = admission.admit(peer);
        let tls = src2.ctx.tls.borrow().server.clone();
        let (src, limit, log) = (src2.clone(), limit.clone(), log.clone());
        let shutdown = src.ctx.shutdown.clone();
        src2.ctx.tracker.spawn(async move {
            let refused = |what: &str| {
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(peer = %peer, suppressed, "key server: {what}");
                }
            };
            let stream = match tls::accept_pending(&pending, tcp, tls, HANDSHAKE_TIMEOUT, &shutdown).await {
                Ok(s) => s,
                Err(tls::HandshakeEnd::Dropped | tls::HandshakeEnd::Closed) => return,
                Err(tls::HandshakeEnd::Failed(e)) => return refused(&format!("TLS handshake refused: {e}")),
                Err(tls::HandshakeEnd::TimedOut) => return refused("no TLS handshake in time"),
            };
            let program = src.ctx.config.spiffe_id.program.clone();
            let id = match tls::peer_identity(stream.get_ref().1) {
                Some(id) if id.program == program => id,
                _ => return refused("a certificate without an identity of this program; closed"),
            };
            drop(pending);
            let Ok(_permit) = limit.acquire_owned().await else { return };
            let id = Arc::new(id);
            let svc = service_fn(move |req| answer(src.clone(), id.clone(), peer, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    })
    .await;
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &ErrorBody { error: message.to_string() })
}

async fn answer(
    src: Arc<Source>,
    id: Arc<SpiffeId>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != KEYS_PATH {
        return Ok(error(StatusCode::NOT_FOUND, "no such endpoint; GET /v1/keys"));
    }
    if id.role != Role::Source {
        tracing::warn!(
            peer = %peer,
            identity = %id,
            "key server: a {} certificate asked for the linkage keys: refused (keys go to source daemons only)",
            id.role
        );
        let msg = format!("linkage keys go to source daemons only; this certificate's role is {}", id.role);
        return Ok(error(StatusCode::FORBIDDEN, &msg));
    }
    if req.method() != Method::GET {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "GET /v1/keys");
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(resp);
    }
    let dir = src.cfg.keys.clone();
    let set = tokio::task::spawn_blocking(move || -> Result<KeySet, keys::KeyError> {
        let mut epochs = Vec::new();
        for e in keys::epochs_in(&dir)? {
            let k = keys::load(&dir, e)?;
            epochs.push(KeyEntry { epoch: e, key_hex: k.to_hex().to_string() });
        }
        Ok(KeySet { epochs })
    })
    .await;
    match set {
        Ok(Ok(set)) => {
            let epochs: Vec<u32> = set.epochs.iter().map(|e| e.epoch).collect();
            tracing::debug!(peer = %peer, identity = %id, ?epochs, "key server: linkage keys handed to a source");
            let resp = json(StatusCode::OK, &set);
            Ok(resp)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "key server: reading the keys failed");
            Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "the custodian could not read its keys; retry later"))
        }
        Err(_) => Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "the custodian could not read its keys")),
    }
}
