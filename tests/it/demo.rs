//! `divert demo` end to end at a small size: real daemon processes, the evaluation over mTLS, the report — and what reaches the evaluator carries no token, no name and no exact count.

use std::collections::BTreeSet;
use std::fs;

use crate::util::{divert_in, text};

/// Names from the synthetic exports (given and family), read from the police referrals.
fn synthetic_names(dir: &std::path::Path) -> BTreeSet<String> {
    let mut r = csv::Reader::from_path(dir.join("synth/police/referral.csv")).expect("referral.csv");
    let headers: Vec<String> = r.headers().expect("headers").iter().map(|h| h.to_ascii_lowercase()).collect();
    let cols: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.contains("name") || *h == "first" || *h == "last")
        .map(|(i, _)| i)
        .collect();
    let mut names = BTreeSet::new();
    for rec in r.records() {
        let rec = rec.expect("record");
        for &c in &cols {
            let n = rec.get(c).unwrap_or("").trim();
            // Short names ("Li", "Ng") occur inside ordinary words; look for distinctive ones.
            if n.len() >= 6 {
                names.insert(n.to_string());
            }
        }
    }
    names
}

fn is_token_like(s: &str) -> bool {
    // A token as it travels: a JSON string "<epoch>:<32 lower-case hex>", exactly.
    s.split('"').any(|part| match part.split_once(':') {
        Some((epoch, hex)) => {
            !epoch.is_empty()
                && epoch.bytes().all(|b| b.is_ascii_digit())
                && hex.len() == 32
                && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    })
}

#[test]
fn token_detector_finds_tokens_only() {
    assert!(is_token_like(r#"{"t":"1:0123456789abcdef0123456789abcdef"}"#));
    assert!(!is_token_like(r#"{"h":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#));
}

#[test]
fn demo_runs_the_whole_program_and_leaks_nothing_to_the_evaluator() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let out = divert_in(
        tmp.path(),
        &["demo", "--persons", "200", "--seed", "11", "--dir", dir.to_str().expect("utf-8 path")],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");

    // Every daemon started and stopped cleanly.
    for name in ["steward", "police", "jail", "da", "casemgmt", "treatment"] {
        assert!(stdout.contains(&format!("demo: {name} stopped cleanly")), "{name} did not stop cleanly:\n{stdout}");
        let log = fs::read_to_string(dir.join(name).join("divert.log")).expect("daemon log");
        assert!(log.contains("divert daemon stopped"), "{name}'s log does not show a clean stop:\n{log}");
    }

    // The report leads with the headline in plain words, and says where each epsilon went.
    let headline = stdout.find("HEADLINE").expect("a headline section");
    assert!(headline < stdout.find("ALL OTHER STATISTICS").expect("the other statistics"), "{stdout}");
    for want in [
        "Diversion: with 95% confidence, arrests per person",
        "Comparison: with 95% confidence, arrests per person",
        "Between the arms: with 95% confidence",
        "WHERE THE PRIVACY BUDGET WENT",
        "Clamp (synthetic truth): Change in arrests per person",
        "protected at k times the epsilon spent",
        "linkage split",
    ] {
        assert!(stdout.contains(want), "no `{want}` in the demo's report:\n{stdout}");
    }
    // The budget table adds up to the budget.
    let total = stdout.lines().find(|l| l.trim_start().starts_with("total ")).expect("a total line");
    assert_eq!(total.split_whitespace().last(), Some("2"), "{total}");

    // The true values fall inside their 95% intervals at a plausible rate.
    let line = stdout.lines().find(|l| l.starts_with("True values inside their 95% interval:")).expect("coverage line");
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().expect("number"))
        .collect();
    let (inside, total) = (nums[1], nums[2]);
    assert!(total >= 20, "too few statistics compared: {line}");
    // With 95% intervals, fewer than 80% inside would be far outside chance (and
    // linkage errors only push the other way for a few statistics).
    assert!(inside * 100 >= total * 80, "coverage too low: {line}");

    // The report parses as HTML and holds the charts; it is self-contained.
    let html = fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.starts_with("<!DOCTYPE html>") || html.starts_with("<!doctype html>"), "not an HTML document");
    assert!(html.contains("</html>"), "the report is cut short");
    // Four figures, each a chart or a note saying why it is not drawn: which ones are
    // drawn depends on the noise (a series whose every interval covers 0% to 100% is
    // left out) and on the plan (the demo's runs no arrests-per-person by arm).
    let figures: Vec<&str> =
        html.split("<figure>").skip(1).map(|f| f.split("</figure>").next().unwrap_or("")).collect();
    assert_eq!(figures.len(), 4, "figures missing");
    for f in &figures {
        assert!(
            f.contains("<svg") || f.contains("class=\"chart-note\""),
            "a figure with neither a chart nor a note: {f}"
        );
    }
    let chart = html.find("chart-headline").expect("the headline chart");
    assert!(chart < html.find("Every released statistic").expect("the table"), "the headline chart comes first");
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    assert!(!html.contains("http://") && !html.contains("https://"), "the report must work offline");

    // The evaluator's side: responses, the report without truth, and its stdout.
    let responses = fs::read_to_string(dir.join("evaluator/responses.jsonl")).expect("responses");
    let public = fs::read_to_string(dir.join("evaluator/report-without-truth.html")).expect("public report");
    let names = synthetic_names(&dir);
    assert!(names.len() > 20, "the test could not find names to look for");
    for (what, body) in [("responses", &responses), ("report without truth", &public)] {
        assert!(!is_token_like(body), "a token-like string reached the evaluator in the {what}");
        for n in &names {
            assert!(!body.contains(n.as_str()), "the name {n} reached the evaluator in the {what}");
        }
    }
    assert!(!public.contains("True value"), "the public report shows true values");

    // No exact counts: the noisy person counts the evaluator got are not the true ones.
    let truth: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("synth/truth.json")).expect("truth.json")).expect("json");
    let referred: Vec<u64> = ["diversion", "comparison"]
        .iter()
        .filter_map(|arm| {
            truth
                .pointer(&format!("/arms/{arm}/funnel/referred"))
                .or_else(|| truth.pointer(&format!("/{arm}/funnel/referred")))
        })
        .filter_map(|v| v.as_u64())
        .collect();
    let mut counts = Vec::new();
    for line in responses.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("response json");
        for cell in v.pointer("/answer/values").and_then(|c| c.as_array()).into_iter().flatten() {
            if cell["statistic"] == "persons" {
                counts.push(cell["value"].as_f64().unwrap_or(-1.0));
            }
        }
    }
    assert!(counts.len() >= 10, "too few person counts in the answers");
    if !referred.is_empty() {
        let exact = counts.iter().filter(|c| referred.iter().any(|r| (**c - *r as f64).abs() < 0.5)).count();
        assert!(
            exact * 3 < counts.len(),
            "{exact} of {} person counts equal the true referred counts: noise missing?",
            counts.len()
        );
    }
    let distinct: BTreeSet<i64> = counts.iter().map(|c| *c as i64).collect();
    assert!(distinct.len() > counts.len() / 3, "person counts barely vary across answers: noise missing? {counts:?}");
}
