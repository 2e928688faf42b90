//! The running daemon: start the role service and the admin socket, handle signals and TLS reloads, drain and flush on stop.

use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use crate::daemon::config::{Config, RoleConfig};
use crate::daemon::{admin, metrics, Context};
use crate::source::Source;
use crate::steward::Steward;
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

/// The role's running service.
#[derive(Clone)]
pub enum Service {
    Steward(Arc<Steward>),
    Source(Arc<Source>),
}

/// Run the daemon until SIGTERM or SIGINT: start the role's service and the
/// admin socket, reload TLS on SIGHUP (or when its files change), then
/// drain and flush.
pub async fn run(config: Config) -> anyhow::Result<()> {
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
    let service = match &config.role {
        RoleConfig::Steward(c) => Service::Steward(Steward::start(ctx.clone(), c.clone()).await?),
        RoleConfig::Source(c) => Service::Source(Source::start(ctx.clone(), c.clone()).await?),
    };
    let started = time::OffsetDateTime::now_utc();
    let handler = admin_handler(ctx.clone(), service.clone(), started);
    ctx.tracker.spawn(admin::serve(admin_listener, handler, ctx.shutdown.clone(), ctx.tracker.clone()));
    if let Some(listener) = metrics_listener {
        let render = metrics_render(ctx.clone(), service.clone(), started, reloads.clone());
        ctx.tracker.spawn(metrics::serve(listener, render, ctx.shutdown.clone(), ctx.tracker.clone()));
    }
    tracing::info!(identity = %config.identity, admin_socket = %config.admin_socket.display(), "divert daemon started");

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
    match &service {
        Service::Steward(s) => s.close().await,
        Service::Source(s) => s.close().await,
    }
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
    match TlsMaterial::load(&config.tls, Some(&config.identity)) {
        Ok(m) => {
            warn_if_expiring(&m);
            tracing::info!(not_after = %crate::pki::format_time(m.not_after), "TLS material reloaded; new handshakes use it");
            tx.send_replace(Arc::new(m));
            reloads.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::error!(error = %e, "reload failed; still using the previous certificates and CRL"),
    }
}

fn warn_if_expiring(m: &TlsMaterial) {
    let days = m.days_left();
    if days < EXPIRY_WARNING_DAYS {
        tracing::warn!(days_left = days, not_after = %crate::pki::format_time(m.not_after), "certificate expires soon: issue a new one with `divert ca issue` and reload");
    }
}

fn admin_handler(ctx: Arc<Context>, service: Service, started: time::OffsetDateTime) -> admin::Handler {
    Arc::new(move |req| {
        let ctx = ctx.clone();
        let service = service.clone();
        Box::pin(async move {
            match req {
                admin::Request::Status => admin::Response::ok(status(&ctx, &service, started)),
                admin::Request::Ingest { kind, path, force_snapshot } => match &service {
                    Service::Source(s) => match s.ingest(&kind, &path, force_snapshot).await {
                        Ok(v) => admin::Response::ok(v),
                        Err(e) => admin::Response::err(e),
                    },
                    Service::Steward(_) => {
                        admin::Response::err("this daemon is a steward; files are ingested by sources")
                    }
                },
                admin::Request::Forget { kind, ids } => match &service {
                    Service::Source(s) => match s.forget(&kind, ids).await {
                        Ok(v) => admin::Response::ok(v),
                        Err(e) => admin::Response::err(e),
                    },
                    Service::Steward(_) => admin::Response::err(
                        "this daemon is a steward; records are deleted at their source (`divert forget --config SOURCE.toml`)",
                    ),
                },
                admin::Request::BudgetGrant { evaluator, epsilon_micro } => match &service {
                    Service::Steward(s) => {
                        // The grant and its audit entry are durable writes: off the async workers.
                        let s = s.clone();
                        match tokio::task::spawn_blocking(move || s.grant(&evaluator, epsilon_micro)).await {
                            Ok(Ok(b)) => admin::Response::ok(serde_json::to_value(b).unwrap_or_default()),
                            Ok(Err(e)) => admin::Response::err(e),
                            Err(e) => admin::Response::err(format!("the grant task failed: {e}")),
                        }
                    }
                    Service::Source(_) => {
                        admin::Response::err("budgets are kept by the steward; run this on the steward host")
                    }
                },
                admin::Request::KeyStatus => match &service {
                    Service::Source(s) => admin::Response::ok(s.key_status().await),
                    Service::Steward(s) => match s.epoch_status() {
                        Ok(v) => admin::Response::ok(serde_json::json!({ "steward": { "status": v, "fresh": true } })),
                        Err(e) => admin::Response::err(e.to_string()),
                    },
                },
                admin::Request::KeysExcuse { source } => match &service {
                    Service::Steward(s) => match s.excuse(&source).await {
                        Ok((epoch, dropped)) => admin::Response::ok(serde_json::json!({
                            "source": source, "epoch": epoch, "records_left_out": dropped,
                        })),
                        Err(e) => admin::Response::err(e),
                    },
                    Service::Source(_) => {
                        admin::Response::err("run this with the steward's config: the steward decides the switch")
                    }
                },
                admin::Request::KeysChanged => match &service {
                    Service::Source(s) => {
                        s.wake_rotation();
                        admin::Response::ok(serde_json::json!({ "woken": true }))
                    }
                    Service::Steward(_) => admin::Response::err("the steward holds no linkage key"),
                },
                admin::Request::Budgets => match &service {
                    Service::Steward(s) => match s.budgets() {
                        Ok(v) => admin::Response::ok(serde_json::to_value(v).unwrap_or_default()),
                        Err(e) => admin::Response::err(e),
                    },
                    Service::Source(_) => {
                        admin::Response::err("budgets are kept by the steward; run this on the steward host")
                    }
                },
            }
        })
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
        "program": ctx.config.identity.program,
        "name": ctx.config.identity.name,
        "identity": ctx.config.identity.to_string(),
        "certificate": {
            "not_after": crate::pki::format_time(tls.not_after),
            "days_left": days_left,
            "warning": warning,
        },
        "started": crate::pki::format_time(started),
        "uptime_secs": (time::OffsetDateTime::now_utc() - started).whole_seconds(),
        "data_dir": ctx.config.data_dir.display().to_string(),
        "process": crate::daemon::harden::current().to_json(),
        role: detail,
    })
}

/// The role's name and its own status JSON.
fn role_status(service: &Service) -> (&'static str, serde_json::Value) {
    match service {
        Service::Steward(s) => ("steward", s.status()),
        Service::Source(s) => ("source", s.status()),
    }
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
            name: &ctx.config.identity.name,
            certificate_expiry_seconds: (tls.not_after - now).whole_seconds(),
            certificate_expiry_warning: tls.days_left() < EXPIRY_WARNING_DAYS,
            warning_days: EXPIRY_WARNING_DAYS,
            tls_reloads: reloads.load(Ordering::Relaxed),
            uptime_seconds: (now - started).whole_seconds(),
            detail: &detail,
        })
    })
}
