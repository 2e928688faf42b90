//! The report's charts as inline SVG, hand-written: the headline, arrests before and after referral, housing over time, the referral funnel.

use super::*;

pub(super) const CHART_W: f64 = 720.0;
pub(super) const CHART_H: f64 = 360.0;

/// Series (arms) of the charts: a row grouped by `arm` alone, or an ungrouped row ("all persons").
pub(super) fn series_of(group: &BTreeMap<String, String>) -> Option<String> {
    match group.len() {
        0 => Some("all persons".into()),
        1 => group.get("arm").cloned(),
        _ => None,
    }
}

pub(super) fn series_rank(s: &str) -> (u8, String) {
    match s {
        "diversion" => (0, String::new()),
        "comparison" => (1, String::new()),
        "all persons" => (3, String::new()),
        other => (2, other.to_string()),
    }
}

pub(super) fn series_color(s: &str, i: usize) -> &'static str {
    const OTHERS: [&str; 4] = ["#2a9d8f", "#8e44ad", "#c0392b", "#7f8c8d"];
    match s {
        "diversion" => "#1b6ca8",
        "comparison" => "#d9822b",
        "all persons" => "#555555",
        _ => OTHERS[i % OTHERS.len()],
    }
}

/// The first row with this key for this series.
pub(super) fn find_row<'a>(rows: &'a [ReportRow], key: &str, series: &str) -> Option<&'a ReportRow> {
    rows.iter().find(|r| r.key == key && series_of(&r.group).as_deref() == Some(series))
}

/// The series present among rows with one of `keys`, in display order.
pub(super) fn series_among(rows: &[ReportRow], keys: &[String]) -> Vec<String> {
    let mut s: Vec<String> =
        rows.iter().filter(|r| keys.contains(&r.key)).filter_map(|r| series_of(&r.group)).collect();
    s.sort_by_key(|x| series_rank(x));
    s.dedup();
    s
}

/// Axis range and tick step: round numbers covering [lo, hi].
pub(super) fn nice_scale(lo: f64, hi: f64) -> (f64, f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo.min(hi), lo.max(hi)) } else { (0.0, 1.0) };
    let hi = if hi - lo < 1e-12 { lo + if lo.abs() > 1e-12 { lo.abs() } else { 1.0 } } else { hi };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 2.5 {
            2.5
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        };
    ((lo / step + 1e-9).floor() * step, (hi / step - 1e-9).ceil() * step, step)
}

pub(super) fn ticks(min: f64, max: f64, step: f64) -> Vec<f64> {
    let n = ((max - min) / step + 1e-6).floor() as usize;
    (0..=n.min(50)).map(|k| min + k as f64 * step).collect()
}

pub(super) fn tick_label(v: f64, step: f64, share: bool) -> String {
    let (v, step) = if share { (v * 100.0, step * 100.0) } else { (v, step) };
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil().max(0.0) as usize + 1 };
    let decimals = if decimals > 0 && (step * 10f64.powi(decimals as i32 - 1)).fract().abs() < 1e-9 {
        decimals - 1
    } else {
        decimals
    };
    let s = fixed(v, decimals);
    if share {
        format!("{s}%")
    } else {
        s
    }
}

/// A linear map from data to pixels; values outside the domain are clamped to it (display only).
#[derive(Clone, Copy)]
pub(super) struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let span = self.d1 - self.d0;
        if !v.is_finite() || span.abs() < 1e-300 {
            return self.r0;
        }
        let v = v.clamp(self.d0.min(self.d1), self.d0.max(self.d1));
        self.r0 + (v - self.d0) / span * (self.r1 - self.r0)
    }
}

/// Pixel coordinates, one decimal.
pub(super) fn px(v: f64) -> String {
    fixed(v, 1)
}

pub(super) fn svg_open(out: &mut String, id: &str, title: &str, desc: &str) {
    let _ = writeln!(
        out,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-labelledby="{id}-title {id}-desc" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif" font-size="12">"#,
        w = CHART_W,
        h = CHART_H
    );
    let _ = writeln!(out, r#"<title id="{id}-title">{}</title>"#, escape_html(title));
    let _ = writeln!(out, r#"<desc id="{id}-desc">{}</desc>"#, escape_html(desc));
    let _ = writeln!(out, r##"<rect x="0" y="0" width="{CHART_W}" height="{CHART_H}" fill="#ffffff"/>"##);
}

pub(super) fn svg_text(out: &mut String, x: f64, y: f64, anchor: &str, extra: &str, text: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="{anchor}"{extra}>{}</text>"#,
        px(x),
        px(y),
        escape_html(text)
    );
}

pub(super) fn svg_line(out: &mut String, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) {
    let _ = writeln!(
        out,
        r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{stroke}" stroke-width="{}"/>"#,
        px(x1),
        px(y1),
        px(x2),
        px(y2),
        px(width)
    );
}

/// A vertical (or horizontal) error bar from `a` to `b` at `at`, with caps.
pub(super) fn error_bar(out: &mut String, vertical: bool, at: f64, a: f64, b: f64) {
    let cap = 5.0;
    let ink = "#222222";
    if vertical {
        svg_line(out, at, a, at, b, ink, 1.5);
        svg_line(out, at - cap, a, at + cap, a, ink, 1.5);
        svg_line(out, at - cap, b, at + cap, b, ink, 1.5);
    } else {
        svg_line(out, a, at, b, at, ink, 1.5);
        svg_line(out, a, at - cap, a, at + cap, ink, 1.5);
        svg_line(out, b, at - cap, b, at + cap, ink, 1.5);
    }
}

pub(super) fn diamond(out: &mut String, x: f64, y: f64) {
    let r = 5.0;
    let _ = writeln!(
        out,
        r##"<polygon points="{},{} {},{} {},{} {},{}" fill="#ffffff" stroke="#000000" stroke-width="1.5"/>"##,
        px(x),
        px(y - r),
        px(x + r),
        px(y),
        px(x),
        px(y + r),
        px(x - r),
        px(y)
    );
}

pub(super) enum Glyph {
    Swatch(&'static str),
    ErrorBar,
    Truth,
}

/// A one-line legend starting at (x, y).
pub(super) fn legend(out: &mut String, x: f64, y: f64, items: &[(String, Glyph)]) {
    let mut at = x;
    let _ = writeln!(out, r#"<g class="legend">"#);
    for (label, glyph) in items {
        match glyph {
            Glyph::Swatch(color) => {
                let _ = writeln!(
                    out,
                    r#"<rect x="{}" y="{}" width="14" height="14" fill="{color}"/>"#,
                    px(at),
                    px(y - 11.0)
                );
            }
            Glyph::ErrorBar => {
                let _ = writeln!(out, r#"<g>"#);
                error_bar(out, true, at + 7.0, y - 11.0, y + 3.0);
                let _ = writeln!(out, r#"</g>"#);
            }
            Glyph::Truth => diamond(out, at + 7.0, y - 4.0),
        }
        svg_text(out, at + 20.0, y, "start", "", label);
        at += 20.0 + 7.0 * label.chars().count() as f64 + 22.0;
    }
    let _ = writeln!(out, "</g>");
}

pub(super) fn legend_items(series: &[String], with_truth: bool) -> Vec<(String, Glyph)> {
    let mut items: Vec<(String, Glyph)> =
        series.iter().enumerate().map(|(i, s)| (s.clone(), Glyph::Swatch(series_color(s, i)))).collect();
    items.push(("95% interval".into(), Glyph::ErrorBar));
    if with_truth {
        items.push(("true value (synthetic data)".into(), Glyph::Truth));
    }
    items
}

/// Horizontal grid lines and y tick labels of a vertical value axis.
pub(super) fn y_axis(
    out: &mut String,
    y: Scale,
    left: f64,
    right: f64,
    (min, max, step): (f64, f64, f64),
    share: bool,
    title: &str,
) {
    for t in ticks(min, max, step) {
        let yy = y.at(t);
        svg_line(out, left, yy, right, yy, "#e3e3e3", 1.0);
        svg_text(out, left - 6.0, yy + 4.0, "end", "", &tick_label(t, step, share));
    }
    svg_line(out, left, y.r0, left, y.r1, "#444444", 1.0);
    let mid = (y.r0 + y.r1) / 2.0;
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        px(mid),
        px(mid),
        escape_html(title)
    );
}

/// The value range a chart must show: values, interval ends and (when shown) true values.
pub(super) fn extent<'a>(rows: impl Iterator<Item = &'a ReportRow>, synthetic: bool) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for r in rows {
        let mut vals = vec![r.value, r.ci95.0, r.ci95.1];
        if synthetic {
            vals.extend(r.truth);
        }
        for v in vals.into_iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    (lo, hi)
}

pub(super) fn note(text: &str) -> String {
    format!("<p class=\"chart-note\">{}</p>\n", escape_html(text))
}

pub(super) fn figure(title: &str, caption: &str, body: &str) -> String {
    format!(
        "<figure>\n<figcaption><strong>{}</strong> {}</figcaption>\n{}</figure>\n",
        escape_html(title),
        escape_html(caption),
        body
    )
}

/// The headline chart: each arm's change and the difference between arms, as points with 95% intervals around a zero line.
pub(super) fn chart_headline(rows: &[&ReportRow], synthetic: bool) -> String {
    let title = "The headline, with 95% intervals.";
    let with_truth = synthetic && rows.iter().any(|r| r.truth.is_some());
    let (lo, hi) = extent(rows.iter().copied(), synthetic);
    let (min, max, step) = nice_scale(lo.min(0.0), hi.max(0.0));
    let (left, right, top, bottom) = (70.0, 20.0, 20.0, 80.0);
    let y = Scale { d0: min, d1: max, r0: CHART_H - bottom, r1: top };
    let mut out = String::new();
    let unit = rows.first().map_or(UNIT_PER_PERSON, |r| r.unit.as_str()).to_string();
    svg_open(
        &mut out,
        "chart-headline",
        "The headline: change per arm and the difference between arms",
        "Points: the released values; black bars: 95% intervals over the noise; the line at 0 is no change.",
    );
    y_axis(&mut out, y, left, CHART_W - right, (min, max, step), unit == UNIT_SHARE, &format!("change, {unit}"));
    let plot_w = CHART_W - left - right;
    let slot = plot_w / rows.len().max(1) as f64;
    svg_line(&mut out, left, y.at(0.0), CHART_W - right, y.at(0.0), "#444444", 1.5);
    for (i, r) in rows.iter().enumerate() {
        let x = left + slot * (i as f64 + 0.5);
        let name = if r.key.contains(DID) { "difference between arms".to_string() } else { format_group(&r.group) };
        svg_text(&mut out, x, CHART_H - bottom + 20.0, "middle", "", &name);
        error_bar(&mut out, true, x, y.at(r.ci95.0), y.at(r.ci95.1));
        let color = if r.key.contains(DID) { "#5e3c99" } else { series_color(&format_group(&r.group), i) };
        let _ = writeln!(
            out,
            r#"<circle cx="{}" cy="{}" r="6" fill="{color}"><title>{}</title></circle>"#,
            px(x),
            px(y.at(r.value)),
            escape_html(&format!("{name}: {}", format_value(r.value, &r.unit)))
        );
        if with_truth {
            if let Some(t) = r.truth {
                diamond(&mut out, x + 14.0, y.at(t));
            }
        }
        svg_text(
            &mut out,
            x + 12.0,
            y.at(r.value) + 4.0,
            "start",
            r#" font-size="11""#,
            &format_value(r.value, &r.unit),
        );
    }
    let mut items = vec![("95% interval".to_string(), Glyph::ErrorBar)];
    if with_truth {
        items.push(("true value (synthetic data)".into(), Glyph::Truth));
    }
    legend(&mut out, left, CHART_H - 18.0, &items);
    out.push_str("</svg>\n");
    let caption = rows.first().map_or(String::new(), |r| {
        format!("{}: per arm, and diversion minus comparison (difference in differences).", r.label)
    });
    figure(title, &caption, &out)
}

pub(super) const ARREST_PERIODS: [((i32, i32), &str); 3] = [
    ((-182, -1), "6 months before referral"),
    ((0, 181), "6 months after referral"),
    ((182, 364), "6 to 12 months after referral"),
];

/// Chart (a): mean arrests per person before and after referral, by arm, with 95% intervals.
pub(super) fn chart_arrests(rows: &[ReportRow], synthetic: bool) -> String {
    let title = "Arrests per person before and after referral.";
    let key = |(a, b): (i32, i32)| format!("arrests_per_person.mean[{a},{b}]");
    let present: Vec<((i32, i32), &str)> = ARREST_PERIODS
        .iter()
        .copied()
        .filter(|(w, _)| rows.iter().any(|r| r.key == key(*w) && series_of(&r.group).is_some()))
        .collect();
    let missing: Vec<String> = ARREST_PERIODS
        .iter()
        .take(2)
        .filter(|(w, _)| !present.iter().any(|(p, _)| p == w))
        .map(|((a, b), name)| format!("the {name} (from={a}, to={b})"))
        .collect();
    if !missing.is_empty() {
        return figure(
            title,
            "",
            &note(&format!(
                "Not drawn: the analysis arrests_per_person (grouped by arm) was not run for {}.",
                missing.join(" and ")
            )),
        );
    }
    let keys: Vec<String> = present.iter().map(|(w, _)| key(*w)).collect();
    let series = series_among(rows, &keys);
    let cells: Vec<Vec<Option<&ReportRow>>> =
        present.iter().map(|(w, _)| series.iter().map(|s| find_row(rows, &key(*w), s)).collect()).collect();
    let shown = cells.iter().flatten().flatten().copied();
    let with_truth = synthetic && cells.iter().flatten().flatten().any(|r| r.truth.is_some());
    let (lo, hi) = extent(shown, synthetic);
    let (min, max, step) = nice_scale(lo.min(0.0), hi.max(0.0));

    let (left, right, top, bottom) = (70.0, 20.0, 20.0, 80.0);
    let y = Scale { d0: min, d1: max, r0: CHART_H - bottom, r1: top };
    let mut out = String::new();
    svg_open(
        &mut out,
        "chart-arrests",
        "Arrests per person before and after referral, by arm",
        "Bars: mean arrests per person in each period; black bars: 95% intervals over the noise.",
    );
    y_axis(&mut out, y, left, CHART_W - right, (min, max, step), false, "arrests per person");
    let plot_w = CHART_W - left - right;
    let group_w = plot_w / present.len().max(1) as f64;
    let bar_w = (group_w * 0.7 / series.len().max(1) as f64).min(56.0);
    for (p, (_, name)) in present.iter().enumerate() {
        let center = left + group_w * (p as f64 + 0.5);
        svg_text(&mut out, center, CHART_H - bottom + 20.0, "middle", "", name);
        for (i, s) in series.iter().enumerate() {
            let Some(row) = cells.get(p).and_then(|c| c.get(i)).copied().flatten() else {
                continue;
            };
            let x = center + (i as f64 - (series.len() as f64 - 1.0) / 2.0) * bar_w;
            let (y0, yv) = (y.at(0.0_f64.max(min)), y.at(row.value));
            let _ = writeln!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>"#,
                px(x - bar_w * 0.45),
                px(y0.min(yv)),
                px(bar_w * 0.9),
                px((y0 - yv).abs()),
                series_color(s, i),
                escape_html(&format!("{s}, {name}: {}", format_value(row.value, &row.unit)))
            );
            error_bar(&mut out, true, x, y.at(row.ci95.0), y.at(row.ci95.1));
            if with_truth {
                if let Some(t) = row.truth {
                    diamond(&mut out, x, y.at(t));
                }
            }
            svg_text(
                &mut out,
                x,
                y.at(row.ci95.1).min(yv) - 7.0,
                "middle",
                r#" font-size="11""#,
                &format_value(row.value, &row.unit),
            );
        }
    }
    svg_line(&mut out, left, y.at(0.0_f64.max(min)), CHART_W - right, y.at(0.0_f64.max(min)), "#444444", 1.0);
    legend(&mut out, left, CHART_H - 18.0, &legend_items(&series, with_truth));
    out.push_str("</svg>\n");
    let caption =
        "Mean number of arrests per person in each period around the referral (analysis arrests_per_person), \
                   with the range that holds the value 19 times out of 20 given the noise.";
    figure(title, caption, &out)
}

/// Month → share row, per series, for permanent housing.
pub(super) fn housing_rows(rows: &[ReportRow]) -> BTreeMap<u32, Vec<&ReportRow>> {
    let mut by_month: BTreeMap<u32, Vec<&ReportRow>> = BTreeMap::new();
    for r in rows {
        let month = r
            .key
            .strip_prefix("housing_status.share@m")
            .and_then(|rest| rest.strip_suffix("=permanent"))
            .or_else(|| r.key.strip_prefix("housing_at_month.share:permanent@m"))
            .and_then(|m| m.parse::<u32>().ok());
        if let (Some(m), Some(_)) = (month, series_of(&r.group)) {
            by_month.entry(m).or_default().push(r);
        }
    }
    by_month
}

/// Chart (b): share in permanent housing at intake and months after, by arm, with 95% intervals.
pub(super) fn chart_housing(rows: &[ReportRow], synthetic: bool) -> String {
    let title = "Permanent housing over time.";
    let by_month = housing_rows(rows);
    if by_month.is_empty() {
        return figure(
            title,
            "",
            &note(
                "Not drawn: the analysis housing_status (share in permanent housing at intake and 6, 12, 18 months, grouped by arm) was not run.",
            ),
        );
    }
    let mut series: Vec<String> = by_month.values().flatten().filter_map(|r| series_of(&r.group)).collect();
    series.sort_by_key(|x| series_rank(x));
    series.dedup();
    // One row per (month, series): housing_status first, then the histogram.
    let pick = |m: u32, s: &str| -> Option<&ReportRow> {
        let list = by_month.get(&m)?;
        list.iter()
            .find(|r| r.analysis == "housing_status" && series_of(&r.group).as_deref() == Some(s))
            .or_else(|| list.iter().find(|r| series_of(&r.group).as_deref() == Some(s)))
            .copied()
    };
    let months: Vec<u32> = by_month.keys().copied().collect();
    // A series whose every interval covers 0% to 100% says nothing (e.g. no one with a status): left out.
    let (series, blank): (Vec<String>, Vec<String>) = series
        .into_iter()
        .partition(|s| months.iter().filter_map(|&m| pick(m, s)).any(|r| r.ci95.0 > 0.0 || r.ci95.1 < 1.0));
    if series.is_empty() {
        return figure(
            title,
            "",
            &note("Not drawn: every interval of housing_status covers 0% to 100% (too few persons with a status)."),
        );
    }
    let shown: Vec<&ReportRow> = months.iter().flat_map(|&m| series.iter().filter_map(move |s| pick(m, s))).collect();
    let with_truth = synthetic && shown.iter().any(|r| r.truth.is_some());
    let (lo, hi) = extent(shown.iter().copied(), synthetic);
    let (min, max, step) = nice_scale(lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0));
    let (min, max) = (min.max(0.0), max.min(1.0));
    let (min, max) = if max - min < step * 0.5 { (0.0, 1.0) } else { (min, max) };
    let step = if (min, max) == (0.0, 1.0) && step > 0.25 { 0.2 } else { step };

    let (left, right, top, bottom) = (70.0, 30.0, 20.0, 80.0);
    let y = Scale { d0: min, d1: max, r0: CHART_H - bottom, r1: top };
    let (m0, m1) = (months.first().copied().unwrap_or(0), months.last().copied().unwrap_or(0));
    let pad = 50.0;
    let x = |m: u32| {
        if m1 == m0 {
            (left + CHART_W - right) / 2.0
        } else {
            left + pad + f64::from(m - m0) / f64::from(m1 - m0) * (CHART_W - left - right - 2.0 * pad)
        }
    };
    let mut out = String::new();
    svg_open(
        &mut out,
        "chart-housing",
        "Share in permanent housing at intake and after, by arm",
        "Points: share of persons in permanent housing at each month after intake; black bars: 95% intervals over the noise.",
    );
    y_axis(&mut out, y, left, CHART_W - right, (min, max, step), true, "share in permanent housing");
    svg_line(&mut out, left, y.r0, CHART_W - right, y.r0, "#444444", 1.0);
    for &m in &months {
        let name = if m == 0 { "at intake".to_string() } else { format!("{m} months") };
        svg_text(&mut out, x(m), CHART_H - bottom + 20.0, "middle", "", &name);
    }
    let n = series.len() as f64;
    for (i, s) in series.iter().enumerate() {
        let dodge = (i as f64 - (n - 1.0) / 2.0) * 10.0;
        let color = series_color(s, i);
        let points: Vec<(f64, &ReportRow)> =
            months.iter().filter_map(|&m| pick(m, s).map(|r| (x(m) + dodge, r))).collect();
        if points.len() > 1 {
            let path: Vec<String> =
                points.iter().map(|(xx, r)| format!("{},{}", px(*xx), px(y.at(r.value.clamp(0.0, 1.0))))).collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5"/>"#,
                path.join(" ")
            );
        }
        for (xx, r) in &points {
            error_bar(&mut out, true, *xx, y.at(r.ci95.0.clamp(0.0, 1.0)), y.at(r.ci95.1.clamp(0.0, 1.0)));
            let _ = writeln!(
                out,
                r##"<circle cx="{}" cy="{}" r="5" fill="{color}" stroke="#ffffff" stroke-width="1.5"><title>{}</title></circle>"##,
                px(*xx),
                px(y.at(r.value.clamp(0.0, 1.0))),
                escape_html(&format!("{s}: {}", format_value(r.value, &r.unit)))
            );
            if with_truth {
                if let Some(t) = r.truth {
                    diamond(&mut out, *xx, y.at(t.clamp(0.0, 1.0)));
                }
            }
            if series.len() <= 2 {
                let (dx, anchor) = if i == 0 { (-9.0, "end") } else { (9.0, "start") };
                svg_text(
                    &mut out,
                    xx + dx,
                    y.at(r.value.clamp(0.0, 1.0)) + 4.0,
                    anchor,
                    r#" font-size="11""#,
                    &format_value(r.value, &r.unit),
                );
            }
        }
    }
    legend(&mut out, left, CHART_H - 18.0, &legend_items(&series, with_truth));
    out.push_str("</svg>\n");
    let not_run: Vec<String> = STATUS_MONTHS
        .iter()
        .filter(|m| !by_month.contains_key(m))
        .map(|&m| if m == 0 { "at intake".to_string() } else { format!("month {m}") })
        .collect();
    let mut caption =
        "Share of persons in permanent housing at intake and in the months after it (analysis housing_status), \
                       among persons with a status recorded that month, with 95% intervals."
            .to_string();
    if !not_run.is_empty() {
        let _ = write!(caption, " Not run: {}.", not_run.join(", "));
    }
    if !blank.is_empty() {
        let _ = write!(
            caption,
            " Not shown: {} (every interval covers 0% to 100%: too few persons with a housing status).",
            blank.join(", ")
        );
    }
    figure(title, &caption, &out)
}

/// One series of the funnel: (stage name, value, interval if released, truth).
pub(super) type FunnelBar = (String, f64, Option<(f64, f64)>, Option<f64>);

/// Chart (c): the referral funnel as horizontal bars, by arm.
pub(super) fn chart_funnel(rows: &[ReportRow], synthetic: bool) -> String {
    let title = "The referral funnel.";
    // The funnel's qualifier: timely within 7 days if run so, else the first one found.
    let mut quals: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.key.strip_prefix("referral_funnel.persons"))
        .filter(|q| q.starts_with('@'))
        .collect();
    quals.sort_by_key(|q| *q != "@7d");
    let within = quals
        .first()
        .and_then(|q| q.strip_prefix('@'))
        .and_then(|q| q.strip_suffix('d'))
        .and_then(|d| d.parse::<i32>().ok());
    let (Some(qual), Some(within)) = (quals.first().copied(), within) else {
        return figure(title, "", &note("Not drawn: the analysis referral_funnel (grouped by arm) was not run."));
    };
    let key = |stat: &str| format!("referral_funnel.{stat}{qual}");
    let stages = ["ineligible", "declined", "no_timely_intake", "enrolled"];
    let mut keys: Vec<String> = stages.iter().map(|s| key(&format!("count:{s}"))).collect();
    keys.push(key("persons"));
    let all_series = series_among(rows, &keys);
    // Per series: referred (released), eligible and not declined (sums of released stage counts), enrolled (released).
    let mut series: Vec<String> = Vec::new();
    let mut bars: Vec<Vec<FunnelBar>> = Vec::new();
    for s in &all_series {
        let get = |k: &str| find_row(rows, &key(k), s);
        let (Some(referred), Some(inel), Some(decl), Some(_), Some(enr)) = (
            get("persons"),
            get("count:ineligible"),
            get("count:declined"),
            get("count:no_timely_intake"),
            get("count:enrolled"),
        ) else {
            continue;
        };
        // Stages by subtraction from the persons referred, so that the bars never grow down the funnel.
        let eligible = (referred.value - inel.value).max(0.0);
        let not_declined = (eligible - decl.value).max(0.0);
        let eligible_truth = referred.truth.zip(inel.truth).map(|(r, i)| r - i);
        let not_declined_truth = eligible_truth.zip(decl.truth).map(|(e, d)| e - d);
        series.push(s.clone());
        bars.push(vec![
            ("referred".into(), referred.value, Some(referred.ci95), referred.truth),
            ("eligible".into(), eligible, None, eligible_truth),
            ("not declined".into(), not_declined, None, not_declined_truth),
            (format!("timely intake (within {within} days): enrolled"), enr.value, Some(enr.ci95), enr.truth),
        ]);
    }
    if series.is_empty() {
        return figure(
            title,
            "",
            &note("Not drawn: the analysis referral_funnel was not run grouped by arm (its stage counts are missing)."),
        );
    }
    let with_truth = synthetic && bars.iter().flatten().any(|b| b.3.is_some());
    let mut hi: f64 = 0.0;
    for (_, v, ci, t) in bars.iter().flatten() {
        hi = hi.max(*v);
        if let Some((_, b)) = ci {
            hi = hi.max(*b);
        }
        if with_truth {
            hi = hi.max(t.unwrap_or(0.0));
        }
    }
    let (min, max, step) = nice_scale(0.0, hi);
    let (left, right, top, bottom) = (210.0, 70.0, 16.0, 64.0);
    let xs = Scale { d0: min, d1: max, r0: left, r1: CHART_W - right };
    let mut out = String::new();
    svg_open(
        &mut out,
        "chart-funnel",
        "Referral funnel, by arm",
        "Horizontal bars: persons referred, eligible, not declined, and with a timely intake (enrolled); black bars: 95% intervals of released counts.",
    );
    for t in ticks(min, max, step) {
        let xx = xs.at(t);
        svg_line(&mut out, xx, top, xx, CHART_H - bottom, "#e3e3e3", 1.0);
        svg_text(&mut out, xx, CHART_H - bottom + 16.0, "middle", "", &tick_label(t, step, false));
    }
    svg_line(&mut out, left, top, left, CHART_H - bottom, "#444444", 1.0);
    svg_line(&mut out, left, CHART_H - bottom, CHART_W - right, CHART_H - bottom, "#444444", 1.0);
    svg_text(&mut out, (left + CHART_W - right) / 2.0, CHART_H - bottom + 34.0, "middle", "", "persons");
    let n_stages = bars.first().map_or(0, Vec::len);
    let stage_h = (CHART_H - bottom - top) / n_stages.max(1) as f64;
    let bar_h = (stage_h * 0.75 / series.len().max(1) as f64).min(26.0);
    for stage in 0..n_stages {
        let center = top + stage_h * (stage as f64 + 0.5);
        let name = bars.first().and_then(|b| b.get(stage)).map_or("", |b| b.0.as_str());
        let label = name.split(": ").collect::<Vec<_>>();
        match label.as_slice() {
            [a, b] => {
                svg_text(&mut out, left - 8.0, center - 3.0, "end", "", a);
                svg_text(&mut out, left - 8.0, center + 11.0, "end", "", b);
            }
            _ => svg_text(&mut out, left - 8.0, center + 4.0, "end", "", name),
        }
        for (i, s) in series.iter().enumerate() {
            let Some((_, v, ci, t)) = bars.get(i).and_then(|b| b.get(stage)) else {
                continue;
            };
            let referred = bars.get(i).and_then(|b| b.first()).map_or(0.0, |b| b.1);
            let yy = center + (i as f64 - (series.len() as f64 - 1.0) / 2.0) * bar_h;
            let _ = writeln!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>"#,
                px(left),
                px(yy - bar_h * 0.42),
                px((xs.at(*v) - left).max(0.0)),
                px(bar_h * 0.84),
                series_color(s, i),
                escape_html(&format!("{s}, {name}: {}", format_value(*v, UNIT_PERSONS)))
            );
            let mut end = xs.at(*v);
            if let Some((a, b)) = ci {
                error_bar(&mut out, false, yy, xs.at(*a), xs.at(*b));
                end = end.max(xs.at(*b));
            }
            if with_truth {
                if let Some(t) = t {
                    diamond(&mut out, xs.at(*t), yy);
                    end = end.max(xs.at(*t) + 5.0);
                }
            }
            let share = if stage > 0 && referred > 0.0 {
                format!(" ({})", percent((v / referred).clamp(0.0, 1.0), 0))
            } else {
                String::new()
            };
            svg_text(
                &mut out,
                end + 6.0,
                yy + 4.0,
                "start",
                r#" font-size="11""#,
                &format!("{}{share}", format_value(*v, UNIT_PERSONS)),
            );
        }
    }
    legend(&mut out, 20.0, CHART_H - 12.0, &legend_items(&series, with_truth));
    out.push_str("</svg>\n");
    let caption = format!(
        "Persons referred and how many remained at each step (analysis referral_funnel): eligible at screening, \
         not declining, and with an intake within {within} days of referral, which is what enrolled means here. \
         Eligible and not declined are computed from the released counts (referred minus ineligible, minus declined) \
         and carry no interval of their own; \
         percentages are of the persons referred."
    );
    figure(title, &caption, &out)
}
