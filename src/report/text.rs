//! The report for a terminal: the headline in words, the table, where epsilon went, the notes.

use super::*;

/// Width at which the text table's labels wrap.
pub(super) const TEXT_LABEL_WIDTH: usize = 64;

/// `text` in lines of at most `width` characters, broken at spaces (a longer word stands alone).
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The headline's rows: the per-arm changes and the difference between arms, in that order.
pub(super) fn headline_rows(rows: &[ReportRow]) -> Vec<&ReportRow> {
    let mut h: Vec<&ReportRow> = rows.iter().filter(|r| r.headline && is_headline_value(r)).collect();
    h.sort_by_key(|r| r.key.contains(DID));
    h
}

pub(super) fn is_headline_value(r: &ReportRow) -> bool {
    r.key.contains(".mean_difference") || r.key.contains(DID) || r.key.contains(".mean") || r.key.contains(".share")
}

/// What a headline value measures, for a sentence: "arrests per person" from
/// "Change in arrests per person, 6 months after vs 6 months before referral".
pub(super) fn measure_of(label: &str) -> (String, String) {
    let label = label.strip_prefix("Difference between arms (diversion minus comparison) in the ").unwrap_or(label);
    let label = lower_first(label);
    let label = label.strip_prefix("change in ").unwrap_or(&label).to_string();
    match label.split_once(", ") {
        Some((what, when)) => (what.to_string(), when.to_string()),
        None => (label, String::new()),
    }
}

/// The headline in plain words: "with 95% confidence, arrests per person fell by between 0.19 and 0.41".
pub fn headline_sentence(r: &ReportRow, synthetic: bool) -> String {
    let (what, when) = measure_of(&r.label);
    let f = |v: f64| format_value(v, &r.unit);
    let (lo, hi) = r.ci95;
    let did = r.key.contains(DID);
    let who = if did { "Between the arms".to_string() } else { capitalize(&format_group(&r.group)) };
    let body = if did {
        if hi < 0.0 {
            format!(
                "{what} fell by between {} and {} more in the diversion arm than in the comparison arm",
                f(-hi),
                f(-lo)
            )
        } else if lo > 0.0 {
            format!(
                "{what} rose by between {} and {} more in the diversion arm than in the comparison arm",
                f(lo),
                f(hi)
            )
        } else {
            format!(
                "the diversion arm's change in {what} differs from the comparison arm's by between {} and {}: \
                 the interval includes no difference",
                f(lo),
                f(hi)
            )
        }
    } else if hi < 0.0 {
        format!("{what} fell by between {} and {}", f(-hi), f(-lo))
    } else if lo > 0.0 {
        format!("{what} rose by between {} and {}", f(lo), f(hi))
    } else {
        format!("{what} changed by between {} and {}: the interval includes no change", f(lo), f(hi))
    };
    let mut out = format!("{who}: with 95% confidence, {body}");
    if !when.is_empty() {
        let _ = write!(out, " ({when})");
    }
    let _ = write!(out, "; estimate {}", f(r.value));
    if synthetic {
        if let Some(t) = r.truth {
            let _ = write!(out, ", true value {}", f(t));
        }
    }
    out.push('.');
    out
}

pub(super) fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The privacy unit in plain words, with the split rate when it was measured.
pub(super) fn privacy_unit_sentence(input: &ReportInput) -> String {
    let mut s = "The privacy unit is the linked person: a person whose records linkage split into k persons is \
                 protected at k times the epsilon spent"
        .to_string();
    if let Some(b) = &input.budget {
        let _ = write!(s, " (two persons: {} instead of {})", format_epsilon(2.0 * b.spent), format_epsilon(b.spent));
    }
    match input.split_rate {
        Some(r) => {
            let _ = write!(
                s,
                "; linkage split {} of the persons in this program (measured against the synthetic truth).",
                percent(r, 1)
            );
        }
        None => s.push_str("; how many persons linkage splits can be measured only where the truth is known."),
    }
    s
}

/// A text table of rows: statistic, group, value, 95% interval, epsilon and
/// (synthetic data only) the true value and whether the interval holds it.
pub(super) fn text_table(rows: &[&ReportRow], synthetic: bool) -> String {
    let mut out = String::new();
    let mut header = vec!["Statistic", "Group", "Value", "95% interval", "epsilon"];
    if synthetic {
        header.extend(["True value", "In interval"]);
    }
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let mut line = vec![
            r.label.clone(),
            format_group(&r.group),
            format_value(r.value, &r.unit),
            format!("[{}, {}]", format_value(r.ci95.0, &r.unit), format_value(r.ci95.1, &r.unit)),
            format_epsilon(r.epsilon),
        ];
        if synthetic {
            match r.truth {
                Some(t) => {
                    line.push(format_value(t, &r.unit));
                    line.push(if inside(r, t) { "yes" } else { "NO" }.into());
                }
                None => line.extend(["-".to_string(), "-".to_string()]),
            }
        }
        table.push(line);
    }
    // Long labels wrap onto continuation lines.
    let table: Vec<Vec<String>> = table
        .into_iter()
        .flat_map(|line| {
            let mut parts = wrap(line.first().map_or("", String::as_str), TEXT_LABEL_WIDTH).into_iter();
            let mut first = line;
            if let Some(head) = first.first_mut() {
                *head = parts.next().unwrap_or_default();
            }
            std::iter::once(first).chain(parts.map(|p| vec![format!("  {p}")]))
        })
        .collect();
    let columns = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| table.iter().map(|l| l.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    // Text columns left-aligned, numbers right-aligned.
    let left = |c: usize| c < 2;
    for (i, line) in table.iter().enumerate() {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            let w = widths.get(c).copied().unwrap_or(0);
            if c > 0 {
                text.push_str("  ");
            }
            if left(c) {
                let _ = write!(text, "{cell:<w$}");
            } else {
                let _ = write!(text, "{cell:>w$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    if rows.is_empty() {
        out.push_str("(no statistics released)\n");
    }
    out
}

pub(super) fn clamp_sentence(c: &ClampLine) -> String {
    let parts: Vec<String> =
        c.outside.iter().map(|(arm, n, of)| format!("{n} of {of} persons in the {arm} arm")).collect();
    format!("{} clamped to [{}, {}]: {} outside.", c.what, c.bounds[0], c.bounds[1], parts.join(", "))
}

/// The report for a terminal: the headline in plain words first, then every
/// other statistic (value, 95% interval, epsilon and, for synthetic data
/// only, the true value and whether the interval holds it), then where each
/// epsilon went, then the notes (clamps on synthetic data, the privacy unit,
/// linkage, budget).
pub fn render_text(input: &ReportInput) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Evaluation report: {}", input.program);
    if !input.title.is_empty() {
        let _ = writeln!(out, "{}", input.title);
    }
    let _ = writeln!(out, "Generated {}", input.generated);
    out.push_str(
        "Every number is a noisy aggregate released under differential privacy. The 95% interval holds the\n\
         true value 19 times out of 20 given the noise (it does not cover linkage errors or sampling).\n\n",
    );
    let headline = headline_rows(&input.rows);
    if !headline.is_empty() {
        out.push_str("HEADLINE\n");
        for r in &headline {
            for line in wrap(&headline_sentence(r, input.synthetic), 100) {
                let _ = writeln!(out, "  {line}");
            }
        }
        out.push('\n');
    }
    let rest: Vec<&ReportRow> = input.rows.iter().filter(|r| !headline.iter().any(|h| std::ptr::eq(*h, *r))).collect();
    out.push_str(if headline.is_empty() { "STATISTICS\n" } else { "ALL OTHER STATISTICS\n" });
    out.push_str(&text_table(&rest, input.synthetic));
    out.push('\n');
    if !input.spending.is_empty() {
        out.push_str("WHERE THE PRIVACY BUDGET WENT\n");
        let width = input.spending.iter().map(|s| s.what.chars().count()).max().unwrap_or(0).min(90);
        for s in &input.spending {
            let earlier = if s.earlier { "  (released earlier; replayed at no cost)" } else { "" };
            let _ = writeln!(out, "  {:<width$}  {:>8}{earlier}", s.what, format_epsilon(s.epsilon));
        }
        let total: f64 = input.spending.iter().map(|s| s.epsilon).sum();
        let _ = writeln!(out, "  {:<width$}  {:>8}", "total", format_epsilon(total));
        out.push('\n');
    }
    if input.synthetic {
        for c in &input.clamps {
            for line in wrap(&format!("Clamp (synthetic truth): {}", clamp_sentence(c)), 100) {
                let _ = writeln!(out, "{line}");
            }
        }
        let (inside, with) = coverage(&input.rows);
        if with > 0 {
            let _ = writeln!(
                out,
                "True values inside their 95% interval: {inside} of {with} ({}).",
                percent(inside as f64 / with as f64, 0)
            );
        }
    }
    for line in wrap(&privacy_unit_sentence(input), 100) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(l) = &input.linkage {
        let _ = writeln!(out, "{}", linkage_sentence(l));
    }
    if let Some(b) = &input.budget {
        let _ = writeln!(out, "{}", budget_sentence(b));
    }
    out
}
