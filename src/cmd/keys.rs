//! `divert keys`: create the linkage key, rotate it, and show where every source stands (epochs and fingerprints, never a key).

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::{Custody, RoleConfig};
use crate::daemon::admin::{self, Request};
use crate::daemon::admin_socket_of;
use crate::keys;

/// Arguments of `divert keys`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Manage the linkage key: 32 random bytes per epoch, held by the source agencies only.\n\n\
The key turns identity values into tokens. Anyone holding it and a guess of a person's \
name and date of birth can test the guess against tokens, so it never goes to the steward \
or an evaluator. Key files are written 0600 and refused if group- or world-readable.\n\n\
Rotation: one source is the key custodian (`[source] custodian = \"<its name>\"` in every \
source's config, `key_listen` at the custodian, `custodian_url` at the others). \
`divert keys rotate` at the custodian adds epoch N+1; every source fetches it over mutual TLS, \
re-pseudonymizes the records it holds and sends them; the steward builds the new linkage beside \
the old one and switches when every source is complete; then the old key and the old epoch's \
data are deleted. Queries are answered throughout.\n\n\
Examples:\n  divert keys init --keys /etc/divert/keys\n  divert keys rotate --config /etc/divert/police.toml\n  \
divert keys status --config /etc/divert/police.toml\n  divert keys status --keys /etc/divert/keys")]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the keys directory (0700) and a first epoch key (0600) from the system's secure RNG.
    Init {
        /// Directory for the key files; created if missing.
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
    },
    /// At the key custodian: add epoch N+1; sources fetch it, re-pseudonymize and switch.
    #[command(long_about = "At the key custodian: add linkage key epoch N+1 (0600, from the system's secure RNG) \
to the custodian's keys directory and tell its daemon. From there the rotation runs by itself: \
every source fetches the new key over mutual TLS (source certificates only), re-pseudonymizes the \
records it holds and sends them; the steward links them beside the current linkage and switches \
once every source reports the epoch complete; then old keys and old-epoch data are deleted.\n\n\
Refused while an earlier rotation is still under way (the custodian still holds two epochs).\n\n\
Follow it with `divert keys status --config FILE`.\n\n\
Example:\n  divert keys rotate --config /etc/divert/police.toml")]
    Rotate {
        /// The custodian source's daemon config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// At the steward: stop a key rotation from waiting for a source that is gone for good.
    #[command(long_about = "At the steward: stop the pending key epoch's switch from waiting for SOURCE, \
an agency that is gone for good (decommissioned, or its store lost). The switch then happens once \
every other source is complete. SOURCE's records under the old epoch cannot be linked under the new \
key: they leave the linkage at the switch and are deleted with the old epoch. If SOURCE comes back, \
its old batches are refused as retired and it re-sends everything it holds under the new epoch. \
Audited. Refused unless the switch is waiting for SOURCE, and without --drop-records.\n\n\
Example:\n  divert keys excuse --config /etc/divert/steward.toml --source treatment --drop-records")]
    Excuse {
        /// The steward's daemon config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The source the switch should stop waiting for.
        #[arg(long, value_name = "NAME")]
        source: String,
        /// Acknowledge that SOURCE's records under the old epoch leave the evaluation.
        #[arg(long)]
        drop_records: bool,
    },
    /// Show key epochs: of a keys directory (--keys), or of a running daemon and every source (--config).
    #[command(long_about = "Show key epochs and fingerprints (never a key).\n\n\
With --keys DIR: the epochs in a keys directory.\n\
With --config FILE: ask the running daemon (source or steward). It shows the steward's active and \
pending epochs, and for every source its epoch, the keys it holds, re-pseudonymization progress, \
whether the switch waits for it, and the records the steward holds under each epoch.\n\n\
Examples:\n  divert keys status --config /etc/divert/police.toml\n  divert keys status --keys /etc/divert/keys --json")]
    Status {
        /// Directory holding the key files.
        #[arg(long, value_name = "DIR", required_unless_present = "config", conflicts_with = "config")]
        keys: Option<PathBuf>,
        /// A running daemon's config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Init { keys: dir } => {
            let k = keys::init(&dir)?;
            println!("created linkage key epoch {} (fingerprint {}) in {}", k.epoch(), k.fingerprint(), dir.display());
            println!("copy it to every source agency over a secure channel; never to the steward or an evaluator");
        }
        KeysCommand::Rotate { config } => rotate(&config)?,
        KeysCommand::Excuse { config, source, drop_records } => excuse(&config, &source, drop_records)?,
        KeysCommand::Status { keys: Some(dir), json, .. } => dir_status(&dir, json)?,
        KeysCommand::Status { config: Some(config), json, .. } => daemon_status(&config, json)?,
        KeysCommand::Status { .. } => anyhow::bail!("give --keys DIR or --config FILE"),
    }
    Ok(())
}

fn dir_status(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let epochs = keys::list(dir)?;
    anyhow::ensure!(!epochs.is_empty(), "{}: no linkage key; create one with `divert keys init`", dir.display());
    // The highest epoch is what `divert pseudonymize` uses; a daemon switches to it after re-pseudonymizing.
    let newest = epochs.last().map(|e| e.epoch);
    if json {
        println!("{}", serde_json::json!({ "active_epoch": newest, "epochs": epochs }));
    } else {
        println!("{:>6}  {:<16}  state", "epoch", "fingerprint");
        for e in &epochs {
            let state =
                if Some(e.epoch) == newest { "active" } else { "retiring (deleted once the rotation completes)" };
            println!("{:>6}  {:<16}  {state}", e.epoch, e.fingerprint);
        }
    }
    Ok(())
}

fn rotate(config_path: &std::path::Path) -> anyhow::Result<()> {
    let (config, socket) = admin_socket_of(config_path)?;
    let RoleConfig::Source(src) = &config.role else {
        anyhow::bail!(
            "{} is a steward's config; the steward never holds a linkage key. Run this with the key custodian's config",
            config_path.display()
        );
    };
    match &src.custody {
        Custody::Custodian { .. } => {}
        Custody::Fetch { name, .. } => anyhow::bail!(
            "this source is not the key custodian; run `divert keys rotate` with the config of `{name}`, the custodian"
        ),
        Custody::Manual => anyhow::bail!(
            "no key custodian is configured: set `custodian` and `key_listen` in the [source] table of one source \
             (and `custodian`, `custodian_url` in the others) so new keys reach every source over mutual TLS"
        ),
    }
    let held = keys::epochs_in(&src.keys)?;
    let Some(&newest) = held.last() else {
        anyhow::bail!("{}: no linkage key; create one with `divert keys init`", src.keys.display());
    };
    if held.len() > 1 {
        anyhow::bail!(
            "a rotation to epoch {newest} is still under way (epochs held: {held:?}); it ends when the steward has \
             switched and the old key is deleted. See `divert keys status --config {}`",
            config_path.display()
        );
    }
    let epoch = newest.checked_add(1).ok_or_else(|| anyhow::anyhow!("the epoch counter is exhausted"))?;
    let key = keys::write_new_epoch(&src.keys, epoch)?;
    println!("added linkage key epoch {epoch} (fingerprint {}) in {}", key.fingerprint(), src.keys.display());
    drop(key);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match rt.block_on(admin::request(&socket, &Request::KeysChanged)) {
        Ok(r) if r.ok => println!("the custodian daemon is re-pseudonymizing its records now"),
        Ok(r) => println!(
            "the daemon did not take the notice ({}); it finds the key at its next round",
            r.error.unwrap_or_default()
        ),
        Err(_) => println!("the custodian daemon is not running; it picks the new key up when started"),
    }
    println!(
        "sources fetch it within their epoch_poll_ms; follow with `divert keys status --config {}`",
        config_path.display()
    );
    Ok(())
}

fn excuse(config_path: &std::path::Path, source: &str, drop_records: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        drop_records,
        "`{source}`'s records under the old key epoch would leave the evaluation; pass --drop-records to confirm"
    );
    let (_, socket) = admin_socket_of(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let resp = rt.block_on(admin::request(&socket, &Request::KeysExcuse { source: source.to_string() }))?;
    let Some(result) = resp.result.filter(|_| resp.ok) else {
        anyhow::bail!("the steward refused: {}", resp.error.unwrap_or_default());
    };
    println!(
        "the switch to epoch {} no longer waits for {source}; {} of its records under the old epoch leave the linkage",
        result["epoch"], result["records_left_out"]
    );
    println!("follow with `divert keys status --config {}`", config_path.display());
    Ok(())
}

fn daemon_status(config_path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let (_, socket) = admin_socket_of(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let resp = rt.block_on(admin::request(&socket, &Request::KeyStatus))?;
    let Some(result) = resp.result.filter(|_| resp.ok) else {
        anyhow::bail!("the daemon refused: {}", resp.error.unwrap_or_default());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    print!("{}", render(&result));
    Ok(())
}

/// The table `keys status --config` prints.
fn render(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(name) = v["source"].as_str() {
        let _ = writeln!(
            out,
            "this source ({name}): epoch {} (fingerprint {}), keys held {}",
            v["epoch"],
            v["fingerprint"].as_str().unwrap_or("-"),
            v["epochs_held"]
        );
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(out, "  last rotation round failed: {e}");
        }
    }
    let st = &v["steward"]["status"];
    if st.is_null() {
        let _ = writeln!(out, "steward: not reachable, and no earlier answer");
        return out;
    }
    let fresh = v["steward"]["fresh"].as_bool().unwrap_or(false);
    let asof =
        if fresh { String::new() } else { format!(" (as of {})", v["steward"]["as_of"].as_str().unwrap_or("?")) };
    let pending = match st["pending"].as_u64() {
        Some(p) => format!(", building epoch {p}"),
        None => String::new(),
    };
    let _ = writeln!(out, "steward: links epoch {}{pending}{asof}", st["active"]);
    if let Some(c) = st["conflict"].as_str() {
        let _ = writeln!(out, "  the switch is blocked: {c}");
    }
    let _ = writeln!(
        out,
        "{:<16} {:>6}  {:<10} {:<22} {:<24} state",
        "source", "epoch", "keys", "re-pseudonymized", "records at steward"
    );
    if let Some(sources) = st["sources"].as_object() {
        for (name, s) in sources {
            let r = &s["report"];
            let epoch = r["active"].as_u64().map_or("-".to_string(), |e| e.to_string());
            let keys = r["keys"]
                .as_array()
                .map_or("-".to_string(), |a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
            let rekey = match r["rekey"].as_object() {
                Some(p) => format!(
                    "{}/{} → {}",
                    p.get("records_done").and_then(|x| x.as_u64()).unwrap_or(0),
                    p.get("records_total").and_then(|x| x.as_u64()).unwrap_or(0),
                    p.get("target").and_then(|x| x.as_u64()).unwrap_or(0)
                ),
                None => "-".to_string(),
            };
            let records = s["records"]
                .as_object()
                .map_or(String::new(), |m| m.iter().map(|(e, n)| format!("e{e}: {n}")).collect::<Vec<_>>().join("  "));
            let held_up = r["error"].as_str().map(|e| format!("held up: {e}"));
            let state = if s["excused"].as_bool().unwrap_or(false) {
                "excused: the switch does not wait for it"
            } else if let Some(h) = held_up.as_deref() {
                h
            } else if s["waiting_for"].as_bool().unwrap_or(false) {
                "the switch waits for it"
            } else if r["complete"].as_u64().is_some() && r["complete"] == r["active"] {
                "complete"
            } else if r.is_null() {
                "no report yet"
            } else {
                "sending"
            };
            let _ = writeln!(out, "{name:<16} {epoch:>6}  {keys:<10} {rekey:<22} {records:<24} {state}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_rotation_under_way() {
        let v = serde_json::json!({
            "source": "police", "epoch": 2, "fingerprint": "ab12", "epochs_held": [1, 2], "error": null,
            "steward": { "fresh": true, "status": { "active": 1, "pending": 2, "sources": {
                "police": { "report": { "active": 2, "keys": [1, 2], "rekey": null, "complete": 2 },
                            "records": { "1": 10, "2": 10 }, "waiting_for": false },
                "jail": { "report": { "active": 1, "keys": [1, 2], "rekey": { "target": 2, "records_done": 3, "records_total": 8 }, "complete": 1 },
                          "records": { "1": 8 }, "waiting_for": true }
            }}}
        });
        let text = super::render(&v);
        assert!(text.contains("steward: links epoch 1, building epoch 2"), "{text}");
        assert!(text.contains("3/8 → 2"), "{text}");
        assert!(text.contains("the switch waits for it"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("police") && l.ends_with("complete")), "{text}");
    }
}
