//! `divert serve`: run a source or steward daemon in the foreground, as a service manager expects.

use std::path::PathBuf;

use crate::config::{LogFormat, RoleConfig};
use crate::daemon::service::Service;
use crate::daemon::{self, admin_socket_of};
use crate::source::Source;
use crate::steward::Steward;

/// Arguments of `divert serve`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Run a divert daemon in the foreground, as systemd runs it (config/divert.service).\n\n\
The config's `role` (source or steward) must match the role in the daemon's certificate, and \
its `name` and `program` the certificate's SPIFFE ID, or the daemon refuses to start.\n\n\
Signals: SIGTERM or SIGINT stop it cleanly (stop accepting, finish in-flight work, flush); \
SIGHUP reloads the certificate, key and CRL (changed files are also noticed within 15 s). \
Logs go to stderr, human-readable or JSON (`[log] format`); RUST_LOG overrides the level.\n\n\
Example:\n  divert serve --config /etc/divert/steward.toml")]
pub struct ServeArgs {
    /// The daemon's config file (see config/steward.example.toml, config/source.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, _) = admin_socket_of(&args.config)?;
    init_logging(config.log_format, &config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("divert").build()?;
    let result = runtime.block_on(daemon::service::run(config, |ctx, role| async move {
        let service: Service = match role {
            RoleConfig::Steward(c) => Steward::start(ctx, c).await?,
            RoleConfig::Source(c) => Source::start(ctx, c).await?,
        };
        Ok(service)
    }));
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "daemon stopped on an error");
    }
    result
}

/// Logs to stderr (the journal under systemd). `RUST_LOG` overrides the configured level.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: under systemd or redirected to a file they would be noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}
