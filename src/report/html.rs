//! The report as one self-contained HTML page: inline CSS and SVG, no script, no external reference, every text escaped.

use super::*;

pub(super) const CSS: &str = "
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 980px; padding: 24px 20px 48px; color: #1d1d1d; background: #ffffff;
  font: 16px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; }
header { border-bottom: 3px solid #1b6ca8; margin-bottom: 20px; }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 32px 0 8px; }
.meta { color: #555555; margin: 0 0 12px; }
.badge { display: inline-block; background: #fff3cd; border: 1px solid #e0c36a; border-radius: 4px; padding: 0 6px; font-size: 0.85em; }
.note { background: #f4f8fb; border-left: 4px solid #1b6ca8; padding: 12px 16px; }
.note ul { margin: 6px 0 0; padding-left: 20px; }
.lines p { margin: 4px 0; }
figure { margin: 24px 0; page-break-inside: avoid; }
figcaption { margin-bottom: 6px; }
svg.chart { width: 100%; height: auto; max-width: 720px; display: block; border: 1px solid #e6e6e6; }
.chart-note { background: #fafafa; border: 1px dashed #bbbbbb; padding: 10px 14px; color: #444444; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { border-bottom: 1px solid #e1e1e1; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td .an { display: block; color: #777777; font-size: 0.8em; font-family: ui-monospace, Menlo, Consolas, monospace; }
td.miss { color: #a4262c; font-weight: bold; }
footer { margin-top: 32px; color: #666666; font-size: 0.85em; }
@media print { body { max-width: none; } }
";

/// The report as one self-contained HTML5 document (inline CSS and SVG, no script, no external reference).
pub fn render_html(input: &ReportInput) -> String {
    let e = escape_html;
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(h, "<title>Evaluation report: {}</title>", e(&input.program));
    let _ = writeln!(h, "<style>{CSS}</style>\n</head>\n<body>");

    // Header.
    h.push_str("<header>\n");
    let _ = writeln!(h, "<h1>{}: evaluation report</h1>", e(&input.program));
    let _ = write!(
        h,
        "<p class=\"meta\">Generated <time datetime=\"{}\">{}</time>",
        e(&input.generated),
        e(&human_date(&input.generated))
    );
    if input.synthetic {
        h.push_str(" &middot; <span class=\"badge\">synthetic data: a demonstration, not a real program</span>");
    }
    h.push_str("</p>\n");
    if !input.title.is_empty() {
        let _ = writeln!(h, "<p>{}</p>", e(&input.title));
    }
    h.push_str("</header>\n");

    // The headline first: in words, then as a chart.
    let headline = headline_rows(&input.rows);
    if !headline.is_empty() {
        h.push_str("<section class=\"headline\">\n<h2>Headline</h2>\n<ul>\n");
        for r in &headline {
            let _ = writeln!(h, "<li>{}</li>", e(&headline_sentence(r, input.synthetic)));
        }
        h.push_str("</ul>\n");
        h.push_str(&chart_headline(&headline, input.synthetic));
        h.push_str("</section>\n");
    }

    // What the numbers are.
    h.push_str("<section class=\"note\">\n<h2>What these numbers are</h2>\n<ul>\n");
    h.push_str(
        "<li>Every number in this report is a <strong>noisy aggregate</strong>: a count, share, average or rate over \
         many people, released under <strong>differential privacy</strong>. Random noise of a known size was added \
         before release, so no person can be singled out, whether or not they are in the data.</li>\n",
    );
    h.push_str(
        "<li>Each number comes with a <strong>95% interval</strong>: the range that holds the true value 19 times out \
         of 20, given the noise. It does not account for errors in linking records between agencies, nor for \
         sampling (how this group of people differs from others who could have been referred).</li>\n",
    );
    h.push_str(
        "<li>Averages and rates count each person up to a limit (for example at most 5 arrests in a period), so that \
         one person cannot move a number by much; the limits are part of the privacy protection.</li>\n",
    );
    h.push_str(
        "<li>Each statistic spends part of a fixed <strong>privacy budget</strong> (epsilon, shown per row): the \
         smaller the epsilon spent, the more noise and the stronger the protection. The budget cannot be \
         overspent.</li>\n",
    );
    if input.synthetic {
        h.push_str(
            "<li>The data are <strong>synthetic</strong>, so the true values are known and shown beside the released \
             ones, with whether the interval holds them. With perfect linkage and no limits reached, about 19 in 20 \
             intervals should hold their true value.</li>\n",
        );
    }
    h.push_str("</ul>\n</section>\n");

    // Budget and linkage.
    h.push_str("<section class=\"lines\">\n");
    match &input.budget {
        Some(b) => {
            let _ = writeln!(h, "<p><strong>{}</strong></p>", e(&budget_sentence(b)));
        }
        None => h.push_str("<p>Privacy budget: not stated; the epsilon of each statistic is in the table.</p>\n"),
    }
    let _ = writeln!(h, "<p>{}</p>", e(&privacy_unit_sentence(input)));
    if let Some(l) = &input.linkage {
        let _ = writeln!(h, "<p>{}</p>", e(&linkage_sentence(l)));
    }
    if input.synthetic {
        for c in &input.clamps {
            let _ = writeln!(h, "<p>Clamp (synthetic truth): {}</p>", e(&clamp_sentence(c)));
        }
        let (inside, with) = coverage(&input.rows);
        if with > 0 {
            let _ = writeln!(
                h,
                "<p>True values inside their 95% interval: {inside} of {with} ({}).</p>",
                e(&percent(inside as f64 / with as f64, 0))
            );
        }
    }
    h.push_str("</section>\n");

    // Charts.
    h.push_str("<section>\n<h2>At a glance</h2>\n");
    h.push_str(&chart_arrests(&input.rows, input.synthetic));
    h.push_str(&chart_housing(&input.rows, input.synthetic));
    h.push_str(&chart_funnel(&input.rows, input.synthetic));
    h.push_str("</section>\n");

    // Table.
    h.push_str("<section>\n<h2>Every released statistic</h2>\n");
    let rest: Vec<&ReportRow> = input.rows.iter().filter(|r| !headline.iter().any(|x| std::ptr::eq(*x, *r))).collect();
    let rows_in_order: Vec<&ReportRow> = headline.iter().copied().chain(rest).collect();
    if input.rows.is_empty() {
        h.push_str("<p>No statistic was released.</p>\n");
    } else {
        h.push_str("<table>\n<thead>\n<tr><th>Statistic</th><th>Group</th><th class=\"num\">Value</th>");
        h.push_str("<th class=\"num\">95% interval</th><th class=\"num\">Epsilon</th>");
        if input.synthetic {
            h.push_str("<th class=\"num\">True value</th><th>In interval</th>");
        }
        h.push_str("</tr>\n</thead>\n<tbody>\n");
        for r in rows_in_order {
            let _ = write!(
                h,
                "<tr><td>{}<span class=\"an\">{}</span></td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{} &ndash; {}</td><td class=\"num\">{}</td>",
                e(&r.label),
                e(&r.analysis),
                e(&format_group(&r.group)),
                e(&format_value(r.value, &r.unit)),
                e(&format_value(r.ci95.0, &r.unit)),
                e(&format_value(r.ci95.1, &r.unit)),
                e(&format_epsilon(r.epsilon)),
            );
            if input.synthetic {
                match r.truth {
                    Some(t) if inside(r, t) => {
                        let _ = write!(h, "<td class=\"num\">{}</td><td>yes</td>", e(&format_value(t, &r.unit)));
                    }
                    Some(t) => {
                        let _ = write!(
                            h,
                            "<td class=\"num\">{}</td><td class=\"miss\">no</td>",
                            e(&format_value(t, &r.unit))
                        );
                    }
                    None => h.push_str("<td class=\"num\">&mdash;</td><td>&mdash;</td>"),
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</tbody>\n</table>\n");
    }
    h.push_str("</section>\n");

    // Where each epsilon went.
    if !input.spending.is_empty() {
        h.push_str("<section>\n<h2>Where the privacy budget went</h2>\n<table>\n<thead>\n");
        h.push_str("<tr><th>Released</th><th class=\"num\">Epsilon</th><th>Note</th></tr>\n</thead>\n<tbody>\n");
        for s in &input.spending {
            let note = if s.earlier { "released earlier; replayed at no cost" } else { "" };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                e(&s.what),
                e(&format_epsilon(s.epsilon)),
                note
            );
        }
        let total: f64 = input.spending.iter().map(|s| s.epsilon).sum();
        let _ = writeln!(
            h,
            "<tr><td><strong>total</strong></td><td class=\"num\"><strong>{}</strong></td><td></td></tr>",
            e(&format_epsilon(total))
        );
        h.push_str("</tbody>\n</table>\n</section>\n");
    }

    h.push_str(
        "<footer>\n<p>Made by divert. Statistics are released by the program's data steward only as differentially \
         private aggregates; no record, name or identifier left any agency for this report.</p>\n</footer>\n",
    );
    h.push_str("</body>\n</html>\n");
    h
}
