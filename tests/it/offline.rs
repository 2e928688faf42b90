//! The offline tools end to end through the binary: config check, keys, pseudonymize, link.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{divert_in, divert_ok, repo, text};

#[test]
fn every_shipped_config_passes_check() {
    let mut files: Vec<String> = fs::read_dir(repo().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["config", "check"];
    args.extend(files.iter().map(String::as_str));
    let out = divert_ok(repo(), &args);
    assert_eq!(text(&out.stdout).matches(": ok").count(), files.len(), "{}", text(&out.stdout));
}

#[test]
fn config_check_reports_every_problem_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = repo().join("config/schema.toml");
    let text_in = fs::read_to_string(bad).unwrap();
    let broken = text_in
        .lines()
        .map(|l| if l.starts_with("match_weight = ") { "match_weight = 100000" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("parts = [\"state_id\"]", "parts = [\"sex\", \"dob:month\"]")
        .replace("record_id = \"arrest_id\"", "record_id = \"arrest_number\"");
    let path = dir.path().join("schema.toml");
    fs::write(&path, broken).unwrap();
    let out = divert_in(dir.path(), &["config", "check", "schema.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for needle in [
        "schema.toml: linkage.match_weight",
        "(state_id).parts: too little information",
        "schema.toml: kinds.arrest.record_id",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

const ARRESTS: &str = "arrest_id,first_name,LAST_NAME,DOB,Sex,arrest_date,warrant,violent,felony,state_id\n\
A-1,José,Muñoz,3/14/1980,M,2019-03-04,Y,N,N,00123456\n\
A-2,Jose,MUNOZ,1980-03-14,male,2019-05-04 10:22,no,no,yes,\n\
A-3,Hidalgo,Vanessa,1986-07-01,F,2019-05-04,maybe,no,no,\n\
A-4,Vanessa,Hidalgo,07/01/1986,,2019-06-04,no,no,no,\n";

#[test]
fn pseudonymize_then_link_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("arrests.csv"), ARRESTS).unwrap();
    let schema = repo().join("config/schema.toml").display().to_string();

    // Keys: created 0600, status shows only a fingerprint.
    let init = divert_ok(d, &["keys", "init", "--keys", "keys"]);
    assert!(text(&init.stdout).contains("epoch 1"));
    let key_path = d.join("keys/epoch-000001.key");
    assert_eq!(fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    let key_hex: String = fs::read(&key_path).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let status = divert_ok(d, &["keys", "status", "--keys", "keys", "--json"]);
    let status_json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status_json["active_epoch"], 1);
    assert!(!text(&status.stdout).contains(&key_hex[..16]));

    let out = divert_ok(
        d,
        &[
            "pseudonymize",
            "--schema",
            &schema,
            "--keys",
            "keys",
            "--source",
            "police",
            "--kind",
            "arrest",
            "arrests.csv",
        ],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("4 rows read, 3 accepted, 1 quarantined"), "{stderr}");
    // Tokens and rids are keyed hashes in hex: a random run of hex digits can spell
    // "1986" by chance, so look for the secrets in everything else of each record.
    let without_hashes: String = stdout
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object_mut().unwrap();
            let tokens = obj.remove("tokens").unwrap();
            let rid = obj.remove("rid").unwrap();
            assert!(rid.as_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()), "rid is not a hash");
            for t in tokens.as_object().unwrap().values() {
                let (_, hex) = t.as_str().unwrap().split_once(':').unwrap();
                assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "a token is not a hash");
            }
            v.to_string()
        })
        .collect();
    for secret in [
        "José", "Jose", "jose", "Muñoz", "munoz", "MUNOZ", "Hidalgo", "hidalgo", "Vanessa", "1980", "1986", "123456",
        "A-1",
    ] {
        assert!(!without_hashes.contains(secret), "{secret} leaked into the records");
        assert!(!stderr.contains(secret), "{secret} leaked into stderr");
    }
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["line"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 3, 5]);
    assert_eq!(lines[0]["fields"]["age"], 38);
    let quarantine = fs::read_to_string(d.join("arrests.csv.quarantine.csv")).unwrap();
    assert_eq!(quarantine, "line,field,reason,action\n4,warrant,not a yes/no value,row quarantined\n");

    fs::write(d.join("arrests.jsonl"), &out.stdout).unwrap();
    fs::write(
        d.join("truth.csv"),
        "source,kind,line,entity\npolice,arrest,2,P1\npolice,arrest,3,P1\npolice,arrest,4,P2\npolice,arrest,5,P2\n",
    )
    .unwrap();
    let link = divert_ok(
        d,
        &["link", "--schema", &schema, "--truth", "truth.csv", "--persons", "persons.csv", "arrests.jsonl"],
    );
    let link_out = text(&link.stdout);
    // Each record's person: lines 2 and 3 one person, line 5 another; private, as links are.
    let persons = fs::read_to_string(d.join("persons.csv")).unwrap();
    assert_eq!(persons, "source,kind,line,person\npolice,arrest,2,0\npolice,arrest,3,0\npolice,arrest,5,1\n");
    assert_eq!(fs::metadata(d.join("persons.csv")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(link_out.contains("records: 3") && link_out.contains("persons: 2"), "{link_out}");
    let metrics: serde_json::Value = serde_json::from_str(link_out.lines().last().unwrap()).unwrap();
    // Every truth row counts: the quarantined line 4 is a missed pair, not a pair left out.
    assert_eq!(metrics["precision"], 1.0);
    assert_eq!(metrics["recall"], 0.5);
    assert_eq!(metrics["pairs_true"], 2);
    assert_eq!(metrics["truth_rows"], 4);
    assert_eq!(metrics["truth_rows_without_record"], 1);
    assert_eq!(metrics["records_without_token"], 0);
    // Lines 2 and 3 share tokens; line 4 has no record to share them: no weight could do better.
    assert_eq!(metrics["pairs_reachable"], 1);
    assert_eq!(metrics["recall_reachable"], 0.5);
    assert!(text(&link.stderr).contains("divert: schema: "), "{}", text(&link.stderr));
}

#[test]
fn pseudonymize_refuses_bad_files_and_loose_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let schema = repo().join("config/schema.toml").display().to_string();
    divert_ok(d, &["keys", "init", "--keys", "keys"]);
    let run = |file: &str| {
        divert_in(
            d,
            &["pseudonymize", "--schema", &schema, "--keys", "keys", "--source", "jail", "--kind", "booking", file],
        )
    };

    fs::write(d.join("empty.csv"), "").unwrap();
    let out = run("empty.csv");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));

    fs::write(d.join("nocol.csv"), "booking_id,given_name,family_name\nB1,Ann,Lee\n").unwrap();
    let err = text(&run("nocol.csv").stderr);
    assert!(err.contains("booking_date") && !err.contains("column: dob"), "identity columns are optional: {err}");
    assert!(!err.contains("Ann") && !err.contains("Lee"), "{err}");

    fs::write(d.join("quote.csv"), "booking_id,given_name,family_name,dob,booking_date\nB1,\"Ann,Lee,1980-01-01,2019-01-01\nB2,Bo,Lee,1980-01-01,2019-01-01\nB3,Bo,Lee,1980-01-01,2019-01-01\n").unwrap();
    let err = text(&run("quote.csv").stderr);
    assert!(err.contains("unbalanced quote"), "{err}");
    assert!(!err.contains("panicked"));

    fs::write(d.join("binary.csv"), [0xffu8, 0x00, 0xfe, b'\n', 0x80]).unwrap();
    let out = run("binary.csv");
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out.stderr).contains("panicked"));

    fs::set_permissions(d.join("keys/epoch-000001.key"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(
        d.join("ok.csv"),
        "booking_id,given_name,family_name,dob,booking_date\nB1,Ann,Lee,1980-01-01,2019-01-01\n",
    )
    .unwrap();
    let err = text(&run("ok.csv").stderr);
    assert!(err.contains("too open") && err.contains("epoch-000001.key"), "{err}");
}

/// One person recorded five ways: plain; names swapped with a nickname and no sex or id; no
/// birth date but the state id; and a second person once with an unusable birth date.
const HARD_ARRESTS: &str =
    "arrest_id,first_name,last_name,dob,sex,arrest_date,warrant,violent,felony,state_id,alias_name\n\
A-1,William,Smith,1980-03-14,M,2019-03-04,Y,N,N,00123456,x\n\
A-2,Smith,Bill,1980-03-14,,2019-05-04,N,N,N,,x\n\
A-3,Will,Smith,,M,2019-06-04,N,N,N,123456,x\n\
A-4,Ann,Lee,13/45/1990,F,2019-06-04,N,N,N,,x\n\
A-5,Ann,Lee,1990-01-02,F,2019-07-04,N,N,N,,x\n";

#[test]
fn missing_birth_dates_and_swapped_nicknames_link_and_scoring_counts_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("arrests.csv"), HARD_ARRESTS).unwrap();
    divert_ok(d, &["keys", "init", "--keys", "keys"]);
    // No --schema, and no config/ here: the built-in schema, and stderr says so.
    let out = divert_ok(
        d,
        &["pseudonymize", "--keys", "keys", "--source", "police", "--kind", "arrest", "-o", "a.jsonl", "arrests.csv"],
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("divert: schema: the built-in default"), "{stderr}");
    assert!(stderr.contains("5 rows read, 5 accepted, 0 quarantined"), "no row lost for its birth date: {stderr}");
    assert!(stderr.contains("1 values of dob dropped: "), "{stderr}");
    assert!(stderr.contains("column `alias_name` looks like identity"), "{stderr}");
    assert!(stderr.contains("no column for `postal_code`"), "{stderr}");
    assert!(stderr.contains("no row got a token of schemes") && stderr.contains("names_postal_code"), "{stderr}");
    for secret in ["William", "Smith", "Bill", "Ann", "Lee", "1980", "13/45", "123456"] {
        assert!(!stderr.contains(secret), "{secret} leaked into stderr");
    }

    fs::write(
        d.join("truth.csv"),
        "source,kind,line,entity\npolice,arrest,2,P1\npolice,arrest,3,P1\npolice,arrest,4,P1\npolice,arrest,5,P2\npolice,arrest,6,P2\n",
    )
    .unwrap();
    let link = divert_ok(d, &["link", "--truth", "truth.csv", "a.jsonl"]);
    let link_out = text(&link.stdout);
    assert!(text(&link.stderr).contains("the built-in default"), "{}", text(&link.stderr));
    assert!(link_out.contains("records: 5") && link_out.contains("persons: 3"), "{link_out}");
    assert!(link_out.contains("records without any token (persons of their own): 1"), "{link_out}");
    let m: serde_json::Value = serde_json::from_str(link_out.lines().last().unwrap()).unwrap();
    // Lines 2-4 are one person (swapped nickname, missing birth date); line 5 had no token, so its pair is missed.
    assert_eq!(m["precision"], 1.0, "{m}");
    assert_eq!(m["pairs_true"], 4, "{m}");
    assert_eq!(m["recall"], 0.75, "{m}");
    assert_eq!(m["records_without_token"], 1, "{m}");
    assert_eq!(m["truth_rows_without_record"], 0, "{m}");
    // The tokenless line 5 can join nobody: the tokens allow the pairs of lines 2-4, 3 of 4.
    assert_eq!((m["pairs_reachable"].as_u64(), m["recall_reachable"].as_f64()), (Some(3), Some(0.75)), "{m}");
    assert!(link_out.contains("true pairs joined by shared tokens within their entity: 3 of 4"), "{link_out}");
}

#[test]
fn config_check_header_says_what_linkage_will_miss() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("arrests.csv"), HARD_ARRESTS).unwrap();
    let schema = repo().join("config/schema.toml").display().to_string();
    let out = divert_ok(d, &["config", "check", "--header", "arrests.csv", "--kind", "arrest", &schema]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert!(stdout.contains("warning: arrests.csv: column `alias_name` looks like identity"), "{stdout}");
    assert!(
        stdout.contains("schemes `dob_address`, `names_address` get no token: no column for `address`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("scheme `given_address_postal_code` gets no token: no column for `address`, `postal_code`"),
        "{stdout}"
    );
    assert!(!stdout.contains("`names_dob`"), "the dob column feeds names_dob: {stdout}");
}

/// `divert pseudonymize … | head`: the reader of stdout goes away. The
/// command stops with an error that says writing failed (not that the export
/// was refused), gives the cause once, and does not panic.
#[test]
fn pseudonymize_into_a_closed_pipe_says_writing_failed() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Far more output than a pipe buffers (64 KiB), so the write fails.
    let mut csv = String::from(HARD_ARRESTS.lines().next().unwrap());
    csv.push('\n');
    for i in 0..5000 {
        csv.push_str(&format!("A-{i},Ann,Lee,1990-01-02,F,2019-07-04,N,N,N,{},x\n", 100_000 + i));
    }
    fs::write(d.join("arrests.csv"), csv).unwrap();
    divert_ok(d, &["keys", "init", "--keys", "keys"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_divert"))
        .current_dir(d)
        .args(["pseudonymize", "--keys", "keys", "--source", "police", "--kind", "arrest", "arrests.csv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then dropped: the pipe closes
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing the pseudonymized records"), "{stderr}");
    assert!(!stderr.contains("refused") && !stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.matches("Broken pipe").count(), 1, "the cause once: {stderr}");
    assert!(!stderr.contains("Lee") && !stderr.contains("100001"), "{stderr}");
}
