//! Query latency: every standard analysis of the catalog over a population of about 100k persons and 1M events.
//!
//! `cargo bench --bench query` (optionally `-- PERSONS RUNS`, default 100000 referred persons, 25 runs).
//! Run by `cargo test --benches` (no `--bench` argument) it is a smoke run at a small size.
//!
//! `cargo bench --bench query -- evaluation [PERSONS] [SEEDS]` (default 300 persons, seeds 1..=50)
//! measures the standard evaluation (`config/evaluation.toml`) at a real
//! program's size instead: per seed, every step planned and released with
//! the real opendp mechanism over the perfectly linked synthetic program, the
//! headline's 95% half-widths, and how many true values (synthetic truth, and
//! the pre-noise values) fall inside their intervals; then the budget split
//! under zero-concentrated DP (discrete Gaussian, ρ converted to (ε, δ) by
//! opendp) against the pure-ε discrete Laplace one, release by release.
//! Plain `std::time`, single-threaded. The population is built from the
//! synthetic program's true events turned directly into pseudonymized
//! records (no tokens: linkage is not measured here), each under its true
//! person. A run is `plan` + `execute` with the real opendp mechanism.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use divert::dp::OpenDpNoise;
use divert::query::engine::{execute_with_census, DID};
use divert::query::evaluation::{self, PlannedEvaluation, PERSONS};
use divert::query::{catalog, execute, plan, Population};
use divert::record::PseudoRecord;
use divert::report::{self, ReportRow};
use divert::schema::Schema;
use divert::synth::{self, Event, Params, Person, What};
use serde_json::{json, Value};

fn date(d: i32) -> Value {
    let (y, m, day) = divert::days::civil_from_days(d);
    json!(format!("{y:04}-{m:02}-{day:02}"))
}

/// The pseudonymized record of a true event.
fn record(e: &Event, p: &Person) -> PseudoRecord {
    let d = date(e.date);
    let opt = |x: Option<i32>| x.map_or(Value::Null, date);
    let (kind, fields): (&str, Value) = match &e.what {
        What::Referral { arm, referral_type, offense, screening, race } => (
            "referral",
            json!({"referral_date": d, "arm": arm.as_str(), "referral_type": referral_type.as_str(),
                   "offense_category": offense.as_str(), "screening": screening.map(|s| s.as_str()),
                   "race_ethnicity": race.as_str()}),
        ),
        What::Arrest { warrant, violent, felony } => {
            ("arrest", json!({"arrest_date": d, "warrant": warrant, "violent": violent, "felony": felony}))
        }
        What::Booking { release } => ("booking", json!({"booking_date": d, "release_date": opt(*release)})),
        What::Charge { level, violent, disposition } => (
            "charge",
            json!({"filing_date": d, "level": level.as_str(), "violent": violent, "disposition": disposition.as_str()}),
        ),
        What::ProgramStatus { status } => ("program_status", json!({"status_date": d, "status": status.as_str()})),
        What::Intake { housing, employment, income_benefits } => (
            "intake",
            json!({"intake_date": d, "housing": housing.as_str(), "employment": employment.as_str(),
                   "income_benefits": income_benefits}),
        ),
        What::Plan => ("plan", json!({"plan_date": d})),
        What::Contact { minutes } => ("contact", json!({"contact_date": d, "minutes": minutes})),
        What::Service { service } => ("service", json!({"service_date": d, "service_type": service.as_str()})),
        What::MonthlyStatus { housing, employment, income_benefits } => (
            "monthly_status",
            json!({"month": d, "housing": housing.as_str(), "employment": employment.as_str(),
                   "income_benefits": income_benefits}),
        ),
        What::Episode { modality, discharge } => {
            ("episode", json!({"admit_date": d, "modality": modality.as_str(), "discharge_date": opt(*discharge)}))
        }
    };
    let mut fields: BTreeMap<String, Value> = serde_json::from_value(fields).expect("fields");
    fields.insert("age".into(), json!((e.date - p.dob) * 4 / 1461));
    fields.insert("sex".into(), json!(p.sex.as_str().to_lowercase()));
    PseudoRecord {
        source: "bench".into(),
        kind: kind.into(),
        line: 0,
        epoch: 1,
        rid: String::new(),
        seq: 0,
        deleted: false,
        tokens: BTreeMap::new(),
        fields,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("evaluation") {
        let mut args = std::env::args().skip(2).filter_map(|a| a.parse::<u32>().ok());
        let persons = args.next().unwrap_or(300);
        let seeds = args.next().unwrap_or(50).max(1);
        evaluation(persons, seeds);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mut args = std::env::args().skip(1).filter_map(|a| a.parse::<u32>().ok());
    let persons = args.next().unwrap_or(if smoke { 1_000 } else { 100_000 });
    let runs = args.next().unwrap_or(if smoke { 1 } else { 25 }).max(1) as usize;
    if smoke {
        println!("smoke run (`cargo test --benches`, no `--bench`): it checks that the bench runs; its figures and goal lines are not measurements");
    }
    let schema = Schema::default_schema().expect("built-in schema");

    eprintln!("generating a synthetic program with {persons} referred persons ...");
    let dataset = synth::generate(&Params::defaults().expect("params"), persons, 1);
    // Referred persons' events only: background persons have no referral and are not in any cohort.
    let t = Instant::now();
    let records: Vec<(u32, PseudoRecord)> = dataset
        .events
        .iter()
        .filter(|e| e.person < dataset.referred)
        .map(|e| (e.person, record(e, &dataset.persons[e.person as usize])))
        .collect();
    let n_records = records.len();
    let convert = t.elapsed();
    let t = Instant::now();
    let pop = Population::build(&schema, records);
    let build = t.elapsed();
    println!(
        "population: {} persons, {} events ({} records; converted in {:.0} ms, built in {:.0} ms)",
        pop.len(),
        pop.event_count(),
        n_records,
        ms(convert),
        ms(build)
    );

    let mut noise = OpenDpNoise::new();
    for group_by in ["arm", "arm,sex,age_band,race_ethnicity"] {
        println!("\ngroup_by {group_by}");
        println!("{:<32} {:>10} {:>10} {:>8}", "analysis", "median ms", "p95 ms", "values");
        let mut medians = Vec::new();
        for a in catalog() {
            let params = BTreeMap::from([("group_by".to_string(), group_by.to_string())]);
            let query = a.instantiate(&params).expect("instantiate");
            let mut times = Vec::with_capacity(runs);
            let mut values = 0;
            for _ in 0..runs {
                let t = Instant::now();
                let p = plan(&query, &schema).expect("plan");
                let answer = execute(&p, &pop, &mut noise).expect("execute");
                times.push(t.elapsed());
                values = answer.values.len();
                std::hint::black_box(answer);
            }
            times.sort();
            let median = times[times.len() / 2];
            let p95 = times[((times.len() * 95).div_ceil(100)).saturating_sub(1).min(times.len() - 1)];
            println!("{:<32} {:>10.2} {:>10.2} {:>8}", a.name, ms(median), ms(p95), values);
            medians.push(median);
        }
        medians.sort();
        let worst = medians.last().copied().unwrap_or_default();
        println!(
            "median of medians {:.2} ms, slowest median {:.2} ms (goal: median under 50 ms)",
            ms(medians[medians.len() / 2]),
            ms(worst)
        );
    }
}

/// Returns the true values (the pre-noise totals) with the scales of the real mechanism.
struct Exact;

impl divert::dp::Noise for Exact {
    fn release(&mut self, v: i64, sensitivity: i64, epsilon: f64) -> Result<divert::dp::Release, divert::dp::DpError> {
        let scale = divert::dp::noise_scale(sensitivity, epsilon)?;
        Ok(divert::dp::Release {
            value: v,
            sensitivity,
            epsilon,
            scale,
            ci95_half_width: divert::dp::ci95_half_width(scale)?,
        })
    }
}

/// The standard evaluation's answers over one population, released with `noise`, as report rows.
fn run_plan(
    planned: &PlannedEvaluation,
    schema: &Schema,
    pop: &Population,
    noise: &mut dyn divert::dp::Noise,
    truth: &divert::synth::truth::TrueStatistics,
) -> Vec<ReportRow> {
    let mut census: BTreeMap<String, divert::query::Answer> = BTreeMap::new();
    let mut rows = Vec::new();
    for step in &planned.steps {
        let p = plan(&step.query, schema).expect("plan");
        // The planner's releases are the mechanism's: same sensitivity, epsilon, scale and half-width.
        assert_eq!(p.releases(), step.releases.as_slice(), "{}", step.analysis);
        let c = p.census().map(|c| census.get(c.hash()).expect("census released first"));
        let answer = execute_with_census(&p, pop, noise, c).expect("execute");
        for (r, planned) in answer.releases.iter().zip(&step.releases) {
            assert_eq!(r, planned);
        }
        let mut these = report::rows_from_answer(&step.analysis, &answer, Some(truth));
        for r in &mut these {
            r.headline = step.headline;
        }
        rows.extend(these);
        if step.analysis == PERSONS {
            census.insert(answer.query_hash.clone(), answer);
        }
    }
    rows
}

fn inside(r: &ReportRow, t: f64) -> bool {
    let tol = 1e-9 * (1.0 + t.abs());
    t >= r.ci95.0 - tol && t <= r.ci95.1 + tol
}

fn evaluation(persons: u32, seeds: u32) {
    let schema = Schema::default_schema().expect("built-in schema");
    let plan_file = evaluation::standard().expect("config/evaluation.toml");
    let planned = evaluation::plan(&plan_file, &schema).expect("the standard plan");
    let statistics = planned.steps.iter().filter(|s| s.analysis != PERSONS).count();
    println!(
        "standard evaluation: {} analyses and {} shared denominator(s), {} ε planned of {}",
        statistics,
        planned.steps.len() - statistics,
        planned.epsilon_planned,
        planned.epsilon
    );
    for s in &planned.steps {
        let widest = evaluation::widest_main(&s.expected);
        println!("  {:<28} ε {:<9} expected widest main ±{:.4}", s.analysis, s.epsilon, widest);
    }

    let mut noise = OpenDpNoise::new();
    let (mut with_truth, mut in_truth) = (0usize, 0usize);
    let (mut with_exact, mut in_exact) = (0usize, 0usize);
    let mut half: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut headline_in = BTreeMap::<String, (usize, usize)>::new();
    let t = Instant::now();
    for seed in 1..=u64::from(seeds) {
        let dataset = synth::generate(&Params::defaults().expect("params"), persons, seed);
        let records: Vec<(u32, PseudoRecord)> = dataset
            .events
            .iter()
            .filter(|e| e.person < dataset.referred)
            .map(|e| (e.person, record(e, &dataset.persons[e.person as usize])))
            .collect();
        let pop = Population::build(&schema, records);
        let noisy = run_plan(&planned, &schema, &pop, &mut noise, &dataset.truth);
        let exact = run_plan(&planned, &schema, &pop, &mut Exact, &dataset.truth);
        for (r, x) in noisy.iter().zip(&exact) {
            assert_eq!((&r.key, &r.group), (&x.key, &x.group));
            if let Some(t) = r.truth {
                with_truth += 1;
                in_truth += usize::from(inside(r, t));
            }
            with_exact += 1;
            in_exact += usize::from(inside(r, x.value));
            if r.headline && (r.key.contains(".mean_difference") || r.key.contains(DID)) {
                let name = format!(
                    "{} {}",
                    r.key.split('[').next().unwrap_or(""),
                    r.group.values().cloned().collect::<Vec<_>>().join(",")
                );
                half.entry(name.clone()).or_default().push((r.ci95.1 - r.ci95.0) / 2.0);
                let e = headline_in.entry(name).or_default();
                if let Some(t) = r.truth {
                    e.0 += 1;
                    e.1 += usize::from(inside(r, t));
                }
            }
        }
    }
    println!("\n{seeds} seeds of {persons} referred persons ({:.1} s)", t.elapsed().as_secs_f64());
    println!("headline 95% half-widths (mean, max over seeds) and true values inside:");
    for (name, v) in &half {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let max = v.iter().copied().fold(0.0, f64::max);
        let (n, k) = headline_in.get(name).copied().unwrap_or_default();
        println!("  {name:<55} mean ±{mean:.4}  max ±{max:.4}  truth inside {k}/{n}");
    }
    println!(
        "true values inside their 95% intervals: {in_truth} of {with_truth} ({:.1}%)",
        100.0 * in_truth as f64 / with_truth.max(1) as f64
    );
    println!(
        "pre-noise values inside their 95% intervals: {in_exact} of {with_exact} ({:.1}%)",
        100.0 * in_exact as f64 / with_exact.max(1) as f64
    );

    // zCDP: the same plan, each release's share of ρ in proportion to its share of ε,
    // total ρ converted to (ε = the plan's, δ) by opendp; discrete Gaussian noise.
    const DELTA: f64 = 1e-7;
    let rho = divert::dp::mechanism::zcdp_rho_for(planned.epsilon, DELTA).expect("rho");
    println!("\nzCDP at (ε = {}, δ = {DELTA:e}): ρ = {rho:.5} in all", planned.epsilon);
    println!(
        "{:<28} {:>5} {:>4} {:>11} {:>11} {:>11} {:>11}",
        "release", "Δ", "k", "Laplace 95%", "Gauss 95%", "Laplace α/4", "Gauss α/4"
    );
    let (mut better, mut worse) = (0, 0);
    for s in &planned.steps {
        for r in &s.releases {
            let share = r.epsilon / planned.epsilon;
            let l2 = r.sensitivity; // one person changes one group's (one bin's) value by at most Δ: L2 = L1
            let g95 = divert::dp::mechanism::gaussian_half_width(l2, rho * share, 0.05).expect("gaussian");
            let g4 = divert::dp::mechanism::gaussian_half_width(l2, rho * share, 0.0125).expect("gaussian");
            let l4 = divert::dp::half_width(r.noise_scale, 0.0125).expect("laplace");
            if g95 < r.ci95_half_width {
                better += 1;
            } else {
                worse += 1;
            }
            println!(
                "{:<28} {:>5} {:>4} {:>11.2} {:>11.2} {:>11.2} {:>11.2}",
                format!("{} {}", s.analysis, r.name),
                r.sensitivity,
                r.values,
                r.ci95_half_width,
                g95,
                l4,
                g4
            );
        }
    }
    println!("zCDP narrows {better} release(s) and widens {worse} (95% half-widths, same budget shares)");
    if let Some(h) = planned.steps.iter().find(|s| s.headline).and_then(|s| s.releases.first()) {
        let all = divert::dp::mechanism::gaussian_half_width(h.sensitivity, rho, 0.05).expect("gaussian");
        println!(
            "all of ρ on the headline's {} (Δ {}): Gaussian 95% ±{all:.2}, against Laplace ±{:.2} at ε {}",
            h.name, h.sensitivity, h.ci95_half_width, h.epsilon
        );
    }
}
