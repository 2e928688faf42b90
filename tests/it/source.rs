//! The source daemon over real sockets and real mutual TLS: inbox to steward exactly once, the steward away and back, handed-over and rejected files, the encrypted raw store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use divert::config::{Config, RoleConfig};
use divert::daemon::Context;
use divert::pki::Role;
use divert::record::PseudoRecord;
use divert::source::crypt::DataKey;
use divert::source::raw;
use divert::source::store::Store;
use divert::source::Source;
use divert::tls::TlsMaterial;

use crate::net::{tls_paths, Pki, TestSteward, PROGRAM};
use crate::util::{divert_ok, text};

/// A source daemon's service running in this process.
struct TestSource {
    src: Arc<Source>,
    ctx: Arc<Context>,
    dir: PathBuf,
}

/// Issue `police` certificates and a linkage key into `dir` (once) and write its config.
fn source_config(pki: &Pki, dir: &Path, steward: SocketAddr, extra: &str) -> Config {
    let tls = dir.join("tls");
    if !tls.join(divert::pki::CERT_FILE).exists() {
        pki.issue_into(Role::Source, "police", &tls);
    }
    let keys = dir.join("keys");
    if !keys.exists() {
        divert::keys::init(&keys).expect("linkage key");
    }
    let t = tls_paths(&tls);
    let p = |x: &Path| x.display().to_string();
    let text = format!(
        r#"role = "source"
name = "police"
program = "{PROGRAM}"
data_dir = "{data}"

[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
crl = "{crl}"

[source]
steward_url = "https://localhost:{port}"
keys = "{keys}"
poll_interval_ms = 20
max_backoff_secs = 1
{extra}
"#,
        data = p(&dir.join("data")),
        cert = p(&t.cert),
        key = p(&t.key),
        ca = p(&t.ca),
        crl = p(&t.crl),
        port = steward.port(),
        keys = p(&keys),
    );
    Config::from_toml(&text, &dir.join("source.toml")).unwrap_or_else(|p| panic!("config: {p:?}"))
}

impl TestSource {
    async fn try_start(pki: &Pki, dir: &Path, steward: SocketAddr, extra: &str) -> anyhow::Result<TestSource> {
        let config = source_config(pki, dir, steward, extra);
        let (ctx, _tx) = Context::load(&config).expect("source TLS material");
        let RoleConfig::Source(sc) = config.role.clone() else { panic!("not a source config") };
        let src = Source::start(ctx.clone(), sc).await?;
        Ok(TestSource { src, ctx, dir: dir.to_path_buf() })
    }

    async fn start(pki: &Pki, dir: &Path, steward: SocketAddr, extra: &str) -> TestSource {
        TestSource::try_start(pki, dir, steward, extra).await.expect("start source")
    }

    fn inbox(&self) -> PathBuf {
        self.dir.join("data").join("inbox")
    }

    /// Copy `file` into the inbox as an agency should: under a partial name, then renamed.
    fn drop_in(&self, file: &Path, name: &str) {
        let part = self.inbox().join(format!("{name}.part"));
        std::fs::copy(file, &part).expect("copy into inbox");
        std::fs::rename(&part, self.inbox().join(name)).expect("rename in inbox");
    }

    fn status(&self) -> serde_json::Value {
        self.src.status()
    }

    fn outbox_records(&self) -> u64 {
        self.status()["outbox"]["records"].as_u64().unwrap_or(u64::MAX)
    }

    /// Stop as the daemon does: cancel, drain, flush.
    async fn stop(self) {
        self.ctx.shutdown.cancel();
        self.ctx.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.ctx.tracker.wait()).await.expect("source drained");
        self.src.close().await;
    }
}

/// Wait up to `secs` seconds for `cond` to hold.
async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    crate::util::wait_until_async(Duration::from_secs(secs), what, || crate::util::holds(cond(), String::new)).await
}

/// Synthetic police exports (arrest.csv, referral.csv) with at least 10,000 records between them.
fn synth_police(dir: &Path) -> PathBuf {
    let out = dir.join("synth");
    divert_ok(dir, &["synth", "--persons", "1300", "--seed", "7", "--out", out.to_str().expect("utf-8 path")]);
    out.join("police")
}

/// What offline `divert pseudonymize` makes of an export under the same key: the records the steward must hold.
fn offline_records(dir: &Path, keys: &Path, kind: &str, file: &Path) -> Vec<PseudoRecord> {
    // The schema the source uses (the built-in one), whatever config/schema.toml holds meanwhile.
    let schema = dir.join("builtin-schema.toml");
    std::fs::write(&schema, divert::schema::DEFAULT_SCHEMA).expect("write the schema");
    let out = divert_ok(
        dir,
        &[
            "pseudonymize",
            "--schema",
            schema.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--source",
            "police",
            "--kind",
            kind,
            "--quarantine",
            dir.join(format!("{kind}.offline-quarantine.csv")).to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    );
    text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("offline record")).collect()
}

/// The steward's records, keyed by (kind, line), asserting none is held twice.
fn steward_records(st: &TestSteward) -> BTreeMap<(String, u64), PseudoRecord> {
    let mut out = BTreeMap::new();
    let mut rids = BTreeSet::new();
    for r in st.steward.records() {
        let r = r.expect("stored record");
        assert!(rids.insert(r.rid.clone()), "record {} {} held twice", r.kind, r.line);
        let key = (r.kind.clone(), r.line);
        assert!(out.insert(key, r).is_none(), "a (kind, line) held twice");
    }
    out
}

fn keyed(records: Vec<PseudoRecord>) -> BTreeMap<(String, u64), PseudoRecord> {
    records.into_iter().map(|r| ((r.kind.clone(), r.line), r)).collect()
}

/// 10,000+ synthetic records dropped into the inbox reach the steward exactly
/// once, identical to what offline pseudonymization makes of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_to_steward_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st = TestSteward::start(&pki, &tmp.path().join("steward"), "").await;
    let police = synth_police(tmp.path());
    let source = TestSource::start(&pki, &tmp.path().join("police"), st.addr, "batch_records = 1000").await;

    let keys = tmp.path().join("police/keys");
    let mut expected = keyed(offline_records(tmp.path(), &keys, "arrest", &police.join("arrest.csv")));
    expected.extend(keyed(offline_records(tmp.path(), &keys, "referral", &police.join("referral.csv"))));
    let total = expected.len() as u64;
    assert!(total >= 10_000, "only {total} records");

    let started = Instant::now();
    source.drop_in(&police.join("arrest.csv"), "arrest.csv");
    source.drop_in(&police.join("referral.csv"), "referral-2024-01.csv");
    wait_for(120, "every record at the steward", || st.records_held() >= total).await;
    let elapsed = started.elapsed();
    wait_for(10, "an empty outbox", || source.outbox_records() == 0).await;
    eprintln!(
        "source test: {total} records inbox → steward-durable in {:.2}s ({:.0} records/s; a debug build is several times slower than release)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    let mut held = steward_records(&st);
    assert_eq!(held.len() as u64, total);
    // Versions are the source's (its export order); offline there is no order but the line.
    for r in held.values_mut() {
        assert_eq!(r.seq & 0xffff_ffff, r.line, "a record's version ends in its line");
        r.seq = r.line;
    }
    assert!(held == expected, "the steward holds exactly the offline pseudonymization of the exports");

    // Records can reach the steward before their export is retired (receipt first, then the deletion).
    let inbox = source.inbox();
    wait_for(30, "both exports retired", || {
        inbox.join("done/arrest.csv.receipt").exists()
            && inbox.join("done/referral-2024-01.csv.receipt").exists()
            && !inbox.join("arrest.csv").exists()
            && !inbox.join("referral-2024-01.csv").exists()
    })
    .await;
    let status = source.status();
    assert_eq!(status["pushed"]["records"], total);
    assert_eq!(status["files"]["done"], 2);
    assert_eq!(status["held"]["arrest"].as_u64().unwrap() + status["held"]["referral"].as_u64().unwrap(), total);
    assert!(status["last_push"].as_str().is_some_and(|t| t.contains('T')), "{status}");
    assert_eq!(status["steward"]["state"], "ok");
    assert_eq!(status["key"]["epoch"], 1);

    // The same export dropped again (as after a crash between commit and
    // rename) is recognised and not sent again.
    source.drop_in(&police.join("arrest.csv"), "arrest.csv");
    wait_for(10, "the repeat's receipt", || source.inbox().join("done/arrest~2.csv.receipt").exists()).await;
    let receipt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.inbox().join("done/arrest~2.csv.receipt")).unwrap())
            .unwrap();
    assert_eq!(receipt["already_ingested"], true, "{receipt}");
    // The receipt is written after the outbox would have taken anything new: nothing is queued to send.
    assert_eq!(source.outbox_records(), 0, "nothing queued again");
    assert_eq!(st.records_held(), total);
    assert_eq!(source.status()["pushed"]["records"], total);

    source.stop().await;
    st.stop().await;
}

/// The steward stopped mid-stream (and the source restarted while it is
/// away): the outbox keeps every batch and drains when the steward returns,
/// nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steward_away_and_back_outbox_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st_dir = tmp.path().join("steward");
    let st = TestSteward::start(&pki, &st_dir, "").await;
    let addr = st.addr;
    let police = synth_police(tmp.path());
    let src_dir = tmp.path().join("police");
    let source = TestSource::start(&pki, &src_dir, addr, "batch_records = 25").await;
    let keys = src_dir.join("keys");
    let expected = keyed(offline_records(tmp.path(), &keys, "arrest", &police.join("arrest.csv")));
    let total = expected.len() as u64;

    source.drop_in(&police.join("arrest.csv"), "arrest.csv");
    wait_for(60, "the first batches at the steward", || st.records_held() > 0).await;
    st.stop().await;
    // The whole file is in the outbox before its depth is compared across a restart.
    wait_for(60, "the file ingested", || source.inbox().join("done/arrest.csv.receipt").exists()).await;
    let held_before = {
        // Reopen nothing: count what the source still has to send.
        let s = source.status();
        s["outbox"]["records"].as_u64().unwrap()
    };
    assert!(held_before > 0, "the steward was stopped mid-stream, with batches still to send");
    // State and error read from one status: a batch in flight when the steward
    // stopped can still be acknowledged (the stop answers it) after another
    // pusher's failure, so "failing" may flip to "ok" for a moment before the
    // next attempt fails again.
    wait_for(10, "the pusher to notice, with the error", || {
        let s = source.status();
        s["steward"]["state"] == "failing" && s["steward"]["error"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;

    // The source restarts while the steward is away: the outbox is durable.
    // Batches the steward acknowledged as it stopped may still leave the outbox
    // (their removal lands after the read): the depth may fall, never rise, and
    // the end state below shows that nothing was lost.
    let before = source.outbox_records();
    source.stop().await;
    let source = TestSource::start(&pki, &src_dir, addr, "batch_records = 25").await;
    let after = source.outbox_records();
    assert!(after > 0 && after <= before, "the outbox survives a restart: {after} records after, {before} before");

    let st = TestSteward::start_on(&pki, &st_dir, &addr.to_string(), "").await;
    wait_for(60, "the outbox to drain", || source.outbox_records() == 0).await;
    assert_eq!(st.records_held(), total);
    let held = steward_records(&st);
    assert!(held == expected, "nothing lost, nothing doubled, nothing changed");
    assert_eq!(source.status()["steward"]["state"], "ok");

    source.stop().await;
    st.stop().await;
}

const ARREST_HEADER: &str = "arrest_id,arrest_date,family_name,given_name,dob,sex,state_id,warrant,violent,felony\n";

/// An upgrade: the outbox of a release before the binary outbox held its
/// batches as JSON records. A source started on such a store sends them (in
/// the binary form, made at send time), and the steward holds exactly the
/// records offline pseudonymization makes; what it ingests afterwards goes
/// the new way, beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_of_json_records_left_by_an_earlier_release_is_sent() {
    use divert::source::store;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st = TestSteward::start(&pki, &tmp.path().join("steward"), "").await;
    let dir = tmp.path().join("police");
    // Certificates and the linkage key, as the source will find them.
    source_config(&pki, &dir, st.addr, "");
    let keys = dir.join("keys");
    let export = |first: u64, rows: u64| {
        let mut body = String::from(ARREST_HEADER);
        for i in first..first + rows {
            body.push_str(&format!("A{i},2019-03-04,Lee,Bo{i},1980-01-{:02},M,{},y,n,n\n", 1 + i % 28, 500 + i));
        }
        body
    };
    let old = tmp.path().join("old.csv");
    std::fs::write(&old, export(0, 300)).unwrap();
    let earlier = offline_records(tmp.path(), &keys, "arrest", &old);
    assert_eq!(earlier.len(), 300);

    // The store as the earlier release left it: two batches of JSON records, not yet sent.
    let store_dir = dir.join("data/store");
    divert::fsutil::create_private_dir(&store_dir).unwrap();
    {
        let store = store::Store::open(&store_dir).unwrap();
        let mut write = divert::storage::WriteBatch::default();
        for (seq, part) in earlier.chunks(200).enumerate() {
            let text: Vec<String> = part.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
            store::insert_outbox(&mut write, seq as u64, part.len() as u32, text.join(",").as_bytes());
        }
        write.insert(store::META_OUTBOX_NEXT, 2u64.to_be_bytes());
        store.apply(write).unwrap();
    }

    let source = TestSource::start(&pki, &dir, st.addr, "").await;
    wait_for(60, "the earlier release's records at the steward", || st.records_held() >= 300).await;
    wait_for(10, "an empty outbox", || source.outbox_records() == 0).await;
    assert!(steward_records(&st) == keyed(earlier.clone()), "the JSON outbox arrives as it was written");

    // New records beside them, through the binary outbox.
    let new = tmp.path().join("new.csv");
    std::fs::write(&new, export(300, 100)).unwrap();
    source.drop_in(&new, "arrest-2.csv");
    wait_for(60, "the new records at the steward", || st.records_held() >= 400).await;
    // Both exports number their lines from 2: records are told apart by rid here.
    let held: BTreeMap<String, PseudoRecord> =
        st.steward.records().map(|r| r.expect("stored record")).map(|r| (r.rid.clone(), r)).collect();
    assert_eq!(held.len(), 400);
    for r in earlier.iter().chain(&offline_records(tmp.path(), &keys, "arrest", &new)) {
        let h = held.get(&r.rid).unwrap_or_else(|| panic!("record of line {} missing", r.line));
        assert_eq!((&h.tokens, &h.fields), (&r.tokens, &r.fields), "line {}", r.line);
    }

    source.stop().await;
    st.stop().await;
}

/// Handed-over files stay in place; a file missing a required column goes to
/// rejected/ with a reason naming it; a file whose kind cannot be told goes
/// there too; quarantine files carry line, field and reason only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_rejected_and_quarantined_files() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st = TestSteward::start(&pki, &tmp.path().join("steward"), "").await;
    let source = TestSource::start(&pki, &tmp.path().join("police"), st.addr, "batch_records = 2").await;

    // Handed over with two bad values (a secret-looking one in each) and two good rows: the
    // unusable birth date is dropped (identity fields are optional), the bad `warrant` quarantines its row.
    let handed = tmp.path().join("export-week-3.csv");
    let body = format!(
        "{ARREST_HEADER}A1,2019-03-04,Smith,Ann,1980-01-01,F,123,y,n,n\n\
         A2,2019-03-04,Smith,Ann,13/45/1999,F,124,y,n,n\n\
         A3,2019-03-04,Jones,Bo,1981-02-02,M,125,y,n,n\n\
         A4,2019-03-04,Smith,Ann,1980-01-01,F,126,perhaps-Xyzzy,n,n\n"
    );
    std::fs::write(&handed, &body).unwrap();
    let summary = source.src.ingest("arrest", &handed, false).await.expect("handed-over file ingested");
    assert_eq!((summary["rows_read"].as_u64(), summary["accepted"].as_u64()), (Some(4), Some(3)), "{summary}");
    assert_eq!(summary["quarantined"], 1);
    assert_eq!(summary["values_dropped"], 1);
    assert_eq!(summary["already_ingested"], false);
    assert!(handed.exists(), "a handed-over file is left where it is");
    let q = PathBuf::from(summary["quarantine"].as_str().expect("quarantine path"));
    assert_eq!(q, tmp.path().join("export-week-3.csv.quarantine.csv"));
    let qtext = std::fs::read_to_string(&q).unwrap();
    let mut lines = qtext.lines();
    assert_eq!(lines.next(), Some("line,field,reason,action"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{qtext}");
    assert!(rows[0].starts_with("3,dob,") && rows[1].starts_with("5,warrant,"), "{qtext}");
    for secret in ["13/45/1999", "Xyzzy", "perhaps", "Smith", "Ann"] {
        assert!(!qtext.contains(secret), "the quarantine file carries a value: {qtext}");
    }
    wait_for(20, "the handed-over records at the steward", || st.records_held() == 3).await;

    // Handed over again: recognised, nothing new.
    let again = source.src.ingest("arrest", &handed, false).await.unwrap();
    assert_eq!(again["already_ingested"], true);
    // Bad requests are errors that say why.
    let err = source.src.ingest("arrests", &handed, false).await.unwrap_err();
    assert!(matches!(err, divert::source::RequestError::UnknownKind { .. }), "{err}");
    assert!(err.to_string().contains("not a record kind"), "{err}");
    let err = source.src.ingest("arrest", &tmp.path().join("nope.csv"), false).await.unwrap_err();
    assert!(matches!(err, divert::source::RequestError::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains("nope.csv"), "{err}");
    let no_warrant = tmp.path().join("no-warrant.csv");
    std::fs::write(
        &no_warrant,
        "arrest_id,arrest_date,family_name,given_name,dob,violent,felony\nA9,2019-01-01,Lee,Bo,1980-01-01,n,n\n",
    )
    .unwrap();
    let err = source.src.ingest("arrest", &no_warrant, false).await.unwrap_err().to_string();
    assert!(err.contains("warrant") && !err.contains("Lee"), "{err}");
    assert!(no_warrant.exists());

    // Inbox: a missing required column → rejected/ with the column named.
    let inbox = source.inbox();
    std::fs::write(inbox.join(".arrest-partial.csv"), "still being copied").unwrap();
    std::fs::write(inbox.join("arrest-old.csv.tmp"), "still being copied").unwrap();
    let dropped = tmp.path().join("no-warrant-2.csv");
    std::fs::write(
        &dropped,
        "arrest_id,arrest_date,family_name,given_name,dob,violent,felony\nA9,2019-01-01,Lee,Bo,1980-01-01,n,n\n",
    )
    .unwrap();
    source.drop_in(&dropped, "arrest-2019-03.csv");
    let reason_file = inbox.join("rejected/arrest-2019-03.csv.reason");
    // The reason is written first, then the file moved: wait for the move.
    wait_for(10, "the file rejected", || {
        reason_file.exists()
            && inbox.join("rejected/arrest-2019-03.csv").exists()
            && !inbox.join("arrest-2019-03.csv").exists()
    })
    .await;
    let reason = std::fs::read_to_string(&reason_file).unwrap();
    assert!(reason.contains("warrant") && reason.contains("arrest"), "{reason}");
    assert!(!reason.contains("Lee"), "{reason}");

    // A name that tells no kind, with no sidecar → rejected/ saying so.
    std::fs::write(tmp.path().join("x.csv"), &body).unwrap();
    source.drop_in(&tmp.path().join("x.csv"), "weekly-export.csv");
    let reason_file = inbox.join("rejected/weekly-export.csv.reason");
    wait_for(10, "the nameless file rejected", || reason_file.exists()).await;
    assert!(std::fs::read_to_string(&reason_file).unwrap().contains("cannot tell the record kind"));

    // A sidecar names the kind; bad rows go to rejected/FILE.quarantine.csv; the file is deleted, a receipt stays.
    let other = body.replace("A1,", "B1,").replace("A2,", "B2,").replace("A3,", "B3,").replace("A4,", "B4,");
    std::fs::write(tmp.path().join("y.csv"), other).unwrap();
    std::fs::write(inbox.join("export-7.csv.kind"), "arrest\n").unwrap();
    source.drop_in(&tmp.path().join("y.csv"), "export-7.csv");
    // The receipt is written first, then the export and its sidecar leave the inbox.
    wait_for(10, "the sidecar file done", || {
        inbox.join("done/export-7.csv.receipt").exists()
            && !inbox.join("export-7.csv.kind").exists()
            && !inbox.join("export-7.csv").exists()
    })
    .await;
    let q = std::fs::read_to_string(inbox.join("rejected/export-7.csv.quarantine.csv")).unwrap();
    assert_eq!(q.lines().count(), 3, "{q}");
    wait_for(20, "those records at the steward", || st.records_held() == 6).await;

    // Hidden and partial files were left alone.
    assert!(inbox.join(".arrest-partial.csv").exists() && inbox.join("arrest-old.csv.tmp").exists());
    let s = source.status();
    assert_eq!(s["files"]["rejected"], 2, "{s}");
    assert_eq!(s["files"]["rejected_waiting"], 2, "{s}");
    assert_eq!(s["files"]["done"], 2, "{s}");
    assert_eq!(s["held"]["arrest"], 6, "{s}");

    source.stop().await;
    st.stop().await;
}

/// Nothing of an export stays readable at the source after ingest: every
/// file under its data directory (inbox, done/, the stores) is free of the
/// export's family names and dates of birth; done/ holds receipts only. (An
/// attack on `divert demo --keep` found 20,517 family names and 14,615 dates
/// of birth in done/.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_keeps_no_export_in_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st = TestSteward::start(&pki, &tmp.path().join("steward"), "").await;
    let synth = tmp.path().join("synth");
    divert_ok(tmp.path(), &["synth", "--persons", "300", "--seed", "11", "--out", synth.to_str().unwrap()]);
    let police = synth.join("police");
    let source = TestSource::start(&pki, &tmp.path().join("police"), st.addr, "").await;

    // The identity values of the exports: family names and dates of birth
    // (long enough that random bytes of the encrypted stores cannot hold them by chance).
    let mut secrets = BTreeSet::new();
    for file in ["arrest.csv", "referral.csv"] {
        let mut reader = csv::Reader::from_path(police.join(file)).unwrap();
        let headers = reader.headers().unwrap().clone();
        let cols: Vec<usize> = headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.contains("family") || h.contains("last") || h.contains("dob") || h.contains("birth"))
            .map(|(i, _)| i)
            .collect();
        assert!(cols.len() >= 2, "{headers:?}");
        for row in reader.records() {
            let row = row.unwrap();
            for &i in &cols {
                let v = row.get(i).unwrap_or("").trim();
                if v.len() >= 8 {
                    secrets.insert(v.to_string());
                }
            }
        }
    }
    assert!(secrets.len() > 100, "only {} identity values to look for", secrets.len());

    source.drop_in(&police.join("arrest.csv"), "arrest.csv");
    source.drop_in(&police.join("referral.csv"), "referral.csv");
    let inbox = source.inbox();
    wait_for(60, "both receipts", || {
        inbox.join("done/arrest.csv.receipt").exists() && inbox.join("done/referral.csv.receipt").exists()
    })
    .await;
    wait_for(60, "an empty outbox", || source.outbox_records() == 0).await;

    // The receipt comes first; the export is shredded (under a hidden name in done/) after it.
    let done_names = || {
        let mut done: Vec<String> = std::fs::read_dir(inbox.join("done"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        done.sort();
        done
    };
    wait_for(30, "the exports shredded", || done_names() == ["arrest.csv.receipt", "referral.csv.receipt"]).await;
    let receipt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(inbox.join("done/arrest.csv.receipt")).unwrap()).unwrap();
    assert_eq!(receipt["kind"], "arrest");
    assert!(receipt["accepted"].as_u64().unwrap() > 100, "{receipt}");
    assert!(receipt["export"].as_str().unwrap().contains("deleted"), "{receipt}");
    assert_eq!(source.status()["files"]["rejected_waiting"], 0);

    source.stop().await; // the stores flushed: everything on disk is what an attacker would read
    let files = files_under(&tmp.path().join("police").join("data"));
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if let Some(s) = secrets.iter().find(|s| text.contains(s.as_str())) {
            panic!("{} holds an identity value of the export in clear ({} bytes)", f.display(), s.len());
        }
    }
    st.stop().await;
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The data key is made 0600 and refused when looser; the store holds no
/// plaintext name from the input, yet the raw rows decrypt under the data key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_key_and_raw_store() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    // No steward at all: the records wait in the outbox.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let dir = tmp.path().join("police");
    let source = TestSource::start(&pki, &dir, nowhere, "").await;
    let data_key = dir.join("data/data.key");
    assert_eq!(std::fs::metadata(&data_key).unwrap().permissions().mode() & 0o777, 0o600);

    // State ids of twelve digits: the store holds random-looking bytes (raw
    // tokens, sealed chunks, and hex text in outboxes of earlier releases),
    // where a six-digit id could turn up by chance; twelve digits make that
    // chance negligible.
    let mut body = String::from(ARREST_HEADER);
    for i in 0..2500u64 {
        body.push_str(&format!(
            "A{i},2019-03-04,Quillfeather,Zebediah,1980-01-{:02},M,{},y,n,n\n",
            1 + i % 28,
            700_000_000_000 + i
        ));
    }
    std::fs::write(tmp.path().join("a.csv"), &body).unwrap();
    source.drop_in(&tmp.path().join("a.csv"), "arrest.csv");
    wait_for(20, "the file done", || source.inbox().join("done/arrest.csv.receipt").exists()).await;
    assert_eq!(source.outbox_records(), 2500);
    source.stop().await;

    let store_dir = dir.join("data/store");
    let files = files_under(&store_dir);
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for secret in [
            "Quillfeather",
            "QUILLFEATHER",
            "quillfeather",
            "Zebediah",
            "zebediah",
            "700000000001",
            "700000001234",
            "700000002499",
        ] {
            // On a hit, show the bytes around it (synthetic values only), so a
            // failure says whether it is a leak or a chance match.
            if let Some(at) = bytes.windows(secret.len()).position(|w| w == secret.as_bytes()) {
                let around = &bytes[at.saturating_sub(48)..(at + secret.len() + 48).min(bytes.len())];
                panic!("{secret} in plaintext in {} at byte {at}: {}", f.display(), around.escape_ascii());
            }
        }
    }

    // The raw rows are all there under the data key (what a key rotation re-reads).
    {
        let (key, created) = DataKey::load_or_create(&data_key).unwrap();
        assert!(!created);
        // sled lets go of the stopped source's file lock a moment after its last handle drops.
        let store = crate::util::wait_until(Duration::from_secs(10), "the store's file lock", || {
            Store::open(&store_dir).map_err(|e| e.to_string())
        });
        let mut rows = 0;
        let mut names = 0;
        let mut header = None;
        for kv in store.tree().scan_prefix(b"r") {
            let (k, v) = kv.unwrap();
            let plain = key.open(&k, &v).expect("a raw chunk decrypts under its own key");
            let mut other_key = k.to_vec();
            *other_key.last_mut().unwrap() ^= 1;
            assert!(key.open(&other_key, &v).is_err(), "a chunk moved to another key does not decrypt");
            if k.ends_with(&0u32.to_be_bytes()) {
                header = Some(raw::decode_header(&plain).unwrap());
                continue;
            }
            rows += raw::for_each_row(&plain, |_, fields| {
                if fields.iter().any(|f| *f == b"Quillfeather") {
                    names += 1;
                }
            })
            .unwrap();
        }
        assert_eq!((rows, names), (2500, 2500));
        let header = header.expect("a header chunk");
        assert_eq!(header.kind, "arrest");
        assert_eq!(header.columns[0], "arrest_id");
    }

    // A data key others may read is refused at start.
    std::fs::set_permissions(&data_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = TestSource::try_start(&pki, &dir, nowhere, "").await.err().expect("a loose data key is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("data.key") && msg.contains("too open"), "{msg}");
    std::fs::set_permissions(&data_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // With the mode fixed it starts again, the outbox intact.
    let source = TestSource::start(&pki, &dir, nowhere, "").await;
    assert_eq!(source.outbox_records(), 2500);
    assert_eq!(source.status()["held"]["arrest"], 2500);
    source.stop().await;
}

/// Throughput from inbox file to steward-durable on loopback, for a larger
/// export (run with `cargo test --release --test it source::throughput -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run in release"]
async fn throughput() {
    let persons = std::env::var("DIVERT_SOURCE_PERSONS").unwrap_or_else(|_| "20000".into());
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st = TestSteward::start(&pki, &tmp.path().join("steward"), "").await;
    let out = tmp.path().join("synth");
    divert_ok(tmp.path(), &["synth", "--persons", &persons, "--seed", "7", "--out", out.to_str().unwrap()]);
    let source = TestSource::start(&pki, &tmp.path().join("police"), st.addr, "").await;
    let file = out.join("police/arrest.csv");
    let rows = std::fs::read_to_string(&file).unwrap().lines().count() as u64 - 1;
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    source.drop_in(&file, "arrest.csv");
    wait_for(600, "the file done", || source.inbox().join("done/arrest.csv.receipt").exists()).await;
    let ingested = started.elapsed();
    let cpu1 = cpu_seconds();
    wait_for(600, "every record at the steward", || st.records_held() >= rows).await;
    let elapsed = started.elapsed();
    let cpu2 = cpu_seconds();
    eprintln!(
        "source throughput: {rows} rows; ingested (durable in the outbox) in {:.2}s ({:.0}/s, {:.2} CPU s); \
         at the steward in {:.2}s ({:.0} records/s, {:.2} CPU s in all)",
        ingested.as_secs_f64(),
        rows as f64 / ingested.as_secs_f64(),
        cpu1 - cpu0,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        cpu2 - cpu0,
    );
    source.stop().await;
    st.stop().await;
}

/// CPU seconds (user + system) this process has used, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12 (clock ticks, 100 per second on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// A server of our CA that is not a steward (here another source) gets nothing:
/// the pusher checks the peer's SPIFFE ID after the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_steward_gets_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let impostor = pki.issue(Role::Source, "da");
    let material = TlsMaterial::load(&tls_paths(&impostor), None).expect("impostor TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(material.server.clone());
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let got = received.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let got = got.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await {
                        if n == 0 {
                            break;
                        }
                        got.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });

    let source = TestSource::start(&pki, &tmp.path().join("police"), addr, "").await;
    let mut body = String::from(ARREST_HEADER);
    body.push_str("A1,2019-03-04,Lee,Bo,1980-01-01,M,1,y,n,n\n");
    std::fs::write(tmp.path().join("a.csv"), body).unwrap();
    source.drop_in(&tmp.path().join("a.csv"), "arrest.csv");
    wait_for(10, "the push refused", || source.status()["steward"]["state"] == "failing").await;
    let s = source.status();
    let error = s["steward"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("spiffe://test-lead/source/da") && error.contains("not a steward"), "{s}");
    assert_eq!(received.load(std::sync::atomic::Ordering::Relaxed), 0, "not a byte of a request was sent");
    assert_eq!(source.outbox_records(), 1, "the batch stays in the outbox");
    source.stop().await;
    server.abort();
}

// ---- re-exports, corrections and deletions (issue 13) ----

const FAMILY: [&str; 21] = [
    "Adams", "Baker", "Clark", "Davis", "Evans", "Frank", "Green", "Hayes", "Irwin", "Jones", "Kelly", "Lewis",
    "Moore", "Nolan", "Owens", "Price", "Quinn", "Reyes", "Stone", "Tatum", "Upton",
];
const GIVEN: [&str; 21] = [
    "Ann", "Bea", "Cal", "Dee", "Eli", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lou", "Max", "Ned", "Oda", "Pam",
    "Ray", "Sue", "Tom", "Una", "Val",
];

/// Arrest `i` of person `p` (20 persons, two or three arrests each; person 20 is a correction's).
fn arrest_row(i: usize, p: usize, felony: &str) -> String {
    format!(
        "A{i},2020-0{}-1{},{},{},1980-0{}-1{},F,S{:07},n,n,{felony}",
        1 + i % 9,
        i % 10,
        FAMILY[p],
        GIVEN[p],
        1 + p % 9,
        p % 10,
        1000 + p
    )
}

/// The latest version of arrest `i`: A25 became a felony, A30 was recorded under the wrong person.
fn latest(i: usize) -> String {
    match i {
        25 => arrest_row(i, i % 20, "y"),
        30 => arrest_row(i, 20, "n"),
        _ => arrest_row(i, i % 20, "n"),
    }
}

fn export_of(rows: impl Iterator<Item = String>, eol: &str) -> String {
    let mut s = ARREST_HEADER.replace('\n', eol);
    for r in rows {
        s.push_str(&r);
        s.push_str(eol);
    }
    s
}

fn versions_of(st: &TestSteward) -> serde_json::Value {
    st.steward.status()["record_versions"]["police"]["arrest"].clone()
}

/// Records the steward has taken account of (every outcome but deletion).
fn seen(st: &TestSteward) -> u64 {
    let v = versions_of(st);
    ["new", "replaced", "unchanged", "stale"].iter().map(|k| v[*k].as_u64().unwrap_or(0)).sum()
}

fn persons_linked(st: &TestSteward) -> u64 {
    st.steward.status()["linkage"]["persons"].as_u64().unwrap_or(0)
}

/// A rolling-window export, a correction of a field and of a birth date (the
/// record moves to another person), a full re-export in another row order
/// and with CRLF, the same again with LF: one record per arrest at the
/// steward, field for field the offline pseudonymization of the latest
/// versions. Then `forget` deletes one at the source and the steward (audited
/// without the record), and the deletion survives a restart of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_exports_replace_corrections_move_and_deletions_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st_dir = tmp.path().join("steward");
    let st = TestSteward::start(&pki, &st_dir, "").await;
    let addr = st.addr;
    let src_dir = tmp.path().join("police");
    let source = TestSource::start(&pki, &src_dir, addr, "batch_records = 7").await;
    let files = tmp.path().join("exports");
    std::fs::create_dir_all(&files).unwrap();
    let write = |name: &str, text: String| {
        let p = files.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    // The first export: arrests 0..40 of 20 persons.
    source.drop_in(&write("e1.csv", export_of((0..40).map(|i| arrest_row(i, i % 20, "n")), "\n")), "arrest-1.csv");
    wait_for(60, "the first export at the steward", || seen(&st) == 40).await;
    assert_eq!(st.records_held(), 40);
    wait_for(10, "20 persons", || persons_linked(&st) == 20).await;

    // A rolling window: 20..60, two of them corrected.
    source.drop_in(&write("e2.csv", export_of((20..60).map(latest), "\n")), "arrest-2.csv");
    wait_for(60, "the rolling window at the steward", || seen(&st) == 80).await;
    let v = versions_of(&st);
    assert_eq!(
        (v["new"].as_u64(), v["replaced"].as_u64(), v["unchanged"].as_u64()),
        (Some(60), Some(2), Some(18)),
        "{v}"
    );
    assert_eq!(st.records_held(), 60);
    // The corrected birth date makes a person of its own.
    wait_for(10, "21 persons", || persons_linked(&st) == 21).await;

    // The whole table again, rows in reverse order, CRLF; then the same with LF (other bytes, same content).
    let full = write("e3.csv", export_of((0..60).rev().map(latest), "\r\n"));
    source.drop_in(&full, "arrest-3.csv");
    source.drop_in(&write("e4.csv", export_of((0..60).rev().map(latest), "\n")), "arrest-4.csv");
    wait_for(60, "both full re-exports at the steward", || seen(&st) == 200).await;
    let v = versions_of(&st);
    assert_eq!(
        (v["replaced"].as_u64(), v["unchanged"].as_u64(), v["stale"].as_u64()),
        (Some(2), Some(138), Some(0)),
        "{v}"
    );
    assert_eq!(st.records_held(), 60);
    wait_for(10, "an empty outbox", || source.outbox_records() == 0).await;
    // The source's raw store too keeps one row per arrest, the newest.
    assert_eq!(source.status()["held"]["arrest"], 60);

    // Field for field: what offline pseudonymization makes of the latest versions.
    let keys = src_dir.join("keys");
    let latest_file = write("latest.csv", export_of((0..60).map(latest), "\n"));
    let expected: BTreeMap<String, PseudoRecord> =
        offline_records(tmp.path(), &keys, "arrest", &latest_file).into_iter().map(|r| (r.rid.clone(), r)).collect();
    let mut held = BTreeMap::new();
    for r in st.steward.records() {
        let r = r.unwrap();
        assert!(held.insert(r.rid.clone(), r).is_none(), "a rid held twice");
    }
    assert_eq!(held.len(), 60);
    for (rid, want) in &expected {
        let got = held.get(rid).expect("every arrest held");
        assert_eq!((&got.tokens, &got.fields, got.epoch), (&want.tokens, &want.fields, want.epoch));
    }

    // Forget A30 at the source: gone at the steward too, and from linkage.
    let f = source.src.forget("arrest", divert::source::forget::RecordIds(vec!["A30".into()])).await.unwrap();
    assert_eq!(f["tombstones"], 1, "{f}");
    assert_eq!(f["raw_rows_removed"], 1, "the raw store holds one row per arrest: {f}");
    wait_for(60, "the deletion at the steward", || st.records_held() == 59).await;
    assert_eq!(versions_of(&st)["deleted"], 1);
    // Linked just after the store took it (before the acknowledgement).
    wait_for(10, "the deletion in linkage", || persons_linked(&st) == 20).await;
    assert_eq!(source.status()["deleted"]["arrest"], 1);
    // A30 is on line 32 of the latest export (the header is line 1).
    let gone_rid = expected.values().find(|r| r.line == 32).map(|r| r.rid.clone()).expect("A30's rid");
    assert!(st.steward.records().all(|r| r.unwrap().rid != gone_rid));
    let audit = std::fs::read_to_string(st.config.data_dir.join(divert::steward::AUDIT_FILE)).unwrap();
    let deletion: Vec<&str> = audit.lines().filter(|l| l.contains("\"deletion\"")).collect();
    assert_eq!(deletion.len(), 1, "{audit}");
    assert!(deletion[0].contains("\"records\":1") && deletion[0].contains("\"kind\":\"arrest\""), "{}", deletion[0]);
    assert!(!audit.contains("A30"));
    assert!(!audit.contains(gone_rid.as_str()));

    // Both restart: the record stays deleted.
    wait_for(10, "an empty outbox", || source.outbox_records() == 0).await;
    source.stop().await;
    st.stop().await;
    let st = TestSteward::start_on(&pki, &st_dir, &addr.to_string(), "").await;
    let source = TestSource::start(&pki, &src_dir, addr, "batch_records = 7").await;
    assert_eq!(st.records_held(), 59);
    assert_eq!(persons_linked(&st), 20);
    assert_eq!(versions_of(&st)["deleted"], 1);
    assert_eq!(source.status()["deleted"]["arrest"], 1);

    // A court's list dropped into the deletions inbox: applied, then the list itself goes.
    let deletions = source.inbox().join("deletions");
    std::fs::write(deletions.join(".arrest-sealed.txt"), "A31\n\n A32 \r\nA30\n").unwrap();
    std::fs::rename(deletions.join(".arrest-sealed.txt"), deletions.join("arrest-sealed.txt")).unwrap();
    wait_for(60, "the list's deletions at the steward", || st.records_held() == 57).await;
    assert_eq!(versions_of(&st)["deleted"], 3);
    assert_eq!(source.status()["deleted"]["arrest"], 3);
    assert_eq!(source.status()["held"]["arrest"], 57);
    wait_for(10, "the list deleted", || !deletions.join("arrest-sealed.txt").exists()).await;
    let receipt = std::fs::read_to_string(deletions.join("done/arrest-sealed.txt.receipt")).unwrap();
    assert!(receipt.contains("\"ids\": 3") && !receipt.contains("A31"), "{receipt}");
    source.stop().await;
    st.stop().await;
}

/// Every record the source's steward has taken account of, over all kinds (every outcome but deletion).
fn seen_all(st: &TestSteward) -> u64 {
    let status = st.steward.status();
    let Some(kinds) = status["record_versions"]["police"].as_object() else { return 0 };
    kinds
        .values()
        .map(|v| ["new", "replaced", "unchanged", "stale"].iter().map(|k| v[*k].as_u64().unwrap_or(0)).sum::<u64>())
        .sum()
}

/// A synthetic program's exports of every kind, sent as agencies re-send
/// them: a first export of 60% of the rows, a rolling window over the last
/// 60% (the middle fifth sent twice), then the whole table again in reverse
/// order with CRLF line ends. The steward ends with one record per agency
/// record, and the catalog's count-based values over what it holds (each
/// record with its true person: linkage is not what is tested here) equal
/// the synthetic truth (`truth.json`), statistic for statistic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_re_exports_leave_the_catalog_values_of_the_truth() {
    use divert::synth::{self, Kind};

    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let st = TestSteward::start(&pki, &tmp.path().join("steward"), "").await;
    let src_dir = tmp.path().join("police");
    let source = TestSource::start(&pki, &src_dir, st.addr, "").await;
    let files = tmp.path().join("exports");
    std::fs::create_dir_all(&files).unwrap();

    let dataset = synth::generate(&synth::Params::defaults().unwrap(), 200, 13);
    // Per kind: the rows (with the true person of each) and the whole export as written.
    let mut kinds = Vec::new();
    for &kind in Kind::ALL {
        let mut csv_bytes = Vec::new();
        let mut record_at_line = BTreeMap::new();
        dataset.write_csv(kind, &mut csv_bytes, |i, line| _ = record_at_line.insert(line, i)).unwrap();
        let table = dataset.table(kind).unwrap();
        let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
        let header = reader.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        if rows.is_empty() {
            continue;
        }
        let full = files.join(format!("{}-full.csv", kind.as_str()));
        std::fs::write(&full, &csv_bytes).unwrap();
        let person_at_line: BTreeMap<u64, u32> = record_at_line
            .iter()
            .map(|(&line, &i)| (line, dataset.events[table.records[i].event as usize].person))
            .collect();
        kinds.push((kind.as_str(), header, rows, full, person_at_line));
    }
    let write = |name: &str, header: &csv::StringRecord, rows: &mut dyn Iterator<Item = &csv::StringRecord>, crlf| {
        let path = files.join(name);
        let terminator = if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') };
        let mut w = csv::WriterBuilder::new().terminator(terminator).from_path(&path).unwrap();
        w.write_record(header).unwrap();
        for r in rows {
            w.write_record(r).unwrap();
        }
        w.flush().unwrap();
        path
    };

    let total: usize = kinds.iter().map(|k| k.2.len()).sum();
    let mut sent = 0u64;
    for stage in 0..3 {
        for (kind, header, rows, _, _) in &kinds {
            let (n, cut_lo, cut_hi) = (rows.len(), rows.len() * 2 / 5, rows.len() * 3 / 5);
            let (path, count) = match stage {
                0 => (write(&format!("{kind}-1.csv"), header, &mut rows[..cut_hi].iter(), false), cut_hi),
                1 => (write(&format!("{kind}-2.csv"), header, &mut rows[cut_lo..].iter(), false), n - cut_lo),
                _ => (write(&format!("{kind}-3.csv"), header, &mut rows.iter().rev(), true), n),
            };
            source.drop_in(&path, &format!("{kind}-{stage}.csv"));
            sent += count as u64;
        }
        wait_for(120, &format!("export round {stage} at the steward"), || seen_all(&st) == sent).await;
    }
    assert_eq!(st.records_held(), total as u64, "one record per agency record");

    // Each held record with its true person, found by its rid in the offline
    // pseudonymization of the whole export under the source's key.
    let keys = src_dir.join("keys");
    let mut person_of_rid = BTreeMap::new();
    for (kind, _, _, full, person_at_line) in &kinds {
        for r in offline_records(tmp.path(), &keys, kind, full) {
            person_of_rid.insert((r.kind.clone(), r.rid.clone()), person_at_line[&r.line]);
        }
    }
    assert_eq!(person_of_rid.len(), total, "every agency record has a rid of its own");
    let mut held = Vec::new();
    for r in st.steward.records() {
        let r = r.unwrap();
        let person = *person_of_rid.get(&(r.kind.clone(), r.rid.clone())).expect("a held record is an agency record");
        held.push((person, r));
    }
    assert_eq!(held.len(), total);
    let pop = divert::query::Population::build(&divert::schema::Schema::default_schema().unwrap(), held);
    crate::query::assert_catalog_equals_truth(&pop, &dataset.truth);
    source.stop().await;
    st.stop().await;
}
