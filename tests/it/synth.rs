//! `divert synth` end to end: the files it writes parse as the schema's record kinds, truth lines point at records, runs are reproducible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: &[(&str, &str)] = &[
    ("police", "referral"),
    ("police", "arrest"),
    ("jail", "booking"),
    ("da", "charge"),
    ("da", "program_status"),
    ("casemgmt", "intake"),
    ("casemgmt", "plan"),
    ("casemgmt", "contact"),
    ("casemgmt", "service"),
    ("casemgmt", "monthly_status"),
    ("treatment", "episode"),
];

fn synth(out: &Path, seed: u64) {
    let output = Command::new(env!("CARGO_BIN_EXE_divert"))
        .args(["synth", "--persons", "200", "--seed", &seed.to_string(), "--out"])
        .arg(out)
        .output()
        .expect("run divert");
    assert!(output.status.success(), "divert synth failed: {}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("200 referred"), "no summary line: {stderr}");
}

/// A field of config/schema.toml as an ingest sees it.
#[derive(Debug, Clone)]
struct Field {
    ty: String,
    required: bool,
    /// Lower-case values and aliases an enum accepts.
    accepts: Vec<String>,
    min: Option<i64>,
    max: Option<i64>,
}

/// For each kind: lower-case header name or alias → (field name, field), identity fields included.
fn schema() -> BTreeMap<String, BTreeMap<String, (String, Field)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schema.toml");
    let schema: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    fn field(name: &str, spec: &toml::Table, identity: bool) -> Vec<(String, (String, Field))> {
        let strings = |key: &str| -> Vec<String> {
            spec.get(key)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str()).map(str::to_lowercase).collect())
                .unwrap_or_default()
        };
        let mut accepts = strings("values");
        if let Some(aliases) = spec.get("aliases").and_then(|v| v.as_table()) {
            accepts.extend(aliases.keys().map(|k| k.to_lowercase()));
        }
        let ty = if identity { "identity" } else { spec.get("type").and_then(|v| v.as_str()).unwrap() };
        let f = Field {
            ty: ty.to_string(),
            required: spec.get("required").and_then(|v| v.as_bool()).unwrap_or(false),
            accepts,
            min: spec.get("min").and_then(|v| v.as_integer()),
            max: spec.get("max").and_then(|v| v.as_integer()),
        };
        let mut names = vec![name.to_lowercase()];
        names.extend(strings("columns"));
        // A whole-name column feeds both name fields; either stands for it here.
        names.extend(strings("full_name"));
        names.into_iter().map(|n| (n, (name.to_string(), f.clone()))).collect()
    }
    let identity: Vec<(String, (String, Field))> = schema["identity"]
        .as_table()
        .unwrap()
        .iter()
        .flat_map(|(name, spec)| field(name, spec.as_table().unwrap(), true))
        .collect();
    schema["kinds"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(kind, spec)| {
            let mut columns: BTreeMap<String, (String, Field)> = identity.iter().cloned().collect();
            for (name, f) in spec["fields"].as_table().unwrap() {
                columns.extend(field(name, f.as_table().unwrap(), false));
            }
            (kind.clone(), columns)
        })
        .collect()
}

/// ISO `YYYY-MM-DD`, or US `M/D/YYYY` with an optional `H:MM` time.
fn is_date(s: &str) -> bool {
    let valid = |y: &str, m: &str, d: &str| {
        let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i32>(), m.parse::<u8>(), d.parse::<u8>()) else { return false };
        let Ok(month) = time::Month::try_from(m) else { return false };
        time::Date::from_calendar_date(y, month, d).is_ok()
    };
    if let [y, m, d] = s.split('-').collect::<Vec<_>>()[..] {
        return y.len() == 4 && m.len() == 2 && d.len() == 2 && valid(y, m, d);
    }
    let (date, time) = s.split_once(' ').unwrap_or((s, ""));
    if !time.is_empty() {
        let Some((h, mi)) = time.split_once(':') else { return false };
        if !(h.parse::<u8>().is_ok_and(|h| h < 24) && mi.len() == 2 && mi.parse::<u8>().is_ok_and(|m| m < 60)) {
            return false;
        }
    }
    match date.split('/').collect::<Vec<_>>()[..] {
        [m, d, y] => y.len() == 4 && valid(y, m, d),
        _ => false,
    }
}

fn check_value(kind: &str, header: &str, field: &Field, value: &str) {
    let ctx = || format!("{kind}.{header} = {value:?}");
    if value.is_empty() {
        assert!(!field.required, "{}: required but empty", ctx());
        return;
    }
    match field.ty.as_str() {
        "date" => assert!(is_date(value), "{}: not a date", ctx()),
        "enum" => assert!(field.accepts.contains(&value.to_lowercase()), "{}: not a value or alias", ctx()),
        "bool" => assert!(
            ["true", "false", "yes", "no", "y", "n", "1", "0"].contains(&value.to_lowercase().as_str()),
            "{}: not a bool",
            ctx()
        ),
        "integer" => {
            let v: i64 = value.parse().unwrap_or_else(|_| panic!("{}: not an integer", ctx()));
            assert!(
                field.min.map_or(true, |m| v >= m) && field.max.map_or(true, |m| v <= m),
                "{}: out of range",
                ctx()
            );
        }
        _ => {}
    }
}

/// Physical line numbers of record starts, counted incrementally through a file read in order.
#[derive(Default)]
struct LineCounter {
    byte: usize,
    line: u64,
}

impl LineCounter {
    /// The 1-based physical line of the record that starts at `byte` (past a leftover line break).
    fn advance(&mut self, bytes: &[u8], byte: usize) -> u64 {
        let start = byte + bytes[byte..].iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        self.line += bytes[self.byte..start].iter().filter(|&&b| b == b'\n').count() as u64;
        self.byte = start;
        self.line + 1
    }
}

fn read_all(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

#[test]
fn synth_writes_schema_conformant_exports_with_their_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    synth(&out, 7);
    let schema = schema();

    // Every record's start line, per (agency, kind), from a CSV reader.
    let mut starts: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (agency, kind) in FILES {
        let path = out.join(agency).join(format!("{kind}.csv"));
        assert!(path.is_file(), "{} missing", path.display());
        let columns = &schema[*kind];
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let headers = reader.headers().unwrap().clone();
        let mut mapped = Vec::new();
        for h in &headers {
            let (name, field) = columns
                .get(&h.to_lowercase())
                .unwrap_or_else(|| panic!("{agency}/{kind}.csv: header {h:?} is no field or alias of {kind}"));
            assert!(!mapped.iter().any(|(n, _): &(String, Field)| n == name), "{kind}: {name} mapped twice");
            mapped.push((name.clone(), field.clone()));
        }
        for (name, field) in columns.values() {
            if field.required {
                assert!(mapped.iter().any(|(n, _)| n == name), "{agency}/{kind}.csv lacks required {name}");
            }
        }
        let bytes = std::fs::read(&path).unwrap();
        let crlf = bytes.windows(2).any(|w| w == b"\r\n");
        let mut lines = Vec::new();
        let mut lines_to = LineCounter::default();
        let mut record = csv::StringRecord::new();
        while reader.read_record(&mut record).unwrap() {
            let position = record.position().unwrap();
            let line = lines_to.advance(&bytes, position.byte() as usize);
            // csv positions a record after a CRLF at the LF it has not consumed yet,
            // so its line() is one short there; elsewhere it is the physical line.
            assert_eq!(position.line() + u64::from(crlf), line, "{agency}/{kind}.csv");
            lines.push(line);
            assert_eq!(record.len(), headers.len());
            for ((name, field), value) in mapped.iter().zip(record.iter()) {
                check_value(kind, name, field, value);
            }
        }
        assert!(!lines.is_empty(), "{agency}/{kind}.csv has no records");
        starts.insert((agency.to_string(), kind.to_string()), lines);
    }

    // Export styles: case management writes a BOM and CRLF; jail dates carry a time.
    let casemgmt = std::fs::read(out.join("casemgmt/intake.csv")).unwrap();
    assert!(casemgmt.starts_with("\u{FEFF}".as_bytes()));
    assert!(casemgmt.windows(2).any(|w| w == b"\r\n"));
    let booking = std::fs::read_to_string(out.join("jail/booking.csv")).unwrap();
    assert!(booking.starts_with("booking_number,last_name,first_name,date_of_birth"));
    let referral = std::fs::read_to_string(out.join("police/referral.csv")).unwrap();
    let spans = starts[&("police".to_string(), "referral".to_string())].windows(2).any(|w| w[1] - w[0] > 1);
    assert!(spans, "no officer notes with an embedded line break");
    assert!(referral.contains("\"\""), "no officer notes with quotes");

    // truth.csv: one row per record, pointing at the line it starts on.
    let mut reader = csv::Reader::from_path(out.join("truth.csv")).unwrap();
    assert_eq!(reader.headers().unwrap(), vec!["source", "kind", "line", "entity"]);
    let mut truth: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for row in reader.records() {
        let row = row.unwrap();
        let entity = &row[3];
        assert!(entity.len() == 7 && entity.starts_with('P') && entity[1..].chars().all(|c| c.is_ascii_digit()));
        truth.entry((row[0].to_string(), row[1].to_string())).or_default().push(row[2].parse().unwrap());
    }
    for (key, lines) in &mut truth {
        lines.sort_unstable();
        let expected = &starts[key];
        let first_difference = lines.iter().zip(expected).position(|(a, b)| a != b);
        assert!(
            lines.len() == expected.len() && first_difference.is_none(),
            "truth lines of {key:?}: {} truth rows, {} records; first difference at record {first_difference:?} (truth {:?}, reader {:?})",
            lines.len(),
            expected.len(),
            first_difference.map(|i| lines[i]),
            first_difference.map(|i| expected[i]),
        );
    }
    assert_eq!(truth.len(), starts.len());

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("truth.json")).unwrap()).unwrap();
    let referred = |arm: &str| json[arm]["funnel"]["referred"].as_u64().unwrap();
    assert_eq!(referred("diversion") + referred("comparison"), 200);
}

#[test]
fn synth_is_reproducible_for_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    synth(&a, 7);
    synth(&b, 7);
    synth(&c, 8);
    let (fa, fb, fc) = (read_all(&a), read_all(&b), read_all(&c));
    assert_eq!(fa.len(), 13, "{:?}", fa.keys());
    assert!(fa == fb, "same seed, different files");
    assert_eq!(fa.keys().collect::<Vec<_>>(), fc.keys().collect::<Vec<_>>());
    assert!(fa.iter().any(|(path, bytes)| fc[path] != *bytes), "different seed, same files");
}
