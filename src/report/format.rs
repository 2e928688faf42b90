//! Formatting shared by the text and the HTML report: numbers, units, epsilons, groups, dates, and the sentences of the notes.

use super::*;

/// Escape text for HTML content and attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` with `decimals` decimals, without a minus sign on a value that rounds to zero.
pub(super) fn fixed(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// A whole number with thousands separators.
pub(super) fn thousands(v: f64) -> String {
    let n = v.round();
    if n.abs() >= 1e15 {
        return format!("{n:e}");
    }
    let digits = format!("{}", n.abs() as i64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A value in its unit: shares as percentages, persons as whole numbers.
pub fn format_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        UNIT_SHARE => format!("{}%", fixed(v * 100.0, 1)),
        UNIT_PERSONS | UNIT_PERSON_DAYS => thousands(v),
        UNIT_DAYS | UNIT_DAYS_PER_PERSON_YEAR => fixed(v, 1),
        _ => fixed(v, 2),
    }
}

/// An epsilon for people: at most three decimals, no trailing zeros.
pub fn format_epsilon(e: f64) -> String {
    if !e.is_finite() {
        return "n/a".into();
    }
    let s = format!("{e:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.to_string()
    }
}

pub(super) fn format_group(g: &BTreeMap<String, String>) -> String {
    if g.is_empty() {
        return "all".into();
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(arm) = g.get("arm") {
        parts.push(arm.clone());
    }
    for (k, v) in g.iter().filter(|(k, _)| k.as_str() != "arm") {
        parts.push(format!("{} {}", k.replace('_', " "), v));
    }
    parts.join(", ")
}

pub(super) fn inside(row: &ReportRow, t: f64) -> bool {
    // A little slack for floating-point post-processing at the interval's ends.
    let tol = 1e-9 * (1.0 + t.abs());
    t >= row.ci95.0 - tol && t <= row.ci95.1 + tol
}

/// (true values inside their interval, rows with a true value).
pub(super) fn coverage(rows: &[ReportRow]) -> (usize, usize) {
    let with: Vec<(&ReportRow, f64)> = rows.iter().filter_map(|r| r.truth.map(|t| (r, t))).collect();
    (with.iter().filter(|(r, t)| inside(r, *t)).count(), with.len())
}

pub(super) fn percent(f: f64, decimals: usize) -> String {
    format!("{}%", fixed(f * 100.0, decimals))
}

pub(super) fn linkage_sentence(l: &LinkageQuality) -> String {
    format!(
        "Linkage quality against the synthetic truth: precision {} (linked pairs that are the same person), recall {} (pairs of the same person that were linked).",
        percent(l.precision, 2),
        percent(l.recall, 2)
    )
}

pub(super) fn budget_sentence(b: &BudgetLine) -> String {
    format!(
        "Privacy budget (epsilon): {} granted, {} spent, {} left.",
        format_epsilon(b.granted),
        format_epsilon(b.spent),
        format_epsilon(b.left)
    )
}

/// The date part of an RFC 3339 time in words ("5 June 2024"), or the text itself.
pub(super) fn human_date(generated: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let format = time::macros::format_description!("[day padding:none] [month repr:long] [year]");
    match time::OffsetDateTime::parse(generated, &Rfc3339) {
        Ok(t) => t.format(&format).unwrap_or_else(|_| generated.to_string()),
        Err(_) => generated.to_string(),
    }
}
