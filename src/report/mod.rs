//! The evaluator's report: released statistics as a terminal table and as one self-contained HTML page (`report.html`).
//!
//! Everything here is pure: no files, no clock, no network.
//!
//! - `rows_from_answer` turns a query `Answer` into `ReportRow`s, one per
//!   released value and group, each with a plain-language label, a unit, a
//!   stable machine `key` (what the row measures, e.g.
//!   `arrests_per_person.mean[-182,-1]`) and, for synthetic data, the true
//!   value of the same statistic from `TrueStatistics`.
//! - `render_text` prints the report for a terminal: the headline first (the
//!   rows marked `headline`: each arm's change and the difference between
//!   arms, in plain words — "with 95% confidence, arrests per person fell by
//!   between … and …"), then the table of every other statistic, then where
//!   each epsilon went (`spending`), then the notes: the clamps' cuts
//!   (synthetic truth only), the privacy unit (k·ε, with the measured split
//!   rate when known), linkage, budget.
//! - `render_html` writes an HTML5 document with inline CSS and hand-written
//!   inline SVG charts, no script and no external reference (readable
//!   offline), in the same order: a header, the headline in words and as a
//!   chart (each arm's change and the difference between arms with their
//!   intervals), a plain-language note on what the numbers are, the lines
//!   (budget, privacy unit, linkage, clamps), three charts (arrests before
//!   and after referral by arm; permanent housing over time; the referral
//!   funnel), the table of every statistic (headline rows first), and where
//!   each epsilon went. Every piece of text is HTML-escaped.
//!
//! Matching true values. The analysis's own query is read back from the
//! answer's canonical form (windows, baseline, status month and values,
//! filters, funnel days, rate period, cohort filters). A row gets a true
//! value when the analysis, the cell's statistic (and category), the window
//! or month and the filters are exactly those of a field of
//! `TrueStatistics` (e.g. `arrests_per_person` over `[-182, -1]` is
//! `arrests.before`), and its group is one arm: grouped by `arm` alone, or
//! ungrouped with a one-arm cohort, with no other cohort filter. Design
//! choices that do not change what is measured are not part of the match:
//! per-person clamping (`bounds`) and the follow-up limit of the timing
//! analyses. The true value is therefore the exact statistic of the
//! synthetic program; an interval can miss it through clamping or linkage
//! errors as well as through the 5% chance of the noise.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::query::engine::{Answer, Cell, DID};
use crate::query::evaluation::PERSONS;
use crate::query::model::{At, Category, Match, Outcome, Query, Scalar, Statistic, Window};
use crate::synth::truth::{ArmStatistics, StatusAt, TrueStatistics, STATUS_MONTHS};

/// Unit of a share (shown as a percentage).
pub const UNIT_SHARE: &str = "share";
/// Unit of a number of persons.
pub const UNIT_PERSONS: &str = "persons";
/// Unit of a mean count per person (arrests, bookings) or its change.
pub const UNIT_PER_PERSON: &str = "per person";
/// Unit of a mean number of days (days to intake, change in jail days).
pub const UNIT_DAYS: &str = "days";
/// Unit of a rate of events per person-year.
pub const UNIT_PER_PERSON_YEAR: &str = "per person-year";
/// Unit of a rate of days per person-year (jail days).
pub const UNIT_DAYS_PER_PERSON_YEAR: &str = "days per person-year";
/// Unit of exposure.
pub const UNIT_PERSON_DAYS: &str = "person-days";

/// Everything a report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    /// The program's name, e.g. `santa-fe-lead`.
    pub program: String,
    /// When the report was made (RFC 3339).
    pub generated: String,
    /// One per released statistic and group.
    pub rows: Vec<ReportRow>,
    /// Linkage precision and recall against the synthetic truth, when known.
    pub linkage: Option<LinkageQuality>,
    /// The evaluator's privacy budget.
    pub budget: Option<BudgetLine>,
    /// Synthetic data: the true values are shown (never otherwise).
    pub synthetic: bool,
    /// What the evaluation is (the plan's title).
    #[serde(default)]
    pub title: String,
    /// Where each epsilon went: one line per released query, in the plan's order.
    #[serde(default)]
    pub spending: Vec<Spending>,
    /// Share of true persons that linkage split into more than one person (measured on synthetic data).
    #[serde(default)]
    pub split_rate: Option<f64>,
    /// How many persons each clamp cut (synthetic truth only; never shown otherwise).
    #[serde(default)]
    pub clamps: Vec<ClampLine>,
}

/// One released query and the epsilon it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spending {
    /// What was released, in words.
    pub what: String,
    pub epsilon: f64,
    /// Released by an earlier run: replayed from the steward's store, nothing spent now.
    #[serde(default)]
    pub earlier: bool,
}

/// The persons a clamp cut, per arm (synthetic truth only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClampLine {
    /// The value clamped, in words.
    pub what: String,
    pub bounds: [i64; 2],
    /// Why the clamp is what it is.
    #[serde(default)]
    pub reason: String,
    /// (arm, persons outside the clamp, persons in the arm).
    pub outside: Vec<(String, u64, u64)>,
}

/// One released value of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The catalog analysis, e.g. `arrests_per_person`.
    pub analysis: String,
    /// What the row measures, machine-readable and independent of the group:
    /// `<analysis>.<statistic>[:<category>]<qualifiers>`, e.g.
    /// `arrests_per_person.mean[-182,-1]`, `housing_status.share@m6=permanent`,
    /// `referral_funnel.count:enrolled@7d`. The charts find their rows by it.
    #[serde(default)]
    pub key: String,
    /// Plain language, without the group: "Arrests per person, 6 months after referral".
    pub label: String,
    /// The group: category → value (empty: everyone in the cohort).
    pub group: BTreeMap<String, String>,
    pub value: f64,
    /// 95% interval over the noise.
    pub ci95: (f64, f64),
    pub epsilon: f64,
    /// The true value (synthetic data only).
    pub truth: Option<f64>,
    /// One of the `UNIT_*` constants: "share", "persons", "per person", "days", ...
    pub unit: String,
    /// Part of the headline the report leads with.
    #[serde(default)]
    pub headline: bool,
}

/// Pairwise linkage quality against the synthetic truth (fractions in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkageQuality {
    pub precision: f64,
    pub recall: f64,
}

/// The evaluator's privacy budget (epsilon).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetLine {
    pub granted: f64,
    pub spent: f64,
    pub left: f64,
}

mod format;
mod html;
mod rows;
mod svg;
mod text;

pub use self::format::{escape_html, format_epsilon, format_value};
pub use self::html::render_html;
pub use self::rows::rows_from_answer;
pub use self::text::{headline_sentence, render_text};
use self::{format::*, rows::*, svg::*, text::*};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_handles_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape_html("plain — text"), "plain — text");
    }

    #[test]
    fn labels_wrap_at_spaces() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("", 6), vec![""]);
        assert_eq!(wrap("unbreakable-word x", 4), vec!["unbreakable-word", "x"]);
    }

    #[test]
    fn values_are_formatted_in_their_unit() {
        assert_eq!(format_value(0.4234, UNIT_SHARE), "42.3%");
        assert_eq!(format_value(1234.4, UNIT_PERSONS), "1,234");
        assert_eq!(format_value(-1234567.0, UNIT_PERSON_DAYS), "-1,234,567");
        assert_eq!(format_value(-0.001, UNIT_PER_PERSON), "0.00");
        assert_eq!(format_value(12.345, UNIT_DAYS), "12.3");
        assert_eq!(format_value(f64::NAN, UNIT_DAYS), "n/a");
        assert_eq!(format_epsilon(0.75), "0.75");
        assert_eq!(format_epsilon(1.0), "1");
        assert_eq!(format_epsilon(1.0 / 3.0), "0.333");
    }

    #[test]
    fn nice_scales_cover_the_data() {
        for (lo, hi) in [(0.0, 0.87), (0.0, 1.0), (0.13, 0.61), (0.0, 118.0), (-0.4, 0.2), (3.0, 3.0), (0.0, 0.0)] {
            let (min, max, step) = nice_scale(lo, hi);
            assert!(min <= lo && max >= hi && step > 0.0 && max > min, "{lo} {hi}: {min} {max} {step}");
            assert!(ticks(min, max, step).len() <= 12, "{lo} {hi}");
        }
        assert_eq!(tick_label(0.2, 0.2, true), "20%");
        assert_eq!(tick_label(0.25, 0.05, false), "0.25");
        assert_eq!(tick_label(40.0, 20.0, false), "40");
    }

    #[test]
    fn windows_and_keys_read_back_from_the_canonical_query() {
        let q = Query::parse(
            r#"{"outcome":{"type":"count","kind":"arrest","where":{"warrant":false},"window":[0,181]},"statistic":{"type":"difference","baseline":[-182,-1]},"cohort":{"sex":["f"]},"group_by":["arm"],"epsilon":1}"#,
        )
        .unwrap();
        let s = spec_of(&q.canonical());
        assert_eq!((s.window, s.baseline, s.non_warrant), (Some((0, 181)), Some((-182, -1)), true));
        assert_eq!(
            row_key("arrests_before_after", "mean_difference", None, &s),
            "arrests_before_after.mean_difference[0,181]-[-182,-1]!warrant|sex=f"
        );
        let g: BTreeMap<String, String> = [("arm".to_string(), "diversion".to_string())].into();
        assert_eq!(arm_of(&g, &s), None, "a sex filter is not a whole arm");
        assert_eq!(spec_of("not json").window, None);
    }
}
