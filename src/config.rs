//! The daemon's config file (`divert serve --config FILE`): raw TOML → validated `Config`, every problem reported with its key; relative paths resolve against the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::schema::{toml_problem, Problem};
use crate::spiffe::{Role, SpiffeId};
use crate::tls::TlsPaths;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    role: String,
    name: String,
    program: String,
    data_dir: PathBuf,
    tls: RawTls,
    #[serde(default)]
    log: RawLog,
    admin_socket: Option<PathBuf>,
    metrics_listen: Option<String>,
    steward: Option<RawSteward>,
    source: Option<RawSource>,
}

/// The `[tls]` table of every config (daemon or evaluator).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    crl: PathBuf,
    /// "1.3" (default) or "1.2".
    min_version: Option<crate::tls::MinVersion>,
}

impl RawTls {
    /// The four paths, each through `resolve`, and the lowest TLS version.
    pub(crate) fn resolve(&self, resolve: impl Fn(&Path) -> PathBuf) -> TlsPaths {
        TlsPaths {
            cert: resolve(&self.cert),
            key: resolve(&self.key),
            ca: resolve(&self.ca),
            crl: resolve(&self.crl),
            min_version: self.min_version.unwrap_or_default(),
        }
    }
}

/// A config file's text; a file that cannot be read is one problem without a key.
pub(crate) fn read_text(path: &Path) -> Result<String, Vec<Problem>> {
    std::fs::read_to_string(path)
        .map_err(|e| vec![Problem { key: String::new(), message: format!("cannot read: {e}") }])
}

/// Resolves a path of the config file at `path`: relative ones against its directory.
pub(crate) fn resolver(path: &Path) -> impl Fn(&Path) -> PathBuf {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    move |p: &Path| if p.is_absolute() || base.as_os_str().is_empty() { p.to_path_buf() } else { base.join(p) }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSteward {
    listen: String,
    max_body_bytes: Option<u64>,
    max_connections: Option<u32>,
    max_pending_handshakes: Option<u32>,
    max_pending_per_address: Option<u32>,
    handshake_timeout_secs: Option<u64>,
    io_timeout_secs: Option<u64>,
    schema: Option<PathBuf>,
    program_epsilon_cap: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    steward_url: String,
    schema: Option<PathBuf>,
    keys: PathBuf,
    data_key: Option<PathBuf>,
    inbox: Option<PathBuf>,
    batch_records: Option<u32>,
    poll_interval_ms: Option<u64>,
    max_backoff_secs: Option<u64>,
    custodian: Option<String>,
    key_listen: Option<String>,
    custodian_url: Option<String>,
    epoch_poll_ms: Option<u64>,
    snapshot_max_delete_percent: Option<u32>,
}

/// How the daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// A validated daemon config. Paths are absolute or relative to the working
/// directory (already resolved against the config file's directory).
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub spiffe_id: SpiffeId,
    pub data_dir: PathBuf,
    pub tls: TlsPaths,
    pub log_format: LogFormat,
    pub log_level: String,
    pub admin_socket: PathBuf,
    /// Where Prometheus metrics are served (plain HTTP, loopback by default); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    pub role: RoleConfig,
}

/// What only one role has.
#[derive(Debug, Clone)]
pub enum RoleConfig {
    Steward(StewardConfig),
    Source(SourceConfig),
}

#[derive(Debug, Clone)]
pub struct StewardConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    pub max_connections: u32,
    /// Caps on connections still before their TLS handshake (see `accept`).
    pub pending: crate::accept::Limits,
    pub handshake_timeout: Duration,
    pub io_timeout: Duration,
    pub schema: Option<PathBuf>,
    /// The program-wide cap on the sum of evaluators' budgets, in micro-epsilon.
    pub program_epsilon_cap_micro: u64,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `host:port` of the steward.
    pub steward_addr: String,
    /// The name the steward's certificate must carry (the URL's host).
    pub steward_host: String,
    pub schema: Option<PathBuf>,
    pub keys: PathBuf,
    pub data_key: PathBuf,
    pub inbox: PathBuf,
    pub batch_records: u32,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
    /// Key rotation: who hands out linkage keys, and how this source reaches it.
    pub custody: Custody,
    /// How often the source looks for a new key epoch and reports its own to the steward.
    pub epoch_poll: Duration,
    /// A whole-table export (a `snapshot` kind) that would delete more than
    /// this percentage of the records held for its kind is refused unless forced.
    pub snapshot_max_delete_percent: u32,
}

/// Where a source's new linkage keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Custody {
    /// No custodian configured: new epochs arrive only as files an admin puts in the keys directory.
    Manual,
    /// This source is the custodian: it makes epochs (`divert keys rotate`) and serves them to
    /// other sources over mutual TLS on `listen`.
    Custodian { listen: SocketAddr },
    /// Another source (`name`) is the custodian, reached at `addr` (`host:port`, TLS name `host`).
    Fetch { name: String, addr: String, host: String },
}

/// Where, under a steward's data directory, the address its listener bound
/// is written at start (one line, `IP:PORT`): how whoever started it on port
/// 0 (the demo, tests) learns the port.
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
/// Where, under a key custodian's data directory, the address its key server
/// bound is written at start (one line, `IP:PORT`).
pub const KEY_LISTEN_ADDR_FILE: &str = "key-listen.addr";

/// Defaults, written out in the example configs under `config/`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// The program-wide privacy budget cap across all evaluators, in epsilon.
pub const DEFAULT_PROGRAM_EPSILON_CAP: &str = "10";
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// Short: a client sends its ClientHello at once and TLS 1.3 completes in one round trip.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_IO_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_BATCH_RECORDS: u32 = 5000;
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 500;
pub const DEFAULT_MAX_BACKOFF_SECS: u64 = 60;
pub const DEFAULT_EPOCH_POLL_MS: u64 = 5000;
/// A whole-table export may delete at most this share (percent) of its kind's records unless forced.
pub const DEFAULT_SNAPSHOT_MAX_DELETE_PERCENT: u32 = 20;

impl Config {
    /// Read and validate a config file, reporting every problem.
    pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
        Config::from_toml(&read_text(path)?, path)
    }

    /// Validate config text; `path` is where it came from (relative paths resolve against its directory).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, Vec<Problem>> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| vec![toml_problem(&e)])?;
        let resolve = &resolver(path);
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| problems.push(Problem { key: key.to_string(), message });

        let role: Option<Role> = match raw.role.parse() {
            Ok(Role::Evaluator) => {
                bad("role", "an evaluator is a client, not a daemon: use `divert query`".into());
                None
            }
            Ok(r) => Some(r),
            Err(_) => {
                bad("role", format!("`{}` is not a daemon role (source or steward)", raw.role));
                None
            }
        };
        let identity = match role.map(|r| SpiffeId::new(&raw.program, r, &raw.name)) {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                bad("name", e.to_string());
                None
            }
            None => None,
        };
        let log_format = match raw.log.format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                bad("log.format", format!("`{other}` is not human or json"));
                LogFormat::Human
            }
        };
        let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            bad("log.level", format!("`{log_level}` is not a level or filter (error, warn, info, debug, trace)"));
        }
        let data_dir = resolve(&raw.data_dir);
        let metrics_listen = match raw.metrics_listen.as_deref().map(str::parse::<SocketAddr>) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                bad("metrics_listen", "not an address:port like 127.0.0.1:9464".into());
                None
            }
        };

        let role_config = match role {
            Some(Role::Steward) => {
                if raw.source.is_some() {
                    bad("source", "a steward config has no [source] table".into());
                }
                match &raw.steward {
                    None => {
                        bad("steward", "missing [steward] table (listen address)".into());
                        None
                    }
                    Some(s) => {
                        let listen = match s.listen.parse::<SocketAddr>() {
                            Ok(a) => a,
                            Err(_) => {
                                bad(
                                    "steward.listen",
                                    format!("`{}` is not an address:port like 127.0.0.1:7443", s.listen),
                                );
                                SocketAddr::from(([127, 0, 0, 1], 0))
                            }
                        };
                        let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
                        if !(1024..=1 << 30).contains(&max_body_bytes) {
                            bad("steward.max_body_bytes", "must be between 1024 and 1073741824".into());
                        }
                        let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
                        if !(1..=65536).contains(&max_connections) {
                            bad("steward.max_connections", "must be between 1 and 65536".into());
                        }
                        let pending_total = s.max_pending_handshakes.unwrap_or(crate::accept::DEFAULT_PENDING as u32);
                        let pending_per_address =
                            s.max_pending_per_address.unwrap_or(crate::accept::DEFAULT_PER_ADDRESS as u32);
                        if !(1..=65536).contains(&pending_total) {
                            bad("steward.max_pending_handshakes", "must be between 1 and 65536".into());
                        }
                        if !(1..=pending_total.max(1)).contains(&pending_per_address) {
                            bad(
                                "steward.max_pending_per_address",
                                "must be between 1 and max_pending_handshakes".into(),
                            );
                        }
                        let hs = s.handshake_timeout_secs.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_SECS);
                        let io = s.io_timeout_secs.unwrap_or(DEFAULT_IO_TIMEOUT_SECS);
                        for (k, v) in [("steward.handshake_timeout_secs", hs), ("steward.io_timeout_secs", io)] {
                            if !(1..=3600).contains(&v) {
                                bad(k, "must be between 1 and 3600 seconds".into());
                            }
                        }
                        let cap_text =
                            s.program_epsilon_cap.clone().unwrap_or_else(|| DEFAULT_PROGRAM_EPSILON_CAP.into());
                        let program_epsilon_cap_micro = match crate::dp::ledger::parse_epsilon(&cap_text) {
                            Ok(m) if m > 0 => m,
                            _ => {
                                bad(
                                    "steward.program_epsilon_cap",
                                    format!("`{cap_text}` is not a positive epsilon with at most 6 decimals, as a string like \"10\""),
                                );
                                0
                            }
                        };
                        Some(RoleConfig::Steward(StewardConfig {
                            program_epsilon_cap_micro,
                            listen,
                            max_body_bytes,
                            max_connections,
                            pending: crate::accept::Limits {
                                pending: pending_total as usize,
                                per_address: pending_per_address as usize,
                            },
                            handshake_timeout: Duration::from_secs(hs),
                            io_timeout: Duration::from_secs(io),
                            schema: s.schema.as_deref().map(resolve),
                        }))
                    }
                }
            }
            Some(Role::Source) => {
                if raw.steward.is_some() {
                    bad("steward", "a source config has no [steward] table".into());
                }
                match &raw.source {
                    None => {
                        bad("source", "missing [source] table (steward_url, keys)".into());
                        None
                    }
                    Some(s) => {
                        let (steward_addr, steward_host) = match parse_https_url(&s.steward_url) {
                            Some(x) => x,
                            None => {
                                bad("source.steward_url", format!("`{}` is not https://HOST:PORT", s.steward_url));
                                (String::new(), String::new())
                            }
                        };
                        let batch_records = s.batch_records.unwrap_or(DEFAULT_BATCH_RECORDS);
                        if !(1..=100_000).contains(&batch_records) {
                            bad("source.batch_records", "must be between 1 and 100000".into());
                        }
                        let poll = s.poll_interval_ms.unwrap_or(DEFAULT_POLL_INTERVAL_MS);
                        if !(10..=600_000).contains(&poll) {
                            bad("source.poll_interval_ms", "must be between 10 and 600000".into());
                        }
                        let backoff = s.max_backoff_secs.unwrap_or(DEFAULT_MAX_BACKOFF_SECS);
                        if !(1..=3600).contains(&backoff) {
                            bad("source.max_backoff_secs", "must be between 1 and 3600".into());
                        }
                        let snapshot_max_delete_percent =
                            s.snapshot_max_delete_percent.unwrap_or(DEFAULT_SNAPSHOT_MAX_DELETE_PERCENT);
                        if snapshot_max_delete_percent > 100 {
                            bad("source.snapshot_max_delete_percent", "must be between 0 and 100".into());
                        }
                        let epoch_poll = s.epoch_poll_ms.unwrap_or(DEFAULT_EPOCH_POLL_MS);
                        if !(50..=3_600_000).contains(&epoch_poll) {
                            bad("source.epoch_poll_ms", "must be between 50 and 3600000".into());
                        }
                        let custody = match (&s.custodian, &s.key_listen, &s.custodian_url) {
                            (None, None, None) => Custody::Manual,
                            (None, _, _) => {
                                bad("source.custodian", "key_listen and custodian_url need `custodian`, the name of the source that holds the keys".into());
                                Custody::Manual
                            }
                            (Some(c), listen, url) if *c == raw.name => {
                                if url.is_some() {
                                    bad(
                                        "source.custodian_url",
                                        "this source is the custodian: it serves keys (key_listen) and fetches none"
                                            .into(),
                                    );
                                }
                                match listen.as_deref().map(str::parse::<SocketAddr>) {
                                    Some(Ok(a)) => Custody::Custodian { listen: a },
                                    Some(Err(_)) => {
                                        bad("source.key_listen", "not an address:port like 127.0.0.1:7444".into());
                                        Custody::Manual
                                    }
                                    None => {
                                        bad(
                                            "source.key_listen",
                                            "the custodian needs key_listen, the address other sources fetch keys from"
                                                .into(),
                                        );
                                        Custody::Manual
                                    }
                                }
                            }
                            (Some(c), listen, url) => {
                                if listen.is_some() {
                                    bad("source.key_listen", format!("only the custodian (`{c}`) serves keys"));
                                }
                                if SpiffeId::new(&raw.program, Role::Source, c).is_err() {
                                    bad("source.custodian", format!("`{c}` is not a source name"));
                                }
                                match url.as_deref().map(|u| (u, parse_https_url(u))) {
                                    Some((_, Some((addr, host)))) => Custody::Fetch { name: c.clone(), addr, host },
                                    Some((u, None)) => {
                                        bad("source.custodian_url", format!("`{u}` is not https://HOST:PORT"));
                                        Custody::Manual
                                    }
                                    None => {
                                        bad(
                                            "source.custodian_url",
                                            format!(
                                                "needed to fetch new keys from the custodian `{c}` (https://HOST:PORT)"
                                            ),
                                        );
                                        Custody::Manual
                                    }
                                }
                            }
                        };
                        Some(RoleConfig::Source(SourceConfig {
                            custody,
                            epoch_poll: Duration::from_millis(epoch_poll),
                            steward_addr,
                            steward_host,
                            schema: s.schema.as_deref().map(resolve),
                            keys: resolve(&s.keys),
                            data_key: s.data_key.as_deref().map(resolve).unwrap_or_else(|| data_dir.join("data.key")),
                            inbox: s.inbox.as_deref().map(resolve).unwrap_or_else(|| data_dir.join("inbox")),
                            batch_records,
                            poll_interval: Duration::from_millis(poll),
                            max_backoff: Duration::from_secs(backoff),
                            snapshot_max_delete_percent,
                        }))
                    }
                }
            }
            _ => None,
        };

        match (identity, role_config, problems.is_empty()) {
            (Some(spiffe_id), Some(role), true) => Ok(Config {
                metrics_listen,
                path: path.to_path_buf(),
                spiffe_id,
                admin_socket: raw.admin_socket.as_deref().map(resolve).unwrap_or_else(|| data_dir.join("admin.sock")),
                data_dir,
                tls: raw.tls.resolve(resolve),
                log_format,
                log_level,
                role,
            }),
            _ => Err(problems),
        }
    }
}

/// `https://host:port[/]` → (`host:port`, `host`); IPv6 hosts in brackets.
pub fn parse_https_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://")?.trim_end_matches('/');
    if rest.contains('/') || rest.is_empty() {
        return None;
    }
    let (host, port) = rest.rsplit_once(':')?;
    let _: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((rest.to_string(), host.to_string()))
}

/// Load and validate a schema file, every problem in the error; with no path,
/// the built-in copy of the shipped `config/schema.toml` (never a file that
/// happens to be in the working directory). The one schema loader of the
/// daemons and the CLI.
pub fn load_schema(path: Option<&Path>) -> anyhow::Result<crate::schema::Schema> {
    use anyhow::Context as _;
    let (path, text) = match path {
        Some(p) => {
            (p.to_path_buf(), std::fs::read_to_string(p).with_context(|| format!("reading schema {}", p.display()))?)
        }
        None => (PathBuf::from("<built-in schema>"), crate::schema::DEFAULT_SCHEMA.to_string()),
    };
    crate::schema::Schema::from_toml(&text).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {}: {p}", path.display())).collect();
        anyhow::anyhow!("{} has {} problem(s):\n{}", path.display(), problems.len(), lines.join("\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_config_resolves_paths_and_defaults() {
        let text = r#"
role = "source"
name = "police"
program = "demo"
data_dir = "data"
[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
ca = "tls/ca.pem"
crl = "tls/crl.pem"
[source]
steward_url = "https://localhost:7443"
keys = "/etc/divert/keys"
"#;
        let c = Config::from_toml(text, Path::new("/srv/police/divert.toml")).unwrap();
        assert_eq!(c.spiffe_id.to_string(), "spiffe://demo/source/police");
        assert_eq!(c.tls.cert, PathBuf::from("/srv/police/tls/cert.pem"));
        assert_eq!(c.admin_socket, PathBuf::from("/srv/police/data/admin.sock"));
        let RoleConfig::Source(s) = c.role else { panic!() };
        assert_eq!((s.steward_addr.as_str(), s.steward_host.as_str()), ("localhost:7443", "localhost"));
        assert_eq!(s.keys, PathBuf::from("/etc/divert/keys"));
        assert_eq!(s.inbox, PathBuf::from("/srv/police/data/inbox"));
        assert_eq!(s.batch_records, DEFAULT_BATCH_RECORDS);
    }

    #[test]
    fn every_problem_at_once() {
        let text = r#"
role = "evaluator"
name = "Bad Name"
program = "demo"
data_dir = "data"
[tls]
cert = "c"
key = "k"
ca = "a"
crl = "r"
[log]
format = "xml"
"#;
        let p = Config::from_toml(text, Path::new("x.toml")).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"role") && keys.contains(&"log.format"), "{p:?}");
        let text2 = text.replace("evaluator", "steward").replace("Bad Name", "steward");
        let p = Config::from_toml(&text2, Path::new("x.toml")).unwrap_err();
        assert!(p.iter().any(|p| p.key == "steward"), "{p:?}");
    }

    #[test]
    fn urls() {
        assert_eq!(parse_https_url("https://[::1]:7443/"), Some(("[::1]:7443".into(), "::1".into())));
        assert_eq!(parse_https_url("http://x:1"), None);
        assert_eq!(parse_https_url("https://x"), None);
        assert_eq!(parse_https_url("https://x:1/path"), None);
    }
}
