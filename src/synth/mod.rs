//! Synthetic diversion-program data: persons, events, agency exports with recording errors, and the truth.
//!
//! `generate` is pure: from parameters, a person count and a seed it builds
//! the persons, their true events, each agency's records (identity as that
//! agency would have written it) and the true statistics. `write_dataset`
//! writes it out: one CSV per agency and kind, `truth.csv` (which person
//! each record is) and `truth.json` (the statistics).
//!
//! Determinism: every random draw comes from a ChaCha8 stream keyed by the
//! seed and by the person (or record) it is for, and nothing iterates a hash
//! map, so one seed gives byte-identical files, and a person's events do not
//! depend on how many other persons there are.
//!
//! Code map: `params` (config/synth.toml), `model` (persons, true events),
//! `names` (name lists, nicknames, typos), `recording` (per-record identity
//! differences, free text), `export` (agency styles, CSV), `truth`
//! (statistics), `dates` and `dist` (calendar and random draws).

pub mod dates;
pub mod dist;
pub mod export;
pub mod model;
pub mod names;
pub mod params;
pub mod places;
pub mod recording;
pub mod truth;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub use export::{ExportError, Record, Table};
pub use model::{Agency, Event, Kind, Person, What};
pub use params::{Params, ParamsError};
pub use truth::{true_statistics, TrueStatistics};

/// Why synthetic data could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Export { path: PathBuf, source: ExportError },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

/// A generated program: the truth and every agency's records.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub params: Params,
    pub seed: u64,
    /// Referred persons: `persons[..referred]`; the rest are background persons.
    pub referred: u32,
    pub persons: Vec<Person>,
    /// True events, grouped by person.
    pub events: Vec<Event>,
    /// One table per kind, in `Kind::ALL` order.
    pub tables: Vec<Table>,
    pub truth: TrueStatistics,
}

/// Where a long run is.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Persons simulated so far, reported at every tenth.
    Generated { done: u32, total: u32 },
    /// One file written.
    Wrote { path: PathBuf, records: u64 },
}

/// What `write_dataset` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub out: PathBuf,
    pub referred: u32,
    pub background: u32,
    /// Records per agency, in `Agency::ALL` order.
    pub records: Vec<(Agency, u64)>,
}

impl Dataset {
    /// The table of one kind.
    pub fn table(&self, kind: Kind) -> Option<&Table> {
        self.tables.get(kind.index()).filter(|t| t.kind == kind)
    }

    /// Whether an agency's exports carry a state id column (its `recording.<agency>.state_id` rate is above 0).
    pub fn has_state_id(&self, agency: Agency) -> bool {
        self.params.recording.of(agency).state_id > 0.0
    }

    /// The header of a kind's export.
    pub fn header(&self, kind: Kind) -> Vec<&'static str> {
        export::header(kind, self.has_state_id(kind.agency()))
    }

    /// Write one kind's export as CSV to `out` (a file, or a `Vec<u8>` to keep it in memory).
    /// `on_record(i, line)` is told the 1-based line where record `i` of the table starts.
    pub fn write_csv<W: Write>(
        &self,
        kind: Kind,
        out: W,
        on_record: impl FnMut(usize, u64),
    ) -> Result<(), ExportError> {
        let empty = Table { kind, records: Vec::new() };
        let table = self.table(kind).unwrap_or(&empty);
        export::write_table(table, &self.events, self.has_state_id(kind.agency()), out, on_record)
    }

    /// Number of records of all kinds.
    pub fn record_count(&self) -> usize {
        self.tables.iter().map(|t| t.records.len()).sum()
    }
}

/// Generate a program with `persons` referred persons (plus background persons). Pure.
pub fn generate(params: &Params, persons: u32, seed: u64) -> Dataset {
    generate_with_progress(params, persons, seed, &mut |_| {})
}

/// `generate`, telling `progress` at every tenth of the persons simulated.
pub fn generate_with_progress(params: &Params, persons: u32, seed: u64, progress: &mut dyn FnMut(Progress)) -> Dataset {
    /// Stream domains: one family of streams per use, so adding a draw to one never shifts another.
    const PERSONS: u64 = 1;
    const RECORDS: u64 = 2;
    // 3: residences (model::RESIDENCES).
    const RECORD_PLACES: u64 = 4;

    let world = model::World::new(params, seed);
    let background = (f64::from(persons) * params.program.background_per_referred.max(0.0)).round() as u32;
    let total = persons.saturating_add(background);
    let mut people = Vec::with_capacity(total as usize);
    let mut events = Vec::new();
    let mut tables: Vec<Table> = Kind::ALL.iter().map(|&kind| Table { kind, records: Vec::new() }).collect();
    let mut next_tenth: u64 = 1;
    for index in 0..total {
        let first = events.len();
        let mut rng = dist::stream(seed, PERSONS, u64::from(index));
        let person = world.person(&mut rng, index, index < persons, &mut events);
        // The person's records, drawn from their own stream in event order.
        let mut rng = dist::stream(seed, RECORDS, u64::from(index));
        // Places from a stream of their own: adding them left the other draws as they were.
        let mut place_rng = dist::stream(seed, RECORD_PLACES, u64::from(index));
        for (offset, event) in events[first..].iter().enumerate() {
            let kind = event.what.kind();
            let rates = params.recording.of(kind.agency());
            let mut identity = recording::record(&mut rng, &person, rates);
            identity.place = places::record(&mut place_rng, &world.places, person.residence, rates);
            let second = dist::chance(&mut place_rng, rates.local_id_duplicate);
            identity.local_id = Some(world.local_id(index, kind.agency(), second));
            let text = recording::free_text(
                &mut rng,
                &event.what,
                params.referral.notes_share,
                params.referral.messy_notes_share,
            );
            let clock = rand::Rng::gen_range(&mut rng, 0..24 * 60);
            let record = Record { event: (first + offset) as u32, seq: 0, clock, identity, text };
            tables[kind.index()].records.push(record);
        }
        people.push(person);
        while total > 0 && u64::from(index + 1) * 10 >= next_tenth * u64::from(total) && next_tenth <= 10 {
            progress(Progress::Generated { done: index + 1, total });
            next_tenth += 1;
        }
    }

    // Export order: by date, then person, then event; record numbers restart each year.
    for table in &mut tables {
        // Cached keys: looking events up inside the comparisons would miss the cache millions of times.
        table.records.sort_by_cached_key(|r| {
            let e = &events[r.event as usize];
            (e.date, e.person, r.event)
        });
        let mut year = i32::MIN;
        let mut seq = 0;
        for record in &mut table.records {
            let y = dates::civil_from_days(events[record.event as usize].date).0;
            if y != year {
                (year, seq) = (y, 0);
            }
            seq += 1;
            record.seq = seq;
        }
    }

    let truth = true_statistics(&events);
    Dataset { params: params.clone(), seed, referred: persons, persons: people, events, tables, truth }
}

/// Write `dataset` under `out`: `<agency>/<kind>.csv`, `truth.csv`, `truth.json`. Creates directories as needed.
pub fn write_dataset(dataset: &Dataset, out: &Path, progress: &mut dyn FnMut(Progress)) -> Result<Summary, SynthError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    fs::create_dir_all(out).map_err(io_err(out))?;

    let truth_path = out.join("truth.csv");
    let mut truth = csv::Writer::from_writer(BufWriter::new(File::create(&truth_path).map_err(io_err(&truth_path))?));
    let csv_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: csv::Error| SynthError::Export { path, source: ExportError::Csv(e) }
    };
    truth.write_record(["source", "kind", "line", "entity"]).map_err(csv_err(&truth_path))?;

    let mut records = Vec::new();
    for &agency in Agency::ALL {
        let dir = out.join(agency.as_str());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut count = 0u64;
        for table in dataset.tables.iter().filter(|t| t.kind.agency() == agency) {
            let path = dir.join(format!("{}.csv", table.kind.as_str()));
            let mut file = BufWriter::new(File::create(&path).map_err(io_err(&path))?);
            let mut truth_error = None;
            let mut line_buf = String::new();
            let write = dataset.write_csv(table.kind, &mut file, |i, line| {
                if truth_error.is_some() {
                    return;
                }
                let Some(event) = table.records.get(i).and_then(|r| dataset.events.get(r.event as usize)) else {
                    return;
                };
                line_buf.clear();
                use std::fmt::Write as _;
                let _ = write!(line_buf, "{line}");
                let entity = Person::entity_id(event.person);
                if let Err(e) = truth.write_record([agency.as_str(), table.kind.as_str(), &line_buf, &entity]) {
                    truth_error = Some(e);
                }
            });
            write.map_err(|source| SynthError::Export { path: path.clone(), source })?;
            if let Some(e) = truth_error {
                return Err(csv_err(&truth_path)(e));
            }
            file.flush().map_err(io_err(&path))?;
            count += table.records.len() as u64;
            progress(Progress::Wrote { path, records: table.records.len() as u64 });
        }
        records.push((agency, count));
    }
    truth.flush().map_err(io_err(&truth_path))?;
    progress(Progress::Wrote { path: truth_path, records: dataset.record_count() as u64 });

    let json_path = out.join("truth.json");
    let mut json = serde_json::to_vec_pretty(&dataset.truth)
        .map_err(|source| SynthError::Json { path: json_path.clone(), source })?;
    json.push(b'\n');
    fs::write(&json_path, json).map_err(io_err(&json_path))?;

    Ok(Summary {
        out: out.to_path_buf(),
        referred: dataset.referred,
        background: dataset.persons.len() as u32 - dataset.referred,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Params {
        Params::defaults().unwrap()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let p = defaults();
        let bytes = |seed| {
            let d = generate(&p, 150, seed);
            let mut all = Vec::new();
            for &kind in Kind::ALL {
                d.write_csv(kind, &mut all, |_, _| {}).unwrap();
            }
            all.extend(serde_json::to_vec(&d.truth).unwrap());
            all
        };
        assert_eq!(bytes(5), bytes(5));
        assert_ne!(bytes(5), bytes(6));
    }

    #[test]
    fn a_person_does_not_depend_on_how_many_others_there_are() {
        let p = defaults();
        let small = generate(&p, 20, 3);
        let large = generate(&p, 200, 3);
        assert_eq!(small.persons[..20], large.persons[..20]);
    }

    #[test]
    fn every_kind_is_generated_and_records_point_at_their_kind() {
        let d = generate(&defaults(), 300, 1);
        for table in &d.tables {
            assert!(!table.records.is_empty(), "{:?} empty", table.kind);
            for r in &table.records {
                assert_eq!(d.events[r.event as usize].what.kind(), table.kind);
            }
        }
        assert_eq!(d.record_count(), d.events.len());
    }

    #[test]
    fn lines_follow_embedded_line_breaks() {
        let d = generate(&defaults(), 300, 2);
        let mut bytes = Vec::new();
        let mut lines = Vec::new();
        d.write_csv(Kind::Referral, &mut bytes, |_, line| lines.push(line)).unwrap();
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let mut record = csv::StringRecord::new();
        let mut i = 0;
        while reader.read_record(&mut record).unwrap() {
            assert_eq!(record.position().unwrap().line(), lines[i]);
            i += 1;
        }
        assert_eq!(i, lines.len());
        assert!(lines.windows(2).any(|w| w[1] - w[0] > 1), "no notes with a line break");
    }

    #[test]
    fn calibration_with_20k_persons() {
        let p = defaults();
        let d = generate(&p, 20_000, 11);
        let f = &d.truth.diversion.funnel;
        let n = f.referred as f64;
        let near = |x: u64, share: f64, what: &str| {
            let got = x as f64 / n;
            // Four binomial standard errors.
            let tol = 4.0 * (share * (1.0 - share) / n).sqrt();
            assert!((got - share).abs() < tol, "{what}: {got} vs {share}");
        };
        near(f.ineligible, p.referral.ineligible_share, "ineligible");
        near(f.declined, p.referral.declined_share, "declined");
        near(f.no_timely_intake, p.referral.no_timely_intake_share, "no timely intake");
        let referred = &d.persons[..d.referred as usize];
        let female = referred.iter().filter(|x| x.sex == model::Sex::Female).count() as f64 / referred.len() as f64;
        assert!((female - p.demographics.female_share).abs() < 0.015, "female {female}");
        let arms = d.truth.diversion.funnel.referred as f64 / f64::from(d.referred);
        assert!((arms - p.program.diversion_share).abs() < 0.015, "diversion share {arms}");

        // Seattle's 60% lower odds of any arrest in the 6 months after referral.
        let odds = |s: Option<f64>| s.map(|s| s / (1.0 - s)).unwrap();
        let or = odds(d.truth.diversion.any_arrest.share_6m) / odds(d.truth.comparison.any_arrest.share_6m);
        assert!((or - p.arrests.diversion_odds_ratio_6m).abs() < 0.06, "odds ratio {or}");
        // Santa Fe's 40% permanently housed at intake; Seattle's effect at month 12.
        let status = &d.truth.diversion.status;
        assert!((status[0].permanent.unwrap() - 0.40).abs() < 0.02);
        assert!(status[2].permanent.unwrap() > 0.5, "{:?}", status[2]);
    }
}
