//! The steward's connections, from accept to close.
//!
//! # Connection lifecycle and its bounds
//!
//! 1. **Accept.** Every connection is accepted at once (`accept::serve`) and
//!    is *pending* until authenticated: admitted under caps of its own
//!    (`max_pending_handshakes` in all, `max_pending_per_address` per remote
//!    address), apart from the slots of authenticated peers. When a cap is
//!    reached the oldest pending connection that has not sent a byte yet is
//!    closed to make room (`evicted`), so idle sockets without a certificate
//!    cannot lock sources and evaluators out (see `accept`).
//! 2. **Handshake** with the server config current *at accept time*
//!    (`ctx.tls.borrow()`), so a SIGHUP reload (new certificate, new CRL)
//!    applies to every new handshake while older connections finish. From
//!    accept to a verified certificate takes at most `handshake_timeout`.
//!    rustls requires a client certificate of the program CA naming
//!    clientAuth, not revoked, checked against a CRL that is not past its
//!    next-update; any failure refuses the peer here. Refusals of peers
//!    without a verified certificate are logged at a bounded rate.
//! 3. **Identity.** The peer's SPIFFE ID is read from its certificate; a
//!    certificate without one, or of another program, is refused (closed)
//!    before HTTP starts. Nothing the client says about itself is used. The
//!    connection then leaves admission and waits for one of `max_connections`
//!    authenticated slots.
//! 4. **HTTP/1.1** (hyper). The TLS stream is wrapped in `timeout_io::TimeoutIo`:
//!    every read and every write must make progress within `io_timeout`
//!    (this also closes idle keep-alive connections and peers that stop
//!    reading). Headers must arrive within `io_timeout` (hyper's
//!    `header_read_timeout`), and a whole request body within `io_timeout`
//!    (a deadline around reading it), so a slow trickle cannot hold a
//!    connection for long either. Bodies are capped at `max_body_bytes`.
//! 5. **Routing** on path and certificate role, before any body is read
//!    (see `routes::ROUTES`).
//! 6. **Shutdown**: when `ctx.shutdown` is cancelled the accept loop stops,
//!    handshakes in progress are dropped, and established connections are
//!    shut down gracefully (the request in flight finishes and is answered).
//!    The daemon then calls [`Steward::close`] to flush the store.
//!

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use super::{http, routes, timeout_io, Refusal, Steward, RELOAD_GRACE};
use crate::daemon::Context;
use crate::tls;

/// Decrements a connection gauge (open, waiting) when the connection leaves that state, however it does.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn accept_loop(ctx: Arc<Context>, st: Arc<Steward>, listener: TcpListener) {
    let (ctx2, st2) = (ctx.clone(), st.clone());
    crate::accept::serve(listener, ctx.shutdown.clone(), "steward", move |tcp, peer| {
        let (pending, evicted) = st2.admission.admit(peer);
        for _ in 0..evicted {
            st2.refuse(Refusal::Evicted, peer, None, "an unauthenticated connection was closed to make room");
        }
        // The config current now: a reload applies to this and later handshakes only.
        let tls = ctx2.tls.borrow().server.clone();
        ctx2.tracker.spawn(connection(ctx2.clone(), st2.clone(), tcp, peer, tls, pending));
    })
    .await;
    info!(listen = %st.local_addr, "steward stopped accepting connections");
}

/// One connection, through the phases above.
async fn connection(
    ctx: Arc<Context>,
    st: Arc<Steward>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    pending: crate::accept::Pending,
) {
    let made_under = tls.clone();
    let handshake_timeout = st.cfg.handshake_timeout;
    // Phase 1, unauthenticated: admitted under the pending caps, evictable,
    // bounded by the handshake timeout from accept to identity.
    let stream = match tls::accept_pending(&pending, tcp, tls, handshake_timeout, &ctx.shutdown).await {
        Ok(s) => s,
        Err(tls::HandshakeEnd::Dropped | tls::HandshakeEnd::Closed) => return,
        Err(tls::HandshakeEnd::Failed(e)) => {
            st.refuse(Refusal::Handshake, peer, None, &format!("TLS handshake failed: {e}"));
            return;
        }
        Err(tls::HandshakeEnd::TimedOut) => {
            let secs = handshake_timeout.as_secs_f64();
            st.refuse(Refusal::HandshakeTimeout, peer, None, &format!("no TLS handshake within {secs} s"));
            return;
        }
    };
    let id = match tls::peer_identity(stream.get_ref().1) {
        Some(id) => id,
        None => {
            st.refuse(Refusal::Identity, peer, None, "the client certificate has no usable spiffe:// identity");
            return;
        }
    };
    if id.program != st.program {
        let reason = format!("the certificate is for program `{}`, not `{}`", id.program, st.program);
        st.refuse(Refusal::Identity, peer, Some(&id), &reason);
        return;
    }
    debug!(peer = %peer, identity = %id, "connection authenticated");
    drop(pending);
    // Phase 2, authenticated: one of `max_connections` slots; when all are
    // taken the peer waits here (its request is read once a slot frees).
    st.waiting.fetch_add(1, Ordering::Relaxed);
    let waiting = OpenGuard(&st.waiting);
    let _permit = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        p = st.connections.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return,
        },
    };
    drop(waiting);
    st.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&st.open);

    let io_timeout = st.cfg.io_timeout;
    let io = TokioIo::new(timeout_io::TimeoutIo::new(stream, io_timeout));
    let peer_info = Arc::new(http::Peer { addr: peer, id });
    let svc_state = st.clone();
    let svc = service_fn(move |req| routes::route(svc_state.clone(), peer_info.clone(), req));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(io_timeout).keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    // A reload (new certificate, new CRL) applies to open connections too: after
    // RELOAD_GRACE they are closed gracefully (the request in flight is answered), so
    // the peer handshakes again under the new material — a revoked peer is then refused.
    let mut tls_rx = ctx.tls.clone();
    let reloaded = async move {
        // Compared with the config this connection's handshake used, not with "changed
        // since the receiver was cloned": a reload before this point counts, an old one does not.
        loop {
            if !Arc::ptr_eq(&tls_rx.borrow_and_update().server, &made_under) {
                tokio::time::sleep(RELOAD_GRACE).await;
                return;
            }
            if tls_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::pin!(reloaded);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = ctx.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = &mut reloaded => {
            debug!(peer = %peer, "TLS material reloaded: closing a connection made under the previous one");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and peers going away: worth a line, not a warning.
        debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}
