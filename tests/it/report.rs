//! The evaluator's report: rows from real noisy answers, the HTML's structure (balanced tags, three charts, nothing external), escaping, and true values only for synthetic data.

use std::collections::BTreeMap;

use divert::dp::OpenDpNoise;
use divert::query::catalog::find;
use divert::query::{execute, plan, Answer, Population};
use divert::report::{
    escape_html, render_html, render_text, rows_from_answer, BudgetLine, LinkageQuality, ReportInput, ReportRow,
};
use divert::schema::Schema;
use divert::synth::TrueStatistics;

fn schema() -> Schema {
    Schema::default_schema().unwrap()
}

/// The synthetic program's exports pseudonymized as the agencies would (CSV → tokens), linked perfectly (by the true person).
fn linked_population(persons: u32, seed: u64) -> (TrueStatistics, Population) {
    let (dataset, records) = crate::query::linked_synthetic(persons, seed);
    (dataset.truth, Population::build(&schema(), records))
}

/// The standard evaluation: (analysis, parameters).
const STANDARD: &[(&str, &[(&str, &str)])] = &[
    ("referral_funnel", &[]),
    ("arrests_per_person", &[("from", "-182"), ("to", "-1")]),
    ("arrests_per_person", &[("from", "0"), ("to", "181")]),
    ("arrests_per_person", &[("from", "182"), ("to", "364")]),
    ("arrests_before_after", &[]),
    ("any_arrest", &[]),
    ("felony_charge", &[]),
    ("violent_charge", &[]),
    ("rearrest_free", &[("day", "180")]),
    ("days_to_rearrest", &[]),
    ("jail_bookings_per_person_year", &[("period", "before")]),
    ("jail_bookings_per_person_year", &[("period", "after")]),
    ("jail_days_before_after", &[]),
    ("housing_status", &[("month", "0")]),
    ("housing_status", &[("month", "6")]),
    ("housing_status", &[("month", "12")]),
    ("housing_status", &[("month", "18")]),
    ("employment_status", &[("month", "6")]),
    ("income_benefits_status", &[("month", "6")]),
    ("days_to_intake", &[]),
    ("intake_within_days", &[]),
    ("days_to_plan", &[]),
];

fn answer(pop: &Population, name: &str, params: &[(&str, &str)]) -> Answer {
    let params: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let q = find(name).unwrap().instantiate(&params).unwrap();
    let p = plan(&q, &schema()).unwrap();
    execute(&p, pop, &mut OpenDpNoise::new()).unwrap()
}

/// Rows of the standard evaluation on a fresh synthetic program, and the epsilon it spent.
fn standard_rows(persons: u32, seed: u64) -> (Vec<ReportRow>, f64) {
    let (truth, pop) = linked_population(persons, seed);
    let mut rows = Vec::new();
    let mut spent = 0.0;
    for (name, params) in STANDARD {
        let a = answer(&pop, name, params);
        spent += a.epsilon_spent;
        rows.extend(rows_from_answer(name, &a, Some(&truth)));
    }
    (rows, spent)
}

fn input(rows: Vec<ReportRow>, synthetic: bool) -> ReportInput {
    let spent: f64 = 22.0;
    ReportInput {
        program: "santa-fe-lead".into(),
        generated: "2024-06-05T14:03:00Z".into(),
        rows,
        linkage: Some(LinkageQuality { precision: 0.9987, recall: 0.9812 }),
        budget: Some(BudgetLine { granted: 30.0, spent, left: 30.0 - spent }),
        synthetic,
        ..Default::default()
    }
}

/// Every `<tag ...>` of html, head, body, table and svg is closed, in order (a tiny well-formedness check).
fn check_balanced(html: &str) -> Result<(), String> {
    const TRACKED: [&str; 5] = ["html", "head", "body", "table", "svg"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let closing = rest.starts_with('/');
        let name: String = rest
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !TRACKED.contains(&name.as_str()) {
            continue;
        }
        let end = rest.find('>').ok_or_else(|| format!("unterminated <{name}"))?;
        let self_closing = rest[..end].ends_with('/');
        if closing {
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else if !self_closing {
            stack.push(name);
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("never closed: {stack:?}"))
    }
}

#[test]
fn the_tag_checker_finds_unbalanced_tags() {
    assert!(check_balanced("<html><body><table></table><svg></svg></body></html>").is_ok());
    assert!(check_balanced("<html><body><table><tbody></tbody></body></html>").is_err());
    assert!(check_balanced("<html><body><svg></body></html>").is_err());
    assert!(check_balanced("<html><head></head>").is_err());
}

#[test]
fn rows_from_a_real_answer_are_finite_and_hold_their_value() {
    let (rows, _) = standard_rows(300, 11);
    assert!(rows.len() > 60, "{} rows", rows.len());
    for r in &rows {
        assert!(r.value.is_finite() && r.ci95.0.is_finite() && r.ci95.1.is_finite(), "{r:?}");
        assert!(r.ci95.0 <= r.value + 1e-9 && r.value <= r.ci95.1 + 1e-9, "value outside its interval: {r:?}");
        assert!(r.epsilon > 0.0 && r.epsilon <= 1.0, "{r:?}");
        assert!(!r.label.is_empty() && !r.unit.is_empty() && r.key.starts_with(&r.analysis), "{r:?}");
        assert!(!r.label.contains("(diversion)") && !r.label.contains('{'), "label without group or JSON: {r:?}");
    }
    // True values where TrueStatistics has the statistic, for both arms (the comparison arm has no
    // case management: no intake, so no status or timing).
    for arm in ["diversion", "comparison"] {
        let diversion_only = [
            "housing_status.share@m0=permanent",
            "housing_status.share@m18=permanent",
            "employment_status.share@m6=full_time|part_time",
            "income_benefits_status.share@m6=true",
            "days_to_intake.mean[0,365]",
            "intake_within_days.share[0,7]",
            "days_to_plan.mean[0,365]",
        ];
        for key in [
            "referral_funnel.persons@7d",
            "referral_funnel.count:enrolled@7d",
            "referral_funnel.share:declined@7d",
            "arrests_per_person.mean[-182,-1]",
            "arrests_per_person.mean[0,181]",
            "arrests_per_person.mean[182,364]",
            "arrests_before_after.mean_difference[0,181]-[-182,-1]",
            "any_arrest.share[0,181]",
            "felony_charge.share[0,364]",
            "violent_charge.share[0,364]",
            "rearrest_free.share[0,180]",
            "jail_bookings_per_person_year.rate[-365,-1]",
            "jail_bookings_per_person_year.person_days[0,364]",
            "jail_days_before_after.mean_difference[0,364]-[-365,-1]",
            "housing_status.share@m0=permanent",
            "housing_status.share@m18=permanent",
            "housing_status.persons@m6=permanent",
            "employment_status.share@m6=full_time|part_time",
            "income_benefits_status.share@m6=true",
            "days_to_intake.mean[0,365]",
            "intake_within_days.share[0,7]",
            "days_to_plan.mean[0,365]",
        ] {
            let row = rows
                .iter()
                .find(|r| r.key == key && r.group.get("arm").map(String::as_str) == Some(arm))
                .unwrap_or_else(|| {
                    panic!("no row {key} for {arm}: {:#?}", rows.iter().map(|r| &r.key).collect::<Vec<_>>())
                });
            if arm == "comparison" && diversion_only.contains(&key) {
                continue;
            }
            let t = row.truth.unwrap_or_else(|| panic!("no truth for {key} ({arm})"));
            assert!(t.is_finite(), "{key}");
        }
        let days = rows.iter().find(|r| r.key == "days_to_rearrest.mean[0,364]" && r.group["arm"] == arm).unwrap();
        assert_eq!(days.truth, None, "TrueStatistics has no mean days to rearrest");
    }
    // The intervals hold the truth at a plausible rate (perfect linkage here; clamping can cost a few).
    let with: Vec<&ReportRow> = rows.iter().filter(|r| r.truth.is_some()).collect();
    let inside = with.iter().filter(|r| r.truth.is_some_and(|t| r.ci95.0 - 1e-9 <= t && t <= r.ci95.1 + 1e-9)).count();
    assert!(inside as f64 >= 0.8 * with.len() as f64, "{inside} of {} true values inside", with.len());
}

#[test]
fn html_report_is_balanced_offline_and_holds_three_charts() {
    let (rows, _) = standard_rows(300, 5);
    let html = render_html(&input(rows.clone(), true));
    check_balanced(&html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 3, "three charts");
    assert_eq!(html.matches("</svg>").count(), 3);
    for forbidden in ["http://", "https://", "<script", "<link", "<img", "@import", "url("] {
        assert!(!html.contains(forbidden), "{forbidden} in the report");
    }
    assert!(html.contains("chart-arrests") && html.contains("chart-housing") && html.contains("chart-funnel"));
    assert!(!html.contains("Not drawn"), "every chart has its rows");
    assert!(html.contains("19 times out of 20") && html.contains("linking records"));
    assert!(html.contains("30 granted, 22 spent, 8 left"));
    assert!(html.contains("precision 99.87%") && html.contains("recall 98.12%"));
    assert!(html.contains("5 June 2024"));
    assert!(html.contains("True value") && html.contains("true value (synthetic data)"));
    // Each row is in the table.
    assert_eq!(html.matches("<tr><td>").count(), rows.len());

    let text = render_text(&input(rows, true));
    assert!(text.contains("95% interval") && text.contains("True value") && text.contains("epsilon"));
    assert!(text.contains("Arrests per person, 6 months before referral"));
    assert!(text.contains("precision 99.87%"));
}

#[test]
fn a_report_of_real_data_shows_no_true_value() {
    let (rows, _) = standard_rows(120, 9);
    assert!(rows.iter().any(|r| r.truth.is_some()));
    let stripped: Vec<ReportRow> = rows.iter().cloned().map(|r| ReportRow { truth: None, ..r }).collect();
    // Real data: no linkage quality either (there is no truth to measure it against).
    let real = |rows: Vec<ReportRow>| ReportInput { linkage: None, ..input(rows, false) };
    let with_truth = real(rows);
    let html = render_html(&with_truth);
    assert_eq!(html, render_html(&real(stripped.clone())), "truth values leave no trace");
    assert_eq!(render_text(&with_truth), render_text(&real(stripped)));
    for word in ["True value", "true value (", "In interval", "synthetic"] {
        assert!(!html.contains(word), "{word} in a non-synthetic report");
        assert!(!render_text(&with_truth).contains(word), "{word} in a non-synthetic text report");
    }
    check_balanced(&html).unwrap();
}

fn row(analysis: &str, key: &str, label: &str, arm: &str, value: f64, ci95: (f64, f64), unit: &str) -> ReportRow {
    ReportRow {
        analysis: analysis.into(),
        key: key.into(),
        label: label.into(),
        group: [("arm".to_string(), arm.to_string())].into(),
        value,
        ci95,
        epsilon: 1.0,
        truth: Some(7.77),
        unit: unit.into(),
        headline: false,
    }
}

#[test]
fn labels_and_program_names_are_escaped() {
    let evil = "<script>alert(1)</script>";
    let mut r = row("arrests_per_person", "x", evil, "<b>arm</b>", 1.0, (0.5, 1.5), "per person");
    r.analysis = "a\"b'c".into();
    let mut i = input(vec![r], true);
    i.program = "Lead \"pilot\" & <co>".into();
    let html = render_html(&i);
    assert!(!html.contains("<script"), "raw script tag");
    assert!(html.contains(&escape_html(evil)) && html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("Lead &quot;pilot&quot; &amp; &lt;co&gt;"));
    assert!(html.contains("a&quot;b&#39;c") && html.contains("&lt;b&gt;arm&lt;/b&gt;"));
    assert!(!html.contains("<b>arm") && !html.contains("<co>"));
    check_balanced(&html).unwrap();
}

#[test]
fn missing_rows_replace_charts_with_notes_and_shares_are_clamped_only_for_display() {
    let rows = vec![
        row(
            "housing_status",
            "housing_status.share@m0=permanent",
            "Share in permanent housing, at intake",
            "diversion",
            1.05,
            (-0.1, 1.2),
            "share",
        ),
        row(
            "housing_status",
            "housing_status.share@m6=permanent",
            "Share in permanent housing, 6 months after intake",
            "diversion",
            0.4,
            (0.3, 0.5),
            "share",
        ),
    ];
    let html = render_html(&input(rows, true));
    check_balanced(&html).unwrap();
    assert_eq!(html.matches("<svg").count(), 1, "only the housing chart");
    assert!(html.contains("Not drawn: the analysis arrests_per_person"));
    assert!(html.contains("Not drawn: the analysis referral_funnel"));
    assert!(html.contains("Not run: month 12, month 18."));
    // The table keeps the released numbers as they are.
    assert!(html.contains("105.0%") && html.contains("-10.0%") && html.contains("120.0%"));
    // The chart draws inside its frame.
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    for attr in ["cy=\"", "y1=\"", "y2=\""] {
        for part in svg.split(attr).skip(1) {
            let v: f64 = part[..part.find('"').unwrap()].parse().unwrap();
            assert!((0.0..=360.0).contains(&v), "{attr}{v} outside the chart");
        }
    }

    let none = render_html(&input(Vec::new(), false));
    check_balanced(&none).unwrap();
    assert_eq!(none.matches("<svg").count(), 0);
    assert!(none.contains("Not drawn: the analysis housing_status"));
}

/// Writes a sample report of the standard evaluation to /tmp/divert-report-sample.html (and .txt).
/// Run with `cargo test --test it report::write_sample -- --ignored`.
#[test]
#[ignore]
fn write_sample() {
    let (rows, spent) = standard_rows(300, 1);
    let granted = (spent / 5.0).ceil() * 5.0;
    let mut i = input(rows, true);
    i.budget = Some(BudgetLine { granted, spent, left: granted - spent });
    std::fs::write("/tmp/divert-report-sample.html", render_html(&i)).unwrap();
    std::fs::write("/tmp/divert-report-sample.txt", render_text(&i)).unwrap();
    println!("{}", render_text(&i));
}
