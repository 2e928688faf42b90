//! The query engine end to end: catalog values against the synthetic truth, contribution bounds, canonical forms, dry runs.

use std::collections::{BTreeMap, HashMap};

use divert::dp::{DpError, Noise, OpenDpNoise, Release};
use divert::ingest::Format;
use divert::keys::EpochKey;
use divert::pseudonymize::{pseudonymize_stream, Pseudonymizer};
use divert::query::catalog::find;
use divert::query::{catalog, execute, plan, Answer, Population, Query};
use divert::record::PseudoRecord;
use divert::schema::{FieldType, Schema};
use divert::synth::{self, Kind, TrueStatistics};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// Hands back the true value: the engine's pre-noise totals, post-processed as an answer would be.
struct Exact;

impl Noise for Exact {
    fn release(&mut self, true_value: i64, sensitivity: i64, epsilon: f64) -> Result<Release, DpError> {
        Ok(Release { value: true_value, sensitivity, epsilon, scale: 1.0, ci95_half_width: 0.0 })
    }
}

/// Records every release's true values and declared sensitivity.
#[derive(Default)]
struct Recorder(Vec<(Vec<i64>, i64)>);

impl Noise for Recorder {
    fn release(&mut self, true_value: i64, sensitivity: i64, epsilon: f64) -> Result<Release, DpError> {
        self.release_all(&[true_value], sensitivity, epsilon).map(|mut v| v.remove(0))
    }

    fn release_all(&mut self, values: &[i64], sensitivity: i64, epsilon: f64) -> Result<Vec<Release>, DpError> {
        self.0.push((values.to_vec(), sensitivity));
        Ok(values
            .iter()
            .map(|&value| Release { value, sensitivity, epsilon, scale: 1.0, ci95_half_width: 0.0 })
            .collect())
    }
}

fn schema() -> Schema {
    Schema::default_schema().unwrap()
}

/// The synthetic program's exports pseudonymized as the agencies would (CSV → ingest → tokens),
/// each record paired with the TRUE person it records: a perfect linkage.
pub(crate) fn linked_synthetic(persons: u32, seed: u64) -> (synth::Dataset, Vec<(u32, PseudoRecord)>) {
    let schema = schema();
    let dataset = synth::generate(&synth::Params::defaults().unwrap(), persons, seed);
    let key = EpochKey::from_bytes(1, &[7u8; 32]).unwrap();
    let tokenizer = divert::token::Tokenizer::new(&schema, &key).unwrap();
    let mut out = Vec::new();
    for &kind in Kind::ALL {
        let table = dataset.table(kind).unwrap();
        let mut csv = Vec::new();
        let mut line_to_record = HashMap::new();
        dataset
            .write_csv(kind, &mut csv, |i, line| {
                line_to_record.insert(line, i);
            })
            .unwrap();
        let k = schema.kind(kind.as_str()).unwrap();
        let mut p = Pseudonymizer::new(&schema, k, kind.agency().as_str(), &tokenizer);
        let mut jsonl = Vec::new();
        let summary = pseudonymize_stream(&mut p, Format::Csv, csv.as_slice(), &mut jsonl, |_| Ok(())).unwrap();
        assert_eq!(summary.quarantined, 0, "{kind:?}: rows quarantined");
        for line in jsonl.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let rec: PseudoRecord = serde_json::from_slice(line).unwrap();
            let i = line_to_record[&rec.line];
            let person = dataset.events[table.records[i].event as usize].person;
            out.push((person, rec));
        }
    }
    (dataset, out)
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Pre-noise values of an analysis.
fn exact(pop: &Population, name: &str, p: &[(&str, &str)]) -> Answer {
    let q = find(name).unwrap().instantiate(&params(p)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let plan = plan(&q, &schema()).unwrap_or_else(|e| panic!("{name}: {e}"));
    execute(&plan, pop, &mut Exact).unwrap()
}

fn get(a: &Answer, arm: &str, statistic: &str, category: Option<&str>) -> f64 {
    a.values
        .iter()
        .find(|c| {
            c.group.get("arm").map(String::as_str) == Some(arm)
                && c.statistic == statistic
                && c.category.as_deref() == category
        })
        .unwrap_or_else(|| panic!("no {arm} {statistic} {category:?} in {:?}", a.values))
        .value
}

/// A share or mean of persons that may have none: then the truth is `None` and the noisy-count of persons 0.
#[track_caller]
fn near_or_none(a: &Answer, arm: &str, statistic: &str, category: Option<&str>, want: Option<f64>, what: &str) {
    match want {
        Some(_) => near(get(a, arm, statistic, category), want, what),
        None => assert_eq!(get(a, arm, "persons", None), 0.0, "{what}: truth has no persons"),
    }
}

#[track_caller]
fn near(got: f64, want: Option<f64>, what: &str) {
    let want = want.unwrap_or_else(|| panic!("{what}: truth has no value"));
    assert!((got - want).abs() < 1e-9, "{what}: engine {got}, truth {want}");
}

#[test]
fn catalog_pre_noise_values_equal_the_synthetic_truth() {
    let (dataset, records) = linked_synthetic(2000, 7);
    let pop = Population::build(&schema(), records);
    assert_catalog_equals_truth(&pop, &dataset.truth);
}

/// Every statistic of `truth.json` against the catalog's pre-noise value over `pop`.
pub(crate) fn assert_catalog_equals_truth(pop: &Population, truth: &TrueStatistics) {
    assert_eq!(pop.len() as u64, truth.diversion.funnel.referred + truth.comparison.funnel.referred);

    for (arm, t) in [("diversion", &truth.diversion), ("comparison", &truth.comparison)] {
        let f = exact(pop, "referral_funnel", &[]);
        let count = |stage| get(&f, arm, "count", Some(stage));
        assert_eq!(get(&f, arm, "persons", None), t.funnel.referred as f64, "{arm} referred");
        assert_eq!(count("ineligible"), t.funnel.ineligible as f64, "{arm} ineligible");
        assert_eq!(count("declined"), t.funnel.declined as f64, "{arm} declined");
        assert_eq!(count("no_timely_intake"), t.funnel.no_timely_intake as f64, "{arm} no timely intake");
        assert_eq!(count("enrolled"), t.funnel.enrolled as f64, "{arm} enrolled");

        let wide = [("lower", "0"), ("upper", "100")];
        let mean_arrests = |from: &str, to: &str| {
            get(&exact(pop, "arrests_per_person", &[("from", from), ("to", to), wide[0], wide[1]]), arm, "mean", None)
        };
        near(mean_arrests("-182", "-1"), t.arrests.before, "arrests before");
        near(mean_arrests("0", "181"), t.arrests.after_6m, "arrests after 6m");
        near(mean_arrests("182", "364"), t.arrests.after_6_12m, "arrests 6-12m");
        let d = exact(pop, "arrests_before_after", &[("lower", "-100"), ("upper", "100")]);
        near(get(&d, arm, "mean_difference", None), t.arrests.difference_6m, "arrest difference");

        near(get(&exact(pop, "any_arrest", &[]), arm, "share", None), t.any_arrest.share_6m, "any arrest");
        let nw = exact(pop, "any_arrest", &[("non_warrant", "true")]);
        near(get(&nw, arm, "share", None), t.any_arrest.share_non_warrant_6m, "any non-warrant arrest");
        near(get(&exact(pop, "felony_charge", &[]), arm, "share", None), t.charges.share_felony_12m, "felony");
        near(get(&exact(pop, "violent_charge", &[]), arm, "share", None), t.charges.share_violent_12m, "violent");

        for (day, want) in [("90", t.survival.day_90), ("180", t.survival.day_180), ("365", t.survival.day_365)] {
            near(get(&exact(pop, "rearrest_free", &[("day", day)]), arm, "share", None), want, "survival");
        }

        let jail = |name: &str, period: &str, upper: &str| {
            get(&exact(pop, name, &[("period", period), ("upper", upper)]), arm, "rate", None)
        };
        near(
            jail("jail_bookings_per_person_year", "before", "100"),
            t.jail.bookings_per_person_year_before,
            "bookings before",
        );
        near(
            jail("jail_bookings_per_person_year", "after", "100"),
            t.jail.bookings_per_person_year_after,
            "bookings after",
        );
        near(
            jail("jail_days_per_person_year", "before", "365"),
            t.jail.days_per_person_year_before,
            "jail days before",
        );
        near(jail("jail_days_per_person_year", "after", "365"), t.jail.days_per_person_year_after, "jail days after");
        let py = exact(pop, "jail_bookings_per_person_year", &[]);
        assert_eq!(get(&py, arm, "person_days", None), t.funnel.referred as f64 * 365.0, "exposure");

        for s in &t.status {
            let m = s.month.to_string();
            let share = |name: &str, extra: &[(&str, &str)]| {
                let mut p = vec![("month", m.as_str())];
                p.extend_from_slice(extra);
                exact(pop, name, &p)
            };
            let permanent = share("housing_status", &[]);
            near_or_none(&permanent, arm, "share", None, s.permanent, &format!("permanent at month {m}"));
            assert_eq!(get(&permanent, arm, "persons", None), s.persons as f64, "persons with status at month {m}");
            let sheltered = share("housing_status", &[("housing", "sheltered")]);
            near_or_none(&sheltered, arm, "share", None, s.sheltered, &format!("sheltered at month {m}"));
            let employed = share("employment_status", &[]);
            near_or_none(&employed, arm, "share", None, s.employed, &format!("employed at month {m}"));
            let income = share("income_benefits_status", &[]);
            near_or_none(&income, arm, "share", None, s.income_benefits, &format!("income at month {m}"));
            let hist = share("housing_at_month", &[]);
            near_or_none(&hist, arm, "share", Some("permanent"), s.permanent, &format!("histogram at month {m}"));
        }

        let long = [("follow_up_days", "3650"), ("upper", "3651")];
        let intake = exact(pop, "days_to_intake", &long);
        near_or_none(&intake, arm, "mean", None, t.timing.mean_days_to_intake, "days to intake");
        assert_eq!(get(&intake, arm, "persons", None), t.timing.persons_with_intake as f64, "persons with intake");
        let within = exact(pop, "intake_within_days", &[("follow_up_days", "3650")]);
        near_or_none(&within, arm, "share", None, t.timing.share_intake_within_7_days, "intake within 7 days");
        let plan_days = exact(pop, "days_to_plan", &long);
        near_or_none(&plan_days, arm, "mean", None, t.timing.mean_days_to_plan, "days to plan");
        assert_eq!(get(&plan_days, arm, "persons", None), t.timing.persons_with_plan as f64, "persons with plan");
    }
}

/// A record of `kind` dated `date` with random valid field values.
fn random_record(schema: &Schema, kind: &str, date: i32, rng: &mut impl Rng) -> PseudoRecord {
    let k = schema.kind(kind).unwrap();
    let day = |d: i32| {
        let (y, m, dd) = divert::days::civil_from_days(d);
        format!("{y:04}-{m:02}-{dd:02}")
    };
    let mut fields = BTreeMap::new();
    for (i, f) in k.fields.iter().enumerate() {
        let v = if i == k.event_date {
            serde_json::json!(day(date))
        } else {
            match &f.ty {
                FieldType::Date => serde_json::json!(day(date + rng.gen_range(0..400))),
                FieldType::Enum(e) => serde_json::json!(e.values[rng.gen_range(0..e.values.len())]),
                FieldType::Bool => serde_json::json!(rng.gen_bool(0.5)),
                FieldType::Integer { min, max } => {
                    serde_json::json!(rng.gen_range(min.unwrap_or(0)..=max.unwrap_or(1000)))
                }
                FieldType::String { .. } => continue,
            }
        };
        fields.insert(f.name.clone(), v);
    }
    fields.insert("age".into(), serde_json::json!(rng.gen_range(18..70)));
    fields.insert("sex".into(), serde_json::json!(["f", "m", "x"][rng.gen_range(0..3)]));
    PseudoRecord {
        source: "test".into(),
        kind: kind.into(),
        line: 1,
        epoch: 1,
        rid: "0".repeat(32),
        seq: 0,
        deleted: false,
        tokens: BTreeMap::new(),
        fields,
    }
}

/// One person with a referral and 1,000 records of the kinds the catalog reads (and a few others).
fn heavy_person(schema: &Schema, seed: u64) -> Vec<PseudoRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let day0 = 17_000 + rng.gen_range(0..1000);
    let mut records = vec![random_record(schema, "referral", day0, &mut rng)];
    let kinds = ["arrest", "booking", "contact", "charge", "intake", "plan", "monthly_status", "service", "episode"];
    // Concentrated near day 0 (every window the catalog uses), some everywhere, some on month starts.
    for i in 0..999 {
        let kind = kinds[i % kinds.len()];
        let offset = match i % 3 {
            0 => rng.gen_range(-10..20),
            1 => rng.gen_range(-800..800),
            _ => {
                let (y, m, _) = divert::days::civil_from_days(day0 + rng.gen_range(0..600));
                divert::days::days_from_civil(y, m, 1) - day0
            }
        };
        records.push(random_record(schema, kind, day0 + offset, &mut rng));
    }
    records
}

/// Every catalog analysis at its defaults, grouped three ways.
fn all_plans(schema: &Schema) -> Vec<(String, divert::query::Plan)> {
    let mut out = Vec::new();
    for a in catalog() {
        for group_by in ["arm", "arm,sex,age_band", "none"] {
            let q = a.instantiate(&params(&[("group_by", group_by)])).unwrap();
            out.push((format!("{} by {group_by}", a.name), plan(&q, schema).unwrap()));
        }
    }
    out
}

fn totals(p: &divert::query::Plan, pop: &Population) -> Vec<(Vec<i64>, i64)> {
    let mut r = Recorder::default();
    execute(p, pop, &mut r).unwrap();
    r.0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Adding one person, however many records they have, changes each release's
    /// true totals by at most its declared L1 sensitivity (summed over all its values).
    #[test]
    fn one_person_with_1000_records_moves_each_release_by_at_most_its_sensitivity(seed in any::<u64>()) {
        let schema = schema();
        let base: Vec<(u32, PseudoRecord)> = BASE.with(|b| b.clone());
        let heavy = heavy_person(&schema, seed);
        prop_assert_eq!(heavy.len(), 1000);
        let without = Population::build(&schema, base.clone());
        let mut with_records = base;
        with_records.extend(heavy.into_iter().map(|r| (u32::MAX, r)));
        let with = Population::build(&schema, with_records);
        prop_assert_eq!(with.len(), without.len() + 1);
        for (name, p) in all_plans(&schema) {
            let (a, b) = (totals(&p, &without), totals(&p, &with));
            prop_assert_eq!(a.len(), p.releases().len());
            for ((x, sens), (y, _)) in a.iter().zip(&b) {
                let l1: i64 = x.iter().zip(y).map(|(u, v)| (u - v).abs()).sum();
                prop_assert!(l1 <= *sens, "{}: one person moved a release by {} > sensitivity {}", name, l1, sens);
            }
        }
    }
}

thread_local! {
    static BASE: Vec<(u32, PseudoRecord)> = linked_synthetic(150, 3).1;
}

#[test]
fn canonical_form_of_catalog_templates() {
    for a in catalog() {
        let q = &a.template;
        // Keys in another order, and defaults left out, mean the same query.
        let text = serde_json::to_string(q).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let reordered = reverse_keys(&value);
        let again = Query::parse(&serde_json::to_string(&reordered).unwrap()).unwrap();
        assert_eq!(q.canonical(), again.canonical(), "{}", a.name);
        let mut sparse = value.clone();
        let obj = sparse.as_object_mut().unwrap();
        obj.remove("anchor");
        let kind_default = q.bounds_rule().unwrap().map(|r| r.default);
        if q.bounds.is_none() || q.bounds == kind_default {
            obj.remove("bounds");
        }
        let sparse = Query::parse(&sparse.to_string()).unwrap();
        assert_eq!(q.canonical(), sparse.canonical(), "{}", a.name);
        let other = Query { epsilon: q.epsilon / 2.0, ..q.clone() };
        assert_ne!(q.canonical(), other.canonical(), "{}: epsilon is part of the form", a.name);
        assert_ne!(q.hash(), other.hash());
    }
}

fn reverse_keys(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            // serde_json's map may sort keys; build the text by hand to be sure of the order.
            let mut parts: Vec<String> =
                m.iter().map(|(k, x)| format!("{}:{}", serde_json::json!(k), reverse_keys(x))).collect();
            parts.reverse();
            serde_json::from_str::<serde_json::Value>(&format!("{{{}}}", parts.join(","))).unwrap()
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(reverse_keys).collect()),
        other => other.clone(),
    }
}

#[test]
fn dry_run_intervals_match_the_mechanism_and_answers_carry_only_noisy_values() {
    let schema = schema();
    let pop = Population::build(&schema, BASE.with(|b| b.clone()));
    let mut noise = OpenDpNoise::new();
    for (name, p) in all_plans(&schema).into_iter().step_by(3) {
        let dry = p.dry_run();
        assert_eq!(dry.epsilon, p.epsilon());
        assert!(dry.releases.iter().map(|r| r.epsilon).sum::<f64>() <= p.epsilon(), "{name}");
        let answer = execute(&p, &pop, &mut noise).unwrap();
        assert_eq!(answer.releases, dry.releases, "{name}");
        assert_eq!(answer.epsilon_spent, p.epsilon());
        for cell in &answer.values {
            assert!(cell.ci95.0 <= cell.value && cell.value <= cell.ci95.1, "{name}: {cell:?}");
            assert!(cell.epsilon > 0.0 && cell.epsilon <= answer.epsilon_spent, "{name}: {cell:?}");
            for n in &cell.noisy {
                let r = dry.releases.iter().find(|r| r.name == n.release).unwrap();
                assert_eq!((n.noise_scale, n.ci95_half_width), (r.noise_scale, r.ci95_half_width), "{name}");
            }
        }
        let text = serde_json::to_string(&answer).unwrap();
        for forbidden in ["\"tokens\"", "\"rid\"", "\"person\"", "P000"] {
            assert!(!text.contains(forbidden), "{name}: {forbidden} in {text}");
        }
    }
}
