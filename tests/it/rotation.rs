//! Linkage-key rotation end to end, with real `divert serve` processes: a
//! rotation in the middle of a stream of records (linkage unchanged, every
//! query answered, nothing lost or doubled), SIGKILL of a source or the
//! steward at random points of a rotation (20 trials), a record under a
//! retired epoch refused and sent again, and the custodian refusing keys to
//! anything but a source certificate.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use divert::daemon::admin::{self, Request};
use divert::pki::Role;
use divert::record::PseudoRecord;
use divert::schema::Schema;
use divert::steward::store::Store;

use crate::net::{batch, client_config, fake_records, Client, Pki, PROGRAM};
use crate::util::{divert_in, holds, spawn_serve, text, wait_until, ChildGuard};

/// A small deterministic generator, so a failing trial can be replayed from its number.
fn mix(x: u64) -> u64 {
    let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ 0x5bd1_e995_1234_5678;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 7
}

fn tls_block(dir: &Path) -> String {
    let p = |f: &str| dir.join("tls").join(f).display().to_string();
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\ncrl = \"{}\"\n",
        p("cert.pem"),
        p("key.pem"),
        p("ca.pem"),
        p("crl.pem")
    )
}

/// One daemon: its directory, config and process.
struct Member {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    child: Option<ChildGuard>,
}

impl Member {
    fn socket(&self) -> PathBuf {
        self.dir.join("data/admin.sock")
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.0.try_wait(), Ok(None)))
    }

    /// Start the daemon (unless it runs) and wait until its admin socket answers.
    fn start(&mut self) {
        if self.running() {
            return;
        }
        let log = self.dir.join(format!("divert-{}.log", self.starts()));
        self.child = Some(spawn_serve(&self.config, &log));
        let rt = rt();
        wait_until(Duration::from_secs(30), &format!("{} to start", self.name), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.0.try_wait()) {
                panic!("{} exited at start ({st}): {}", self.name, self.log());
            }
            let up = rt.block_on(admin::request(&self.socket(), &Request::Status)).map(|r| r.ok).unwrap_or(false);
            holds(up, || self.log())
        });
    }

    /// How many times the daemon was started: one log file each.
    fn starts(&self) -> usize {
        self.logs().len()
    }

    fn logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> =
            fs::read_dir(&self.dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
        logs.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("divert-")));
        logs.sort_by_key(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.trim_start_matches("divert-").trim_end_matches(".log").parse::<usize>().unwrap_or(0)
        });
        logs
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.sigkill();
        }
    }

    /// SIGTERM and a clean exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let status = c.wait_for_exit(Duration::from_secs(30));
            assert!(status.success(), "{} did not stop cleanly ({status}): {}", self.name, self.log());
        }
    }

    /// Every start's log, in order.
    fn log(&self) -> String {
        self.logs().iter().map(|p| fs::read_to_string(p).unwrap_or_default()).collect::<Vec<_>>().join("")
    }

    /// The address the daemon bound (it writes it to `file` under its data directory), pinned into
    /// its config so a restart binds the same port: the other members' configs point at it.
    fn pin_bound_addr(&self, file: &str, setting: &str) -> u16 {
        let addr = crate::net::read_bound_addr(&self.dir.join("data").join(file), Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{} wrote no {file}: {}", self.name, self.log()));
        let text = fs::read_to_string(&self.config).expect("config");
        let from = format!("{setting} = \"127.0.0.1:0\"");
        assert!(text.contains(&from), "{}: no `{from}`", self.config.display());
        fs::write(&self.config, text.replace(&from, &format!("{setting} = \"{addr}\""))).expect("pin the port");
        addr.port()
    }

    fn key_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir.join("keys"))
            .expect("keys dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".key"))
            .collect();
        v.sort();
        v
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A steward and sources (the first the key custodian) as `divert serve` processes.
struct Deployment {
    root: PathBuf,
    steward: Member,
    sources: Vec<Member>,
    /// The steward's port.
    port: u16,
    /// The custodian's key server port.
    key_port: u16,
}

/// Which sources fetch keys from the custodian (the others get them by hand).
#[derive(Clone, Copy, PartialEq)]
enum Custody {
    Fetch,
    Manual,
}

impl Deployment {
    /// Write every member's config and start the two that others connect to, the steward and
    /// the custodian, on port 0: the ports they bound go into the other members' configs.
    fn new(root: &Path, pki: &Pki, sources: &[&str]) -> Deployment {
        fs::create_dir_all(root).expect("root");
        let sdir = root.join("steward");
        pki.issue_into(Role::Steward, "steward", &sdir.join("tls"));
        let config = sdir.join("divert.toml");
        fs::write(
            &config,
            format!(
                "role = \"steward\"\nname = \"steward\"\nprogram = \"{PROGRAM}\"\ndata_dir = \"data\"\n\n{}\n[steward]\nlisten = \"127.0.0.1:0\"\nprogram_epsilon_cap = \"100000\"\n",
                tls_block(&sdir)
            ),
        )
        .expect("steward config");
        let mut steward = Member { name: "steward".into(), dir: sdir, config, child: None };
        steward.start();
        let port = steward.pin_bound_addr(divert::config::LISTEN_ADDR_FILE, "listen");
        // The custodian's key, copied to every source as an admin does at setup.
        let custodian = sources[0];
        let ckeys = root.join(custodian).join("keys");
        divert::keys::init(&ckeys).expect("keys init");
        let mut members = Vec::new();
        for &s in sources {
            let dir = root.join(s);
            pki.issue_into(Role::Source, s, &dir.join("tls"));
            if s != custodian {
                let kd = dir.join("keys");
                divert::fsutil::create_private_dir(&kd).expect("keys dir");
                let name = divert::keys::epoch_file_name(1);
                let bytes = divert::fsutil::read_secret(&ckeys.join(&name)).expect("read key");
                divert::fsutil::write_secret(&kd.join(&name), &bytes, false).expect("write key");
            }
            let config = dir.join("divert.toml");
            members.push(Member { name: s.into(), dir, config, child: None });
        }
        let mut d = Deployment { root: root.to_path_buf(), steward, sources: members, port, key_port: 0 };
        d.write_source_config(custodian, None, 0);
        d.sources[0].start();
        d.key_port = d.sources[0].pin_bound_addr(divert::config::KEY_LISTEN_ADDR_FILE, "key_listen");
        for &s in &sources[1..] {
            d.write_source_config(s, Some(Custody::Fetch), d.key_port);
        }
        d
    }

    /// `custody`: `None` for the custodian.
    fn write_source_config(&self, name: &str, custody: Option<Custody>, key_port: u16) {
        let dir = self.root.join(name);
        let custodian = self.sources[0].name.clone();
        let custody = match custody {
            None => format!("custodian = \"{custodian}\"\nkey_listen = \"127.0.0.1:{key_port}\"\n"),
            Some(Custody::Fetch) => {
                format!("custodian = \"{custodian}\"\ncustodian_url = \"https://localhost:{key_port}\"\n")
            }
            Some(Custody::Manual) => String::new(),
        };
        fs::write(
            dir.join("divert.toml"),
            format!(
                "role = \"source\"\nname = \"{name}\"\nprogram = \"{PROGRAM}\"\ndata_dir = \"data\"\n\n{}\n[source]\nsteward_url = \"https://localhost:{}\"\nkeys = \"keys\"\npoll_interval_ms = 50\nbatch_records = 400\nepoch_poll_ms = 150\nmax_backoff_secs = 1\n{custody}",
                tls_block(&dir),
                self.port
            ),
        )
        .expect("source config");
    }

    fn start_all(&mut self) {
        self.steward.start();
        for s in &mut self.sources {
            s.start();
        }
    }

    fn stop_all(&mut self) {
        for s in &mut self.sources {
            s.stop();
        }
        self.steward.stop();
    }

    fn member(&mut self, name: &str) -> &mut Member {
        if name == "steward" {
            return &mut self.steward;
        }
        self.sources.iter_mut().find(|m| m.name == name).expect("member")
    }

    /// Drop an export into a source's inbox the way an agency should (hidden name, then rename).
    fn drop_file(&self, source: &str, file: &Path) {
        let inbox = self.root.join(source).join("data/inbox");
        fs::create_dir_all(&inbox).expect("inbox");
        let name = file.file_name().expect("name").to_string_lossy().into_owned();
        fs::copy(file, inbox.join(format!(".{name}"))).expect("copy");
        fs::rename(inbox.join(format!(".{name}")), inbox.join(&name)).expect("rename");
    }

    fn key_status(&self) -> Option<serde_json::Value> {
        let r = rt().block_on(admin::request(&self.steward.socket(), &Request::KeyStatus)).ok()?;
        r.result.filter(|_| r.ok).map(|v| v["steward"]["status"].clone())
    }

    fn rotate(&self) {
        let out = divert_in(&self.root, &["keys", "rotate", "--config", &self.sources[0].config.display().to_string()]);
        assert!(out.status.success(), "keys rotate: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("added linkage key epoch 2"), "{}", text(&out.stdout));
    }

    /// Wait until the steward links `epoch` alone and holds `expected` records under it, and
    /// every source holds only that epoch's key. Panics with the logs on timeout.
    fn wait_rotated(&mut self, epoch: u64, expected: u64, within: Duration) {
        let want_key = vec![divert::keys::epoch_file_name(epoch as u32)];
        wait_until(within, &format!("the rotation to epoch {epoch}"), || {
            let st = self.key_status();
            let done = st.as_ref().is_some_and(|s| {
                s["active"] == epoch
                    && s["pending"].is_null()
                    && s["sources"].as_object().is_some_and(|m| {
                        m.values().map(|v| v["records"][epoch.to_string()].as_u64().unwrap_or(0)).sum::<u64>()
                            == expected
                            && m.values().all(|v| {
                                v["records"].as_object().is_some_and(|r| r.keys().all(|e| *e == epoch.to_string()))
                            })
                    })
            }) && self.sources.iter().all(|m| m.key_files() == want_key);
            holds(done, || {
                let logs: Vec<String> = std::iter::once(&self.steward)
                    .chain(&self.sources)
                    .map(|m| format!("--- {}\n{}", m.name, m.log()))
                    .collect();
                format!("steward view {st:?}\n{}", logs.join("\n"))
            })
        });
    }

    /// Every record the (stopped) steward holds.
    fn held_records(&self) -> Vec<PseudoRecord> {
        let store = Store::open(&self.steward.dir.join("data/store")).expect("open steward store");
        store.records().collect::<Result<_, _>>().expect("records")
    }
}

/// A synthetic program written once: exports per agency and the truth.
struct Data {
    dir: PathBuf,
    expected: u64,
}

fn synth(dir: &Path, persons: u32, seed: u64) -> Data {
    let params = divert::synth::Params::defaults().expect("params");
    let dataset = divert::synth::generate(&params, persons, seed);
    let summary = divert::synth::write_dataset(&dataset, dir, &mut |_| {}).expect("write dataset");
    Data { dir: dir.to_path_buf(), expected: summary.records.iter().map(|(_, n)| *n).sum() }
}

impl Data {
    fn files(&self, agency: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.dir.join(agency))
            .expect("agency dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "csv") && !p.to_string_lossy().ends_with(".quarantine.csv"))
            .collect();
        v.sort();
        v
    }

    fn expected_for(&self, agencies: &[&str]) -> u64 {
        let mut n = 0u64;
        for a in agencies {
            for f in self.files(a) {
                let mut r = csv::Reader::from_path(&f).expect("csv");
                n += r.records().count() as u64;
            }
        }
        n
    }
}

/// Nothing lost, nothing doubled: one record per (source, kind, line), all under `epoch`.
fn assert_exactly_once(records: &[PseudoRecord], expected: u64, epoch: u32) {
    assert_eq!(records.len() as u64, expected, "records held");
    assert!(records.iter().all(|r| r.epoch == epoch), "a record under another epoch is still held");
    let distinct: BTreeSet<(&str, &str, u64)> =
        records.iter().map(|r| (r.source.as_str(), r.kind.as_str(), r.line)).collect();
    assert_eq!(distinct.len() as u64, expected, "a record is held twice");
}

/// The persons `records` link into, as sets of (source, kind, line): comparable across epochs.
fn partition(records: &[PseudoRecord]) -> BTreeSet<Vec<(String, String, u64)>> {
    let schema = Schema::default_schema().expect("schema");
    let index: std::collections::HashMap<&str, usize> =
        schema.schemes.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut linker = divert::linkage::Linker::new(&schema.linkage, schema.schemes.len());
    let mut sources: Vec<&str> = Vec::new();
    for r in records {
        let scope = sources.iter().position(|s| *s == r.source).unwrap_or_else(|| {
            sources.push(&r.source);
            sources.len() - 1
        }) as u32;
        let mut slots = vec![None; schema.schemes.len()];
        for (name, text) in &r.tokens {
            if let (Some(&i), Some((_, t))) = (index.get(name.as_str()), divert::token::parse_token(text)) {
                slots[i] = Some(t);
            }
        }
        linker.add(r.epoch, scope, &slots).expect("link");
    }
    let persons = linker.persons();
    let mut groups: std::collections::BTreeMap<u32, Vec<(String, String, u64)>> = Default::default();
    for (p, r) in persons.iter().zip(records) {
        groups.entry(*p).or_default().push((r.source.clone(), r.kind.clone(), r.line));
    }
    groups
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

/// Precision and recall of linking `records` against the synthetic truth.
fn linkage_metrics(records: &[PseudoRecord], dir: &Path, truth: &Path) -> (f64, f64) {
    let file = dir.join("held.jsonl");
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("json"));
        text.push('\n');
    }
    fs::write(&file, text).expect("write jsonl");
    let schema = Schema::default_schema().expect("schema");
    let report = divert::cmd::link::link_files(&schema, &[file], Some(truth)).expect("link");
    let m = report.metrics.expect("metrics");
    (m.pairs.precision, m.pairs.recall)
}

/// The same exports pseudonymized offline under the epoch-1 key: the linkage before rotation.
fn offline_records(data: &Data, agencies: &[&str], key_dir: &Path, out: &Path) -> Vec<PseudoRecord> {
    fs::create_dir_all(out).expect("out");
    let mut records = Vec::new();
    for a in agencies {
        for f in data.files(a) {
            let kind = f.file_stem().expect("stem").to_string_lossy().into_owned();
            let dest = out.join(format!("{a}-{kind}.jsonl"));
            let o = divert_in(
                out,
                &[
                    "pseudonymize",
                    "--keys",
                    &key_dir.display().to_string(),
                    "--source",
                    a,
                    "--kind",
                    &kind,
                    "--schema",
                    &crate::util::repo().join("config/schema.toml").display().to_string(),
                    "--quarantine",
                    &out.join(format!("{a}-{kind}.quarantine.csv")).display().to_string(),
                    "--output",
                    &dest.display().to_string(),
                    &f.display().to_string(),
                ],
            );
            assert!(o.status.success(), "pseudonymize: {}", text(&o.stderr));
            for line in fs::read_to_string(&dest).expect("read").lines() {
                records.push(serde_json::from_str(line).expect("record"));
            }
        }
    }
    records
}

#[test]
fn rotation_during_a_stream_keeps_linkage_and_answers_every_query() {
    const AGENCIES: [&str; 5] = ["police", "jail", "da", "casemgmt", "treatment"];
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(root.path());
    let data = synth(&root.path().join("synth"), 205, 11);
    assert!((9_000..=11_500).contains(&data.expected), "about 10,000 records: {}", data.expected);
    let mut d = Deployment::new(&root.path().join("deploy"), &pki, &AGENCIES);
    let key1 = root.path().join("key1");
    divert::fsutil::create_private_dir(&key1).expect("key1");
    let k = divert::fsutil::read_secret(&d.sources[0].dir.join("keys").join(divert::keys::epoch_file_name(1)))
        .expect("key");
    divert::fsutil::write_secret(&key1.join(divert::keys::epoch_file_name(1)), &k, false).expect("key copy");
    d.start_all();

    // The evaluator queries throughout, each query new (so none is a cached answer).
    let eval_dir = root.path().join("evaluator");
    pki.issue_into(Role::Evaluator, "evaluator", &eval_dir.join("tls"));
    let eval_cfg = eval_dir.join("divert.toml");
    fs::write(
        &eval_cfg,
        format!(
            "role = \"evaluator\"\nname = \"evaluator\"\nprogram = \"{PROGRAM}\"\nsteward_url = \"https://localhost:{}\"\n\n{}",
            d.port,
            tls_block(&eval_dir)
        ),
    )
    .expect("evaluator config");
    let grant = rt()
        .block_on(admin::request(
            &d.steward.socket(),
            &Request::BudgetGrant { evaluator: "evaluator".into(), epsilon_micro: 50_000_000 },
        ))
        .expect("grant");
    assert!(grant.ok, "{grant:?}");

    // Files go in one by one, in an order and with a rotation point drawn from the seed.
    let mut files: Vec<(&str, PathBuf)> =
        AGENCIES.iter().flat_map(|a| data.files(a).into_iter().map(move |f| (*a, f))).collect();
    files.sort_by_key(|(a, f)| {
        mix(f.to_string_lossy().len() as u64 ^ a.len() as u64 ^ f.metadata().map(|m| m.len()).unwrap_or(0))
    });
    let rotate_at = 1 + (mix(7) as usize) % (files.len() - 1);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_q = stop.clone();
    let queries = std::thread::spawn(move || {
        let config = divert::evaluator::EvaluatorConfig::load(&eval_cfg).expect("evaluator config");
        let client = divert::evaluator::Client::new(config).expect("client");
        let rt = rt();
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut i = 0u64;
        while !stop_q.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let eps = format!("0.{:06}", 1000 + i);
            let body = format!(r#"{{"analysis":"any_arrest","epsilon":{eps}}}"#);
            match rt.block_on(client.request("POST", "/v1/query", Some(body.into_bytes()))) {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("{}: {}", r.status, String::from_utf8_lossy(&r.body))),
                Err(e) => failed.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (ok, failed)
    });

    for (i, (agency, f)) in files.iter().enumerate() {
        if i == rotate_at {
            d.rotate();
        }
        d.drop_file(agency, f);
        std::thread::sleep(Duration::from_millis(150));
    }
    d.wait_rotated(2, data.expected, Duration::from_secs(120));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = queries.join().expect("query thread");
    eprintln!("{} records, rotation before file {rotate_at} of {}; {ok} queries answered", data.expected, files.len());
    assert!(failed.is_empty(), "{} queries failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert!(ok >= 20, "only {ok} queries were asked");

    // A batch under the retired epoch is refused with the reason and the current epoch.
    let addr = format!("127.0.0.1:{}", d.port).parse().expect("addr");
    let cfg = client_config(&pki.ca_pem(), Some(&d.sources[1].dir.join("tls")));
    let (status, body) = rt().block_on(async {
        let mut c = Client::connect(addr, cfg).await.expect("connect");
        c.post_batch(&batch("jail", "old-epoch-1", fake_records("jail", 0, 3))).await.expect("post")
    });
    assert_eq!(status.as_u16(), 409);
    let refusal: divert::wire::EpochRefusal = serde_json::from_slice(&body).expect("epoch refusal");
    assert_eq!((refusal.epoch, refusal.current_epoch), (1, 2));
    assert!(refusal.error.contains("retired"), "{}", refusal.error);

    d.stop_all();
    let held = d.held_records();
    assert_exactly_once(&held, data.expected, 2);
    let after = linkage_metrics(&held, &d.root, &data.dir.join("truth.csv"));
    let before_records = offline_records(&data, &AGENCIES, &key1, &root.path().join("offline"));
    assert_eq!(before_records.len() as u64, data.expected);
    let before = linkage_metrics(&before_records, &root.path().join("offline"), &data.dir.join("truth.csv"));
    eprintln!("precision/recall before {before:?}, after {after:?}");
    assert_eq!(after, before, "linkage precision and recall (after, before)");
    // Not only the same figures: the very same persons.
    assert!(partition(&held) == partition(&before_records), "the persons after the rotation differ from before");
    assert!(after.0 > 0.99 && after.1 > 0.95, "{after:?}");
    // The audit log records the switch.
    let audit = fs::read_to_string(d.steward.dir.join("data/audit.log")).expect("audit");
    assert!(audit.contains("epoch_switched"));
}

#[test]
fn sigkill_at_random_points_of_a_rotation_recovers_and_completes() {
    const AGENCIES: [&str; 2] = ["police", "jail"];
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(root.path());
    let data = synth(&root.path().join("synth"), 40, 5);
    let expected = data.expected_for(&AGENCIES);
    for trial in 0..20u64 {
        let mut d = Deployment::new(&root.path().join(format!("trial{trial}")), &pki, &AGENCIES);
        d.start_all();
        // Half the files before the rotation, half during it (ingest races the switch).
        let files: Vec<(&str, PathBuf)> =
            AGENCIES.iter().flat_map(|a| data.files(a).into_iter().map(move |f| (*a, f))).collect();
        let (early, late) = files.split_at(files.len() / 2);
        for (a, f) in early {
            d.drop_file(a, f);
        }
        let early_n: u64 =
            early.iter().map(|(_, f)| csv::Reader::from_path(f).expect("csv").records().count() as u64).sum();
        d.wait_rotated(1, early_n, Duration::from_secs(60));
        d.rotate();
        for (a, f) in late {
            d.drop_file(a, f);
        }
        // The victim, and the stage it dies at: right after `keys rotate`, once the steward
        // builds epoch 2 beside epoch 1, or after the switch (sources retiring the old key).
        let victim = ["steward", "police", "jail"][(mix(trial) % 3) as usize];
        let stage = (trial / 3 + mix(trial + 7)) % 3;
        wait_until(Duration::from_secs(60), &format!("trial {trial}: stage {stage}"), || {
            let s = d.key_status().unwrap_or_default();
            let reached = match stage {
                0 => true,
                1 => s["pending"] == 2 || s["active"] == 2,
                _ => s["active"] == 2,
            };
            holds(reached, || s.to_string())
        });
        std::thread::sleep(Duration::from_millis(mix(trial + 100) % 150));
        let seen = d.key_status().map(|s| (s["active"].clone(), s["pending"].clone()));
        d.member(victim).kill();
        eprintln!("trial {trial}: SIGKILL {victim} at stage {stage} (active/pending {seen:?})");
        d.member(victim).start();
        d.wait_rotated(2, expected, Duration::from_secs(60));
        d.stop_all();
        assert_exactly_once(&d.held_records(), expected, 2);
        let log = d.member(victim).log();
        assert!(!log.contains("panicked"), "trial {trial} ({victim}): {log}");
    }
}

#[test]
fn a_source_behind_is_refused_and_sends_again_under_the_current_epoch() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(root.path());
    let data = synth(&root.path().join("synth"), 30, 8);
    let mut d = Deployment::new(&root.path().join("deploy"), &pki, &["police", "jail"]);
    // jail gets its keys by hand, and starts only after the rotation.
    let key_port = d.key_port;
    d.write_source_config("jail", Some(Custody::Manual), key_port);
    d.steward.start();
    d.sources[0].start();
    for f in data.files("police") {
        d.drop_file("police", &f);
    }
    let police = data.expected_for(&["police"]);
    wait_until(Duration::from_secs(60), "police's records at the steward", || {
        let s = d.key_status();
        holds(s.as_ref().and_then(|s| s["sources"]["police"]["records"]["1"].as_u64()) == Some(police), || {
            format!("{s:?}")
        })
    });
    d.rotate();
    wait_until(Duration::from_secs(60), "the switch to epoch 2", || {
        holds(d.key_status().map(|s| s["active"].clone()) == Some(serde_json::json!(2)), || d.steward.log())
    });
    // jail, still on epoch 1, sends its records: refused as retired, kept.
    d.sources[1].start();
    for f in data.files("jail") {
        d.drop_file("jail", &f);
    }
    wait_until(Duration::from_secs(60), "jail refused as retired, its records kept", || {
        let r = rt().block_on(admin::request(&d.sources[1].socket(), &Request::Status)).expect("status");
        let v = r.result.expect("status result");
        let error = v["source"]["steward"]["error"].as_str().unwrap_or("").to_string();
        holds(error.contains("retired") && v["source"]["outbox"]["records"].as_u64().unwrap_or(0) > 0, || v.to_string())
    });
    // The admin gives jail the new key: it re-pseudonymizes and sends; nothing is dropped.
    let name = divert::keys::epoch_file_name(2);
    let k = divert::fsutil::read_secret(&d.sources[0].dir.join("keys").join(&name)).expect("key 2");
    divert::fsutil::write_secret(&d.sources[1].dir.join("keys").join(&name), &k, false).expect("give key 2");
    let total = police + data.expected_for(&["jail"]);
    d.wait_rotated(2, total, Duration::from_secs(60));
    d.stop_all();
    assert_exactly_once(&d.held_records(), total, 2);
}

#[test]
fn the_custodian_gives_keys_to_source_certificates_only() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(root.path());
    let mut d = Deployment::new(&root.path().join("deploy"), &pki, &["police", "jail"]);
    d.sources[0].start();
    let addr = format!("127.0.0.1:{}", d.key_port).parse().expect("addr");
    let key_hex: String =
        divert::fsutil::read_secret(&d.sources[0].dir.join("keys").join(divert::keys::epoch_file_name(1)))
            .expect("key")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    let ask = |role: Role, name: &str| -> (u16, String) {
        let dir = pki.issue(role, name);
        let cfg = client_config(&pki.ca_pem(), Some(&dir));
        rt().block_on(async {
            let mut c = Client::connect(addr, cfg).await.expect("connect");
            let (s, b) = c.request("GET", "/v1/keys", Vec::new()).await.expect("request");
            (s.as_u16(), String::from_utf8_lossy(&b).into_owned())
        })
    };
    let (status, body) = ask(Role::Steward, "steward");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("source daemons only") && !body.contains(&key_hex), "{body}");
    let (status, body) = ask(Role::Evaluator, "evaluator");
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains(&key_hex));
    let (status, body) = ask(Role::Source, "jail");
    assert_eq!(status, 200, "{body}");
    let set: divert::wire::KeySet = serde_json::from_str(&body).expect("key set");
    assert_eq!(set.epochs.len(), 1);
    assert_eq!(set.epochs[0].key_hex, key_hex);
    // A client without a certificate does not get past the handshake.
    let bare = client_config(&pki.ca_pem(), None);
    let refused = rt().block_on(async {
        match Client::connect(addr, bare).await {
            Err(_) => true,
            Ok(mut c) => c.request("GET", "/v1/keys", Vec::new()).await.is_err(),
        }
    });
    assert!(refused, "a client without a certificate was answered");
    // A source whose custodian_url leads to another server (here the steward) refuses to ask it.
    d.steward.start();
    let steward_port = d.port;
    // The steward's epoch endpoints are for sources only.
    let steward_addr = format!("127.0.0.1:{steward_port}").parse().expect("addr");
    let eval = pki.issue(Role::Evaluator, "evaluator");
    let (status, body) = rt().block_on(async {
        let mut c = Client::connect(steward_addr, client_config(&pki.ca_pem(), Some(&eval))).await.expect("connect");
        c.request("GET", "/v1/epochs", Vec::new()).await.expect("request")
    });
    assert_eq!(status.as_u16(), 403, "{}", String::from_utf8_lossy(&body));
    d.write_source_config("jail", Some(Custody::Fetch), steward_port);
    d.sources[1].start();
    wait_until(Duration::from_secs(30), "jail refusing an impostor custodian", || {
        let r = rt().block_on(admin::request(&d.sources[1].socket(), &Request::Status)).expect("status");
        let error =
            r.result.map(|v| v["source"]["key"]["error"].as_str().unwrap_or("").to_string()).unwrap_or_default();
        holds(error.contains("not the custodian"), || error.clone())
    });
    d.sources[1].stop();
    d.steward.stop();
    let log = d.sources[0].log();
    assert!(log.contains("asked for the linkage keys: refused"), "{log}");
    assert!(!log.contains(&key_hex), "the key is in the log");
    d.sources[0].stop();
}

#[test]
fn a_source_gone_for_good_can_be_excused_and_resends_everything_if_it_returns() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(root.path());
    let data = synth(&root.path().join("synth"), 30, 9);
    let mut d = Deployment::new(&root.path().join("deploy"), &pki, &["police", "jail"]);
    d.start_all();
    for a in ["police", "jail"] {
        for f in data.files(a) {
            d.drop_file(a, &f);
        }
    }
    let (police, jail) = (data.expected_for(&["police"]), data.expected_for(&["jail"]));
    d.wait_rotated(1, police + jail, Duration::from_secs(60));
    // jail goes away; the rotation then waits for it.
    d.sources[1].stop();
    d.rotate();
    let steward_cfg = d.steward.config.display().to_string();
    wait_until(Duration::from_secs(60), "police to complete epoch 2, the switch waiting for jail", || {
        let s = d.key_status().unwrap_or_default();
        holds(
            s["pending"] == 2
                && s["sources"]["police"]["waiting_for"] == false
                && s["sources"]["jail"]["waiting_for"] == true,
            || s.to_string(),
        )
    });
    let status = divert_in(&d.root, &["keys", "status", "--config", &steward_cfg]);
    assert!(text(&status.stdout).contains("the switch waits for it"), "{}", text(&status.stdout));
    // Refused without the acknowledgement, and for a source the switch does not wait for.
    let out = divert_in(&d.root, &["keys", "excuse", "--config", &steward_cfg, "--source", "jail"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--drop-records"), "{}", text(&out.stderr));
    let out = divert_in(&d.root, &["keys", "excuse", "--config", &steward_cfg, "--source", "police", "--drop-records"]);
    assert!(!out.status.success() && text(&out.stderr).contains("waits for: jail"), "{}", text(&out.stderr));
    let out = divert_in(&d.root, &["keys", "excuse", "--config", &steward_cfg, "--source", "jail", "--drop-records"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{jail} of its records")), "{}", text(&out.stdout));
    // The steward switches without jail: police's records only, under epoch 2.
    wait_until(Duration::from_secs(60), "the switch after the excuse", || {
        holds(d.key_status().map(|s| s["active"].clone()) == Some(serde_json::json!(2)), || d.steward.log())
    });
    // jail returns: refused as retired, it fetches epoch 2, re-sends everything, nothing twice.
    d.sources[1].start();
    d.wait_rotated(2, police + jail, Duration::from_secs(60));
    d.stop_all();
    assert_exactly_once(&d.held_records(), police + jail, 2);
    let audit = fs::read_to_string(d.steward.dir.join("data/audit.log")).expect("audit");
    assert!(audit.contains("source_excused"));
}

/// The steward's status (admin socket), or null while it is down.
fn steward_status(d: &Deployment) -> serde_json::Value {
    rt().block_on(admin::request(&d.steward.socket(), &Request::Status))
        .ok()
        .and_then(|r| r.result.filter(|_| r.ok))
        .map(|v| v["steward"].clone())
        .unwrap_or_default()
}

/// `divert forget` (the CLI, against the running source daemon) deletes a
/// record at the source and the steward even when the source or the steward
/// is killed with SIGKILL right after the source made the deletion durable
/// (before the steward acknowledged the tombstone): after the restart the
/// tombstone is sent and the record goes, once. A key rotation afterwards
/// re-pseudonymizes the raw store and does not bring any deleted record back.
#[test]
fn a_deletion_survives_sigkill_before_the_steward_acknowledges_it_and_a_key_rotation() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(root.path());
    let mut d = Deployment::new(&root.path().join("d"), &pki, &["police"]);
    d.start_all();
    let export = root.path().join("arrest.csv");
    let mut rows =
        String::from("arrest_id,arrest_date,family_name,given_name,dob,sex,state_id,warrant,violent,felony\n");
    for i in 0..40 {
        rows.push_str(&format!("A{i},2020-03-1{},Quinn,Ada,1971-02-{:02},F,S{:07},n,n,y\n", i % 10, 1 + i % 28, i));
    }
    fs::write(&export, rows).expect("export");
    d.drop_file("police", &export);
    let wait = |d: &Deployment, what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        wait_until(Duration::from_secs(60), what, || {
            let s = steward_status(d);
            holds(f(&s), || s.to_string())
        })
    };
    wait(&d, "40 records at the steward", &|s| s["records_per_source"]["police"] == 40);
    let config = d.sources[0].config.display().to_string();
    const TRIALS: u64 = 3;
    for trial in 0..TRIALS {
        let id = format!("A{trial}");
        let out = divert_in(&d.root, &["forget", "--config", &config, "--kind", "arrest", "--id", &id]);
        assert!(out.status.success(), "forget: {}", text(&out.stderr));
        assert!(!text(&out.stdout).contains(&id) && text(&out.stdout).contains("\"tombstones\": 1"));
        // Durable at the source now; kill one side before (or as) the tombstone is acknowledged.
        std::thread::sleep(Duration::from_millis(mix(trial) % 20));
        let victim = if trial % 2 == 0 { "police" } else { "steward" };
        d.member(victim).kill();
        d.member(victim).start();
        let left = 40 - (trial + 1);
        wait(&d, "the deletion at the steward", &|s| {
            s["records_per_source"]["police"] == left
                && s["record_versions"]["police"]["arrest"]["deleted"] == trial + 1
        });
    }
    // A rotation: the raw store re-pseudonymized under epoch 2 holds 37 arrests.
    d.rotate();
    d.wait_rotated(2, 40 - TRIALS, Duration::from_secs(60));
    d.stop_all();
    let held = d.held_records();
    assert_eq!(held.len() as u64, 40 - TRIALS);
    let schema = Schema::default_schema().expect("schema");
    let key = divert::keys::load(&d.sources[0].dir.join("keys"), 2).expect("epoch 2 key");
    let tokenizer = divert::token::Tokenizer::new(&schema, &key).expect("tokenizer");
    for trial in 0..TRIALS {
        let rid = divert::hex::encode(&tokenizer.record_id("police", "arrest", &format!("A{trial}")));
        assert!(held.iter().all(|r| r.rid != rid), "a deleted arrest came back under epoch 2");
    }
    let audit = fs::read_to_string(d.steward.dir.join("data").join(divert::steward::AUDIT_FILE)).expect("audit");
    let deletions = audit.lines().filter(|l| l.contains("\"deletion\"")).count() as u64;
    assert_eq!(deletions, TRIALS, "{audit}\n--- steward\n{}\n--- police\n{}", d.steward.log(), d.sources[0].log());
}
