//! The running daemon: start the role service and the admin socket, handle signals and TLS reloads, drain and flush on stop.
//!
//! The runner knows a role's service only through [`RoleService`]: its
//! name, its status, the admin requests it answers, and how it stops. Which
//! service a config starts is decided by the caller (`cmd::serve`), so this
//! module names no service type and the arrows point down.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, RoleConfig};
use crate::daemon::{admin, metrics, Context};
use crate::tls::TlsMaterial;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// How long a stopping daemon waits for in-flight work before exiting anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Warn when the daemon's certificate expires sooner than this.
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// How often the daemon looks for changed TLS files (certificate rotation
/// and CRL updates apply within this interval without a SIGHUP).
pub const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(15);

/// A future of an admin answer, owned (the request is answered on a task of its own).
pub type AdminAnswer = Pin<Box<dyn Future<Output = admin::Response> + Send>>;

/// What the daemon runner needs of a role's running service (a source or
/// the steward). The runner answers `status` itself, with the role's own
/// part from [`RoleService::status`]; every other admin request goes to
/// [`RoleService::admin`], which refuses, in words an operator can act on,
/// the requests that belong to the other role.
pub trait RoleService: Send + Sync + 'static {
    /// The role's name in status and metrics: `source` or `steward`.
    fn role(&self) -> &'static str;
    /// The role's own status: counts and identities, never a record.
    fn status(&self) -> serde_json::Value;
    /// Answer an admin request other than `status`.
    fn admin(self: Arc<Self>, request: admin::Request) -> AdminAnswer;
    /// Called once the tasks have drained: make everything durable.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The role's running service.
pub type Service = Arc<dyn RoleService>;

/// Run the daemon until SIGTERM or SIGINT: start the role's service with
/// `start` (given the context and the config's role section) and the admin
/// socket, reload TLS on SIGHUP (or when its files change), then drain and
/// flush.
pub async fn run<S, F>(config: Config, start: S) -> anyhow::Result<()>
where
    S: FnOnce(Arc<Context>, RoleConfig) -> F,
    F: Future<Output = anyhow::Result<Service>>,
{
    // Signal handlers first: a SIGTERM that arrives while the services start
    // must stop the daemon cleanly, not kill it with the default action.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    crate::fsutil::create_private_dir(&config.data_dir)?;
    let (ctx, tls_tx) = Context::load(&config)?;
    warn_if_expiring(&tls_tx.borrow());

    // The admin socket first: a second daemon on the same data directory stops here.
    let admin_listener = admin::bind(&config.admin_socket).await?;
    // Then the metrics port: a bind failure stops the daemon before its service starts.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(metrics_listen = %bound, "serving Prometheus metrics at http://{bound}/metrics");
            Some(listener)
        }
        None => None,
    };
    let reloads = Arc::new(AtomicU64::new(0));
    let service = start(ctx.clone(), config.role.clone()).await?;
    let started = time::OffsetDateTime::now_utc();
    let handler = admin_handler(ctx.clone(), service.clone(), started);
    ctx.tracker.spawn(admin::serve(admin_listener, handler, ctx.shutdown.clone(), ctx.tracker.clone()));
    if let Some(listener) = metrics_listener {
        let render = metrics_render(ctx.clone(), service.clone(), started, reloads.clone());
        ctx.tracker.spawn(metrics::serve(listener, render, ctx.shutdown.clone(), ctx.tracker.clone()));
    }
    tracing::info!(identity = %config.spiffe_id, admin_socket = %config.admin_socket.display(), "divert daemon started");

    let mut watch_tick = tokio::time::interval(TLS_WATCH_INTERVAL);
    let mut stamps = tls_stamps(&config);
    let mut last_expiry_warning = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = ctx.shutdown.cancelled() => { tracing::warn!("a service asked the daemon to stop"); break; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading certificates, key and CRL");
                reload(&config, &tls_tx, &reloads);
                stamps = tls_stamps(&config);
            }
            _ = watch_tick.tick() => {
                let now = tls_stamps(&config);
                if now != stamps {
                    tracing::info!("TLS files changed on disk: reloading");
                    reload(&config, &tls_tx, &reloads);
                    stamps = now;
                }
                if last_expiry_warning.elapsed() > Duration::from_secs(24 * 3600) {
                    warn_if_expiring(&tls_tx.borrow());
                    last_expiry_warning = std::time::Instant::now();
                }
            }
        }
    }
    ctx.shutdown.cancel();
    ctx.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, ctx.tracker.wait()).await.is_err() {
        tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "in-flight work did not finish in time; stopping anyway");
    }
    service.close().await;
    let _ = std::fs::remove_file(&config.admin_socket);
    tracing::info!("divert daemon stopped");
    Ok(())
}

/// Modification times of the TLS files, to notice a rotation or CRL update.
fn tls_stamps(config: &Config) -> Vec<Option<SystemTime>> {
    [&config.tls.cert, &config.tls.key, &config.tls.ca, &config.tls.crl]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Load the TLS files again and publish them (counted in `reloads`); on any error keep the old ones.
fn reload(config: &Config, tx: &watch::Sender<Arc<TlsMaterial>>, reloads: &AtomicU64) {
    match TlsMaterial::load(&config.tls, Some(&config.spiffe_id)) {
        Ok(m) => {
            warn_if_expiring(&m);
            tracing::info!(not_after = %crate::days::format_time(m.not_after), "TLS material reloaded; new handshakes use it");
            tx.send_replace(Arc::new(m));
            reloads.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::error!(error = %e, "reload failed; still using the previous certificates and CRL"),
    }
}

fn warn_if_expiring(m: &TlsMaterial) {
    let days = m.days_left();
    if days < EXPIRY_WARNING_DAYS {
        tracing::warn!(days_left = days, not_after = %crate::days::format_time(m.not_after), "certificate expires soon: issue a new one with `divert ca issue` and reload");
    }
}

fn admin_handler(ctx: Arc<Context>, service: Service, started: time::OffsetDateTime) -> admin::Handler {
    Arc::new(move |req| match req {
        admin::Request::Status => {
            // The role's status reads its store (and a steward's may link
            // anew for its quality figures): off the async workers.
            let (ctx, service) = (ctx.clone(), service.clone());
            Box::pin(async move {
                match tokio::task::spawn_blocking(move || status(&ctx, &service, started)).await {
                    Ok(s) => admin::Response::ok(s),
                    Err(e) => admin::Response::err(format!("the status task failed: {e}")),
                }
            })
        }
        other => service.clone().admin(other),
    })
}

/// What `divert status` shows: counts and identities, never a record.
fn status(ctx: &Context, service: &Service, started: time::OffsetDateTime) -> serde_json::Value {
    let tls = ctx.tls.borrow().clone();
    let days_left = tls.days_left();
    let warning = (days_left < EXPIRY_WARNING_DAYS)
        .then(|| format!("certificate expires in {days_left} days: issue a new one with `divert ca issue` and reload"));
    let (role, detail) = role_status(service);
    serde_json::json!({
        "role": role,
        "program": ctx.config.spiffe_id.program,
        "name": ctx.config.spiffe_id.name,
        "identity": ctx.config.spiffe_id.to_string(),
        "certificate": {
            "not_after": crate::days::format_time(tls.not_after),
            "days_left": days_left,
            "warning": warning,
        },
        "started": crate::days::format_time(started),
        "uptime_secs": (time::OffsetDateTime::now_utc() - started).whole_seconds(),
        "data_dir": ctx.config.data_dir.display().to_string(),
        "process": crate::daemon::harden::current().to_json(),
        role: detail,
    })
}

/// The role's name and its own status JSON.
fn role_status(service: &Service) -> (&'static str, serde_json::Value) {
    (service.role(), service.status())
}

/// What a metrics scrape reports: the current (reloaded) certificate, reloads, uptime, the role's numbers.
fn metrics_render(
    ctx: Arc<Context>,
    service: Service,
    started: time::OffsetDateTime,
    reloads: Arc<AtomicU64>,
) -> metrics::Render {
    Arc::new(move || {
        let tls = ctx.tls.borrow().clone();
        let (role, detail) = role_status(&service);
        let now = time::OffsetDateTime::now_utc();
        metrics::render(&metrics::Snapshot {
            role,
            name: &ctx.config.spiffe_id.name,
            certificate_expiry_seconds: (tls.not_after - now).whole_seconds(),
            certificate_expiry_warning: tls.days_left() < EXPIRY_WARNING_DAYS,
            warning_days: EXPIRY_WARNING_DAYS,
            tls_reloads: reloads.load(Ordering::Relaxed),
            uptime_seconds: (now - started).whole_seconds(),
            detail: &detail,
        })
    })
}
