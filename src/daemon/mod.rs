//! The daemon (`divert serve`): logging, signals, TLS reload, the admin socket, and the role's services (its config file is `crate::config`).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::tls::TlsMaterial;

/// What every service of a running daemon shares.
pub struct Context {
    pub config: Config,
    /// The current TLS material; replaced on SIGHUP. Read it per connection
    /// (`ctx.tls.borrow().clone()`), never cache it for longer.
    pub tls: watch::Receiver<Arc<TlsMaterial>>,
    /// Cancelled when the daemon begins to stop: stop accepting, finish what is in flight.
    pub shutdown: CancellationToken,
    /// Every spawned task; the daemon waits for them (with a grace timeout) before exiting.
    pub tracker: TaskTracker,
}

impl Context {
    /// Load `config`'s TLS material and make the context a daemon's services
    /// share; the returned sender publishes reloaded material.
    pub fn load(config: &Config) -> anyhow::Result<(Arc<Context>, watch::Sender<Arc<TlsMaterial>>)> {
        use anyhow::Context as _;
        let material = TlsMaterial::load(&config.tls, Some(&config.spiffe_id)).context("loading TLS material")?;
        let (tls_tx, tls_rx) = watch::channel(Arc::new(material));
        let ctx = Arc::new(Context {
            config: config.clone(),
            tls: tls_rx,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        Ok((ctx, tls_tx))
    }
}

pub mod admin;
pub mod harden;
pub mod metrics;

/// The admin socket of a config file, for the CLI commands that talk to a running daemon.
pub fn admin_socket_of(config_path: &std::path::Path) -> anyhow::Result<(Config, std::path::PathBuf)> {
    let config = Config::load(config_path).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {}: {p}", config_path.display())).collect();
        anyhow::anyhow!("{} has {} problem(s):\n{}", config_path.display(), problems.len(), lines.join("\n"))
    })?;
    let socket = config.admin_socket.clone();
    Ok((config, socket))
}

pub mod service;
