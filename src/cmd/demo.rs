//! `divert demo`: the whole program on one machine in one command — a CA and certificates, a linkage key for the sources, synthetic exports, a steward and five source daemons as real processes, the standard evaluation over mTLS, and the evaluator's report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cmd::evaluate;
use crate::cmd::link::link_files;
use crate::cmd::pseudonymize::{pseudonymize_file, quarantine_path};
use crate::daemon::admin::{self, Request};
use crate::evaluator::{Client, EvaluatorConfig};
use crate::ingest::Format;
use crate::keys;
use crate::pki::{self, Role};
use crate::query::evaluation::{self, EvaluationPlan};
use crate::report::{self, ClampLine, LinkageQuality, ReportInput};
use crate::schema::Schema;
use crate::synth::truth::{persons_outside, Clamped};
use crate::synth::{self, Params};
use crate::token::Tokenizer;

/// The program name of the demo's CA.
pub const PROGRAM: &str = "demo-program";
/// The agencies of the demo, each running a source daemon.
pub const AGENCIES: [&str; 5] = ["police", "jail", "da", "casemgmt", "treatment"];
/// The evaluator's certificate name.
pub const EVALUATOR: &str = "evaluator";

/// Arguments of `divert demo`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Run the whole program on one machine, with no setup.\n\n\
In a working directory (temporary unless --dir is given) it: makes a program CA and certificates \
for a steward, five sources (police, jail, da, casemgmt, treatment) and an evaluator; a linkage \
key held by the sources only; a synthetic diversion program (`divert synth`); starts the steward \
and the sources as real daemons (`divert serve`) on free loopback ports; drops each agency's \
export into its inbox and waits until the steward holds everything; then, as the evaluator over \
mutual TLS, grants a budget, runs the standard evaluation plan (config/evaluation.toml, or \
--plan) as `divert evaluate` does and prints the report: the headline (each arm's before/after \
change in arrests per person and the difference between arms) in plain words, then every other \
statistic with its noisy value, 95% interval, epsilon and (synthetic data) the true value, then \
where each epsilon went and how many persons each clamp cut; writes report.html; and stops the \
daemons cleanly.\n\n\
With --keep the directories and configs stay as the template of a real deployment (see README).\n\n\
Example:\n  cargo run --release -- demo\n  divert demo --persons 1000 --seed 7 --dir /tmp/divert-demo --keep")]
pub struct DemoArgs {
    /// Referred persons in the synthetic program (both arms; background persons come on top).
    #[arg(long, default_value_t = 300)]
    pub persons: u32,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Working directory (created if missing); default: a new temporary directory, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the working directory (always kept when --dir is given).
    #[arg(long)]
    pub keep: bool,
    /// The evaluator's privacy budget, in epsilon.
    #[arg(long, default_value = "2")]
    pub epsilon: String,
    /// The evaluation plan to run (TOML); default: the standard evaluation (config/evaluation.toml, built in).
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (temp_dir()?, !args.keep),
    };
    let budget_micro = crate::dp::ledger::parse_epsilon(&args.epsilon)
        .map_err(|e| anyhow::anyhow!("--epsilon {}: {e}", args.epsilon))?;
    let plan = match &args.plan {
        Some(f) => evaluate::read_plan(f)?,
        None => evaluation::standard().context("the built-in standard evaluation (config/evaluation.toml)")?,
    };
    let result = run_in(&dir, args.persons, args.seed, budget_micro, &plan);
    match &result {
        Ok(()) => {
            println!("done in {:.1} s", started.elapsed().as_secs_f64());
            if temporary {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
                println!("(working directory removed; run with --keep or --dir DIR to keep it and report.html)");
            } else {
                println!("working directory: {}", dir.display());
            }
        }
        Err(_) => eprintln!("demo: the working directory is kept for inspection: {}", dir.display()),
    }
    result
}

fn temp_dir() -> anyhow::Result<PathBuf> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("divert-demo-{}-{nanos:08x}", std::process::id()));
    crate::fsutil::create_private_dir(&dir)?;
    Ok(dir)
}

fn step(what: &str) {
    println!("demo: {what}");
}

/// A daemon process of the demo.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    config: PathBuf,
}

/// Daemons still running are stopped (SIGTERM) when this is dropped, so a
/// failing demo never leaves processes behind.
struct Daemons(Vec<Daemon>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.0 {
            if let Ok(None) = d.child.try_wait() {
                terminate(&d.child);
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = d.child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = d.child.kill();
                let _ = d.child.wait();
            }
        }
    }
}

/// Ask a process to stop as a service manager does (SIGTERM), through the
/// system's `kill` command: the crate forbids the unsafe code a direct call needs.
fn terminate(child: &Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
}

/// The address a daemon reported binding (a file it writes once listening).
fn bound_addr(file: &Path) -> anyhow::Result<std::net::SocketAddr> {
    let text = fs::read_to_string(file).with_context(|| format!("reading the bound address in {}", file.display()))?;
    text.trim().parse().with_context(|| format!("{}: not an address", file.display()))
}

fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn tls_block() -> &'static str {
    "[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\nca = \"tls/ca.pem\"\ncrl = \"tls/crl.pem\"\n"
}

/// How many persons of each arm each clamp of the plan cut (synthetic truth only).
fn clamps(ev: &evaluate::Evaluated, dataset: &synth::Dataset) -> Vec<ClampLine> {
    let mut out = Vec::new();
    for s in &ev.planned.steps {
        let Some(bounds) = s.bounds else { continue };
        let window = s.query.outcome.as_ref().and_then(|o| o.window());
        let value = match (s.analysis.as_str(), window.map(|w| (w.0, w.1))) {
            ("arrests_before_after", Some((0, 181))) => Clamped::ArrestsChange6m,
            ("arrests_per_person", Some((0, 181))) => Clamped::Arrests6m,
            ("jail_days_per_person_year", Some((0, 364))) => Clamped::JailDaysAfter,
            _ => continue,
        };
        if s.query.cohort.filter(crate::query::Category::Arm).is_some() || s.params.contains_key("non_warrant") {
            continue;
        }
        let (d, c) = persons_outside(&dataset.events, value, bounds);
        let what = match value {
            Clamped::ArrestsChange6m => "Change in arrests per person (6 months after minus 6 months before)",
            Clamped::Arrests6m => "Arrests per person in the 6 months after referral",
            Clamped::JailDaysAfter => "Jail days per person in the year after referral",
        };
        out.push(ClampLine {
            what: what.into(),
            bounds,
            reason: s.bounds_reason.clone().unwrap_or_default(),
            outside: vec![
                ("diversion".into(), d, dataset.truth.diversion.funnel.referred),
                ("comparison".into(), c, dataset.truth.comparison.funnel.referred),
            ],
        });
    }
    out
}

fn run_in(dir: &Path, persons: u32, seed: u64, budget_micro: u64, plan: &EvaluationPlan) -> anyhow::Result<()> {
    crate::fsutil::create_private_dir(dir)?;
    let exe = std::env::current_exe().context("finding the divert binary")?;

    step("making the program CA and certificates (steward, 5 sources, 1 evaluator)");
    let ca = dir.join("ca");
    if !ca.join("ca.toml").exists() {
        pki::init_ca(&ca, PROGRAM, 3650)?;
    }
    pki::issue(
        &ca,
        Role::Steward,
        "steward",
        &dir.join("steward/tls"),
        365,
        &["localhost".into()],
        &["127.0.0.1".parse()?],
    )?;
    for a in AGENCIES {
        pki::issue(
            &ca,
            Role::Source,
            a,
            &dir.join(a).join("tls"),
            365,
            &["localhost".into()],
            &["127.0.0.1".parse()?],
        )?;
    }
    pki::issue(&ca, Role::Evaluator, EVALUATOR, &dir.join(EVALUATOR).join("tls"), 365, &[], &[])?;

    step("making the linkage key and giving it to the sources only");
    let master_keys = dir.join("keys");
    let key = match keys::load_active(&master_keys) {
        Ok(k) => k,
        Err(_) => keys::init(&master_keys)?,
    };
    let key_file = master_keys.join(keys::epoch_file_name(key.epoch()));
    let key_bytes = zeroize::Zeroizing::new(crate::fsutil::read_secret(&key_file)?);
    for a in AGENCIES {
        let kd = dir.join(a).join("keys");
        crate::fsutil::create_private_dir(&kd)?;
        let target = kd.join(keys::epoch_file_name(key.epoch()));
        crate::fsutil::write_secret(&target, &key_bytes, true)?;
    }

    step(&format!("generating a synthetic program of {persons} referred persons (seed {seed})"));
    let params = Params::defaults().context("built-in synthetic-data parameters")?;
    let dataset = synth::generate(&params, persons, seed);
    let data = dir.join("synth");
    let summary = synth::write_dataset(&dataset, &data, &mut |_| {}).context("writing the synthetic data")?;
    let expected: u64 = summary.records.iter().map(|(_, n)| *n).sum();

    // Daemons listen on port 0 and report the address they bound; the configs then name
    // those ports, so a kept deployment (--keep) starts again on the same ones.
    let mut daemons = Daemons(Vec::new());
    let start = |name: &str, config: &Path| -> anyhow::Result<Daemon> {
        let log = config.with_file_name("divert.log");
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&exe)
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting the {name} daemon"))?;
        Ok(Daemon { name: name.to_string(), child, log, config: config.to_path_buf() })
    };
    let steward_cfg = dir.join("steward/divert.toml");
    let steward_text = |listen: &str| {
        format!(
            "role = \"steward\"\nname = \"steward\"\nprogram = \"{PROGRAM}\"\ndata_dir = \"data\"\n\n{}\n[steward]\nlisten = \"{listen}\"\nprogram_epsilon_cap = \"10\"\n",
            tls_block()
        )
    };
    // A kept deployment's steward restarts on the port it had.
    let old_addr = dir.join("steward/data").join(crate::config::LISTEN_ADDR_FILE);
    let listen = fs::read_to_string(&old_addr).ok().and_then(|t| t.trim().parse::<std::net::SocketAddr>().ok());
    let listen = listen.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    write_text(&steward_cfg, &steward_text(&listen))?;
    step("starting the steward (divert serve)");
    daemons.0.push(start("steward", &steward_cfg)?);
    wait_ready(&mut daemons.0[0], dir.join("steward/data/admin.sock"))?;
    let port = bound_addr(&old_addr)?.port();
    write_text(&steward_cfg, &steward_text(&format!("127.0.0.1:{port}")))?;
    println!("      listening on 127.0.0.1:{port}");

    // The first agency is the key custodian: `divert keys rotate` runs there, and the
    // others fetch new epochs from it over mutual TLS.
    let custodian = AGENCIES[0];
    let source_text = |a: &str, custody: &str| {
        format!(
            "role = \"source\"\nname = \"{a}\"\nprogram = \"{PROGRAM}\"\ndata_dir = \"data\"\n\n{}\n[source]\nsteward_url = \"https://127.0.0.1:{port}\"\nkeys = \"keys\"\npoll_interval_ms = 100\nepoch_poll_ms = 1000\n{custody}",
            tls_block()
        )
    };
    let custodian_cfg = dir.join(custodian).join("divert.toml");
    let key_addr_file = dir.join(custodian).join("data").join(crate::config::KEY_LISTEN_ADDR_FILE);
    let key_listen =
        fs::read_to_string(&key_addr_file).ok().and_then(|t| t.trim().parse::<std::net::SocketAddr>().ok());
    let key_listen = key_listen.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    let custody_of = |listen: &str| format!("custodian = \"{custodian}\"\nkey_listen = \"{listen}\"\n");
    write_text(&custodian_cfg, &source_text(custodian, &custody_of(&key_listen)))?;
    step("starting 5 source daemons, the key custodian first");
    daemons.0.push(start(custodian, &custodian_cfg)?);
    wait_ready(&mut daemons.0[1], dir.join(custodian).join("data/admin.sock"))?;
    let key_port = bound_addr(&key_addr_file)?.port();
    write_text(&custodian_cfg, &source_text(custodian, &custody_of(&format!("127.0.0.1:{key_port}"))))?;
    for a in &AGENCIES[1..] {
        let cfg = dir.join(a).join("divert.toml");
        let custody = format!("custodian = \"{custodian}\"\ncustodian_url = \"https://127.0.0.1:{key_port}\"\n");
        write_text(&cfg, &source_text(a, &custody))?;
        daemons.0.push(start(a, &cfg)?);
    }
    for i in 2..daemons.0.len() {
        let sock = daemons.0[i].config.with_file_name("data").join("admin.sock");
        wait_ready(&mut daemons.0[i], sock)?;
    }
    let evaluator_cfg = dir.join(EVALUATOR).join("divert.toml");
    write_text(
        &evaluator_cfg,
        &format!(
            "role = \"evaluator\"\nname = \"{EVALUATOR}\"\nprogram = \"{PROGRAM}\"\nsteward_url = \"https://127.0.0.1:{port}\"\n\n{}",
            tls_block()
        ),
    )?;

    step("dropping each agency's exports into its inbox");
    for a in AGENCIES {
        let inbox = dir.join(a).join("data/inbox");
        fs::create_dir_all(&inbox)?;
        let mut files: Vec<PathBuf> = fs::read_dir(data.join(a))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            // Copy under a hidden name, then rename: the daemon never sees half a file.
            let mut hidden = std::ffi::OsString::from(".");
            hidden.push(&name);
            fs::copy(&f, inbox.join(&hidden))?;
            fs::rename(inbox.join(&hidden), inbox.join(&name))?;
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let steward_sock = dir.join("steward/data/admin.sock");
    let held = wait_for_records(&rt, &mut daemons, &steward_sock, expected)?;
    println!("demo: the steward holds all {held} records");

    step("acting as the evaluator over mutual TLS: budget, standard evaluation");
    let grant = rt.block_on(admin::request(
        &steward_sock,
        &Request::BudgetGrant { evaluator: EVALUATOR.into(), epsilon_micro: budget_micro },
    ))?;
    if !grant.ok {
        bail!("granting the evaluator's budget failed: {}", grant.error.unwrap_or_default());
    }
    let config = EvaluatorConfig::load(&evaluator_cfg).map_err(|p| anyhow::anyhow!("evaluator config: {p:?}"))?;
    let client = Client::new(config)?;
    let ev = evaluate::run_plan(&rt, &client, plan)
        .with_context(|| format!("steward log: {}", daemons.0[0].log.display()))?;

    step("measuring the linkage against the synthetic truth (offline, with the sources' key)");
    let (linkage, split_rate) = linkage_quality(dir, &data, &key)?;

    let mut input = evaluate::report_input(PROGRAM, &ev, Some(&dataset.truth));
    input.linkage = Some(linkage);
    input.split_rate = Some(split_rate);
    input.clamps = clamps(&ev, &dataset);
    println!();
    print!("{}", report::render_text(&input));
    let html = dir.join("report.html");
    fs::write(&html, report::render_html(&input)).with_context(|| format!("writing {}", html.display()))?;
    // What the evaluator received, kept as it came (for inspection, and for the test that
    // checks it carries no token, name or exact count).
    fs::write(dir.join(EVALUATOR).join("responses.jsonl"), &ev.received)?;
    let public = ReportInput { synthetic: false, linkage: None, clamps: Vec::new(), split_rate: None, ..input };
    fs::write(dir.join(EVALUATOR).join("report-without-truth.html"), report::render_html(&public))?;
    println!();
    println!("report: {}", html.display());

    step("stopping the daemons (SIGTERM: stop accepting, drain, flush)");
    stop_all(&mut daemons)?;
    Ok(())
}

/// Wait until a daemon's admin socket answers, or say which daemon failed and where its log is.
fn wait_ready(d: &mut Daemon, socket: PathBuf) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            bail!("the {} daemon exited at start ({status}); its log: {}", d.name, d.log.display());
        }
        if rt.block_on(admin::request(&socket, &Request::Status)).is_ok_and(|r| r.ok) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the {} daemon did not start within 30 s; its log: {}", d.name, d.log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll the steward until it holds `expected` records, showing progress.
fn wait_for_records(
    rt: &tokio::runtime::Runtime,
    daemons: &mut Daemons,
    socket: &Path,
    expected: u64,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_shown = 0;
    loop {
        for d in &mut daemons.0 {
            if let Ok(Some(status)) = d.child.try_wait() {
                bail!("the {} daemon stopped unexpectedly ({status}); its log: {}", d.name, d.log.display());
            }
        }
        let held = rt
            .block_on(admin::request(socket, &Request::Status))
            .ok()
            .and_then(|r| r.result)
            .and_then(|v| v["steward"]["records"].as_u64())
            .unwrap_or(0);
        if held != last_shown {
            println!("demo: steward holds {held} of {expected} records");
            last_shown = held;
        }
        if held >= expected {
            return Ok(held);
        }
        if Instant::now() > deadline {
            bail!(
                "the steward holds {held} of {expected} records after 120 s; logs: {}",
                daemons.0.iter().map(|d| d.log.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_all(daemons: &mut Daemons) -> anyhow::Result<()> {
    // Sources first, then the steward they talk to.
    for d in daemons.0.iter().rev() {
        terminate(&d.child);
    }
    let mut failures = Vec::new();
    for d in daemons.0.iter_mut().rev() {
        let deadline = Instant::now() + Duration::from_secs(45);
        let status = loop {
            if let Some(s) = d.child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match status {
            Some(s) if s.success() => println!("demo: {} stopped cleanly", d.name),
            Some(s) => failures.push(format!("{} exited with {s} (log: {})", d.name, d.log.display())),
            None => failures.push(format!("{} did not stop within 45 s (log: {})", d.name, d.log.display())),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("daemons did not stop cleanly: {}", failures.join("; "))
    }
}

/// Pseudonymize each export offline with the sources' key and link it with
/// the same code the steward runs, scored against the synthetic truth.
/// Linkage quality and the split rate: the share of true persons whose records linkage put in more than one person.
fn linkage_quality(dir: &Path, data: &Path, key: &keys::EpochKey) -> anyhow::Result<(LinkageQuality, f64)> {
    let schema = Schema::default_schema().map_err(|p| anyhow::anyhow!("built-in schema: {p:?}"))?;
    let tokenizer = Tokenizer::new(&schema, key)?;
    let out_dir = dir.join("linkage-check");
    fs::create_dir_all(&out_dir)?;
    let mut outputs = Vec::new();
    for a in AGENCIES {
        let mut files: Vec<PathBuf> = fs::read_dir(data.join(a))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "csv") && !p.to_string_lossy().ends_with(".quarantine.csv"))
            .collect();
        files.sort();
        for input in files {
            let kind = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let out = out_dir.join(format!("{a}-{kind}.jsonl"));
            let file = fs::File::create(&out)?;
            pseudonymize_file(&schema, a, &kind, &tokenizer, Format::Csv, &input, &quarantine_path(&input), file)?;
            outputs.push(out);
        }
    }
    let report = link_files(&schema, &outputs, Some(&data.join("truth.csv")))?;
    let m = report.metrics.context("no linkage metrics")?;
    let split = if m.pairs.entities == 0 { 0.0 } else { m.pairs.entities_split as f64 / m.pairs.entities as f64 };
    Ok((LinkageQuality { precision: m.pairs.precision, recall: m.pairs.recall }, split))
}
