//! Executing a plan: per-person values aggregated by group, the releases drawn through the mechanism, the answer assembled (and its largest possible size).

use super::*;

impl Plan {
    /// The group index of person `p`, or `None` when outside the cohort's categories.
    pub(super) fn group_of(&self, pop: &Population, p: usize) -> Option<usize> {
        for c in Category::ALL {
            if let Some(a) = &self.allowed[c.index()] {
                let code = pop.persons.category[c.index()][p];
                if !a.get(usize::from(code)).copied().unwrap_or(false) {
                    return None;
                }
            }
        }
        let mut g = 0usize;
        for ((c, codes), pos) in self.group_by.iter().zip(&self.group_pos) {
            let code = pop.persons.category[c.index()][p];
            let j = *pos.get(usize::from(code))?;
            if j == u16::MAX {
                return None;
            }
            g = g * codes.len() + usize::from(j);
        }
        Some(g)
    }

    /// The group's labels.
    pub(super) fn group_labels(&self, mut g: usize) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (c, codes) in self.group_by.iter().rev() {
            let n = codes.len().max(1);
            let code = codes.get(g % n).copied().unwrap_or(0);
            g /= n;
            let label = self.categories.values(*c).get(usize::from(code)).cloned().unwrap_or_default();
            out.insert(c.as_str().to_string(), label);
        }
        out
    }

    /// The exact per-group totals of each release, in release order. Never leaves this module.
    pub(super) fn aggregate(&self, pop: &Population) -> Vec<Vec<i64>> {
        let g = self.groups;
        let nb = self.bins.len();
        let mut count = vec![0i64; if matches!(self.shape, Shape::Count | Shape::SumCount) { g } else { 0 }];
        let mut sum =
            vec![0i64; if matches!(self.shape, Shape::Sum | Shape::SumCount | Shape::SumShared) { g } else { 0 }];
        let mut bins = vec![0i64; if self.shape == Shape::Bins { g * nb } else { 0 }];
        let clamp = |v: i64| match self.bounds {
            Some([l, u]) => v.clamp(l, u),
            None => v,
        };
        for p in 0..pop.len() {
            let Some(group) = self.group_of(pop, p) else { continue };
            let anchor = pop.persons.anchor[p];
            let required = self.require.iter().all(|(t, w)| {
                let ev = &pop.kinds[t.kind];
                EventTest::in_window(ev, p, anchor, *w).any(|i| t.matches(ev, i))
            });
            if !required {
                continue;
            }
            let Some(v) = self.value.of(pop, p, None) else { continue };
            match self.shape {
                Shape::Count => count[group] += i64::from(v == 1),
                Shape::Bins => {
                    // Share: bin 0 holds value 1, bin 1 value 0; histogram: the category code is the bin.
                    let bin = if matches!(self.query.statistic, Statistic::Share {}) {
                        usize::from(v != 1)
                    } else {
                        v as usize
                    };
                    if bin < nb {
                        bins[group * nb + bin] += 1;
                    }
                }
                Shape::Sum => sum[group] += clamp(v),
                Shape::SumCount | Shape::SumShared => {
                    let v = match self.baseline {
                        Some(b) => match self.value.of(pop, p, Some(b)) {
                            Some(before) => v - before,
                            None => continue,
                        },
                        None => v,
                    };
                    sum[group] += clamp(v);
                    if self.shape == Shape::SumCount {
                        count[group] += 1;
                    }
                }
            }
        }
        match self.shape {
            Shape::Count => vec![count],
            Shape::Bins => vec![bins],
            Shape::Sum | Shape::SumShared => vec![sum],
            Shape::SumCount => vec![sum, count],
        }
    }
}

/// Run a plan over a population, drawing noise from `noise`.
///
/// The caller reserves the plan's epsilon before calling (the steward's
/// ledger). A plan with a shared denominator needs its census: use
/// [`execute_with_census`].
pub fn execute(plan: &Plan, population: &Population, noise: &mut dyn Noise) -> Result<Answer, QueryError> {
    execute_with_census(plan, population, noise, None)
}

/// Run a plan whose denominator is the shared census `census` (the released
/// answer of `plan.census()`), drawing noise for the plan's own releases only.
/// The census is post-processed, not released again: it costs nothing here.
pub fn execute_with_census(
    plan: &Plan,
    population: &Population,
    noise: &mut dyn Noise,
    census: Option<&Answer>,
) -> Result<Answer, QueryError> {
    if plan.layout != population.layout || plan.categories != population.categories {
        return Err(QueryError::SchemaMismatch);
    }
    let census = plan.census_releases(census)?;
    let totals = plan.aggregate(population);
    let mut released: Vec<Vec<Release>> = Vec::with_capacity(totals.len());
    for (r, values) in plan.releases.iter().zip(&totals) {
        let out = noise.release_all(values, r.sensitivity, r.epsilon)?;
        if out.len() != values.len() {
            return Err(QueryError::Noise(dp::DpError::OpenDp("release returned a different number of values".into())));
        }
        released.push(out);
    }
    drop(totals);
    Ok(plan.answer(cells(plan, &released, census.as_deref())?))
}

/// An answer-sized f64 that takes the most characters serde_json can write (24).
pub(super) const WIDEST_F64: f64 = -2.2250738585072014e-308;

/// Counts the bytes written to it.
pub(super) struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Plan {
    /// How many groups the query releases values for.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The plan of the shared census this query divides by, if it names one (`Query::persons`).
    pub fn census(&self) -> Option<&Plan> {
        self.census.as_deref()
    }

    pub(super) fn answer(&self, values: Vec<Cell>) -> Answer {
        Answer {
            query_hash: self.hash.clone(),
            canonical: self.canonical.clone(),
            statistic: self.query.statistic.name().into(),
            bounds: self.bounds,
            epsilon_spent: self.query.epsilon,
            budget_left: None,
            releases: self.releases.clone(),
            values,
        }
    }

    /// The census's noisy counts, one per group, from its released answer; checks that it is this plan's census.
    pub(super) fn census_releases(&self, census: Option<&Answer>) -> Result<Option<Vec<Release>>, QueryError> {
        let (Some(plan), Some(answer)) = (self.census.as_deref(), census) else {
            return match (&self.census, census) {
                (None, None) => Ok(None),
                (Some(_), None) => Err(QueryError::Unsupported(
                    "this query divides by a shared census: release the census first".into(),
                )),
                _ => Err(QueryError::Unsupported("a census was given to a query that has its own count".into())),
            };
        };
        let wrong = || QueryError::Unsupported("the census given is not the one this query divides by".into());
        if answer.query_hash != plan.hash || answer.values.len() != self.groups {
            return Err(wrong());
        }
        let release = plan.releases.first().ok_or_else(wrong)?;
        answer
            .values
            .iter()
            .enumerate()
            .map(|(g, cell)| {
                let noisy = cell.noisy.first().ok_or_else(wrong)?;
                if cell.statistic != "count" || cell.group != self.group_labels(g) {
                    return Err(wrong());
                }
                Ok(Release {
                    value: noisy.value,
                    sensitivity: release.sensitivity,
                    epsilon: release.epsilon,
                    scale: noisy.noise_scale,
                    ci95_half_width: noisy.ci95_half_width,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The values the answer would hold if every noisy release came out at
    /// its expected value: `persons(group)` persons in each group, each with
    /// the per-person value `assumed` (a mean, a mean change, a share, or the
    /// per-person value in a rate's window; a histogram's persons spread
    /// evenly over its bins). Intervals are computed by the very code that
    /// computes released ones, from the noise scales alone: no data, no noise.
    pub fn expected(
        &self,
        persons: &dyn Fn(&BTreeMap<String, String>) -> f64,
        assumed: f64,
    ) -> Result<Answer, QueryError> {
        let release = |value: f64, r: &PlannedRelease| Release {
            value: value.round() as i64,
            sensitivity: r.sensitivity,
            epsilon: r.epsilon,
            scale: r.noise_scale,
            ci95_half_width: r.ci95_half_width,
        };
        let nb = self.bins.len();
        let mut released: Vec<Vec<Release>> = self.releases.iter().map(|_| Vec::new()).collect();
        let mut census = Vec::new();
        for g in 0..self.groups {
            let n = persons(&self.group_labels(g)).max(0.0);
            if let Some(c) = &self.census {
                let r =
                    c.releases.first().ok_or_else(|| QueryError::Unsupported("a census without a release".into()))?;
                census.push(release(n, r));
            }
            for (i, r) in self.releases.iter().enumerate() {
                match (self.shape, i) {
                    (Shape::Count, _) if self.query.outcome.is_none() => released[i].push(release(n, r)),
                    (Shape::Count, _) => released[i].push(release(assumed.clamp(0.0, 1.0) * n, r)),
                    (Shape::Bins, _) if matches!(self.query.statistic, Statistic::Share {}) => {
                        let yes = assumed.clamp(0.0, 1.0) * n;
                        released[i].push(release(yes, r));
                        released[i].push(release(n - yes, r));
                    }
                    (Shape::Bins, _) => {
                        released[i].extend((0..nb).map(|_| release(n / nb.max(1) as f64, r)));
                    }
                    (Shape::SumCount, 1) => released[i].push(release(n, r)),
                    _ => released[i].push(release(assumed * n, r)),
                }
            }
        }
        let census = self.census.as_ref().map(|_| census);
        Ok(self.answer(cells(self, &released, census.as_deref())?))
    }

    /// The most bytes the JSON of this query's answer can take, whatever the
    /// data and the noise: the answer's shape is fixed by the plan, and every
    /// number is written at its widest. Touches no data.
    pub fn max_answer_bytes(&self) -> usize {
        // The shape comes from the planned releases; the numbers are widened below.
        let widest = |r: &PlannedRelease| Release {
            value: 1,
            sensitivity: r.sensitivity,
            epsilon: r.epsilon,
            scale: r.noise_scale,
            ci95_half_width: r.ci95_half_width,
        };
        let mut released: Vec<Vec<Release>> =
            self.releases.iter().map(|r| (0..r.values).map(|_| widest(r)).collect()).collect();
        let census: Option<Vec<Release>> = match self.census.as_ref().map(|c| c.releases.first()) {
            None => None,
            Some(Some(r)) => Some((0..self.groups).map(|_| widest(r)).collect()),
            Some(None) => return usize::MAX,
        };
        // Any values will do for the shape; the numbers are widened below.
        for r in released.iter_mut().flatten() {
            r.value = 1;
        }
        let Ok(mut values) = cells(self, &released, census.as_deref()) else {
            return usize::MAX;
        };
        for c in &mut values {
            c.value = WIDEST_F64;
            c.ci95 = (WIDEST_F64, WIDEST_F64);
            c.noise_scale = WIDEST_F64;
            c.epsilon = WIDEST_F64;
            for n in &mut c.noisy {
                n.value = i64::MIN;
                n.noise_scale = WIDEST_F64;
                n.ci95_half_width = WIDEST_F64;
            }
        }
        let mut answer = self.answer(values);
        answer.budget_left = Some(WIDEST_F64);
        answer.epsilon_spent = WIDEST_F64;
        for r in &mut answer.releases {
            r.values = usize::MAX;
            r.sensitivity = i64::MIN;
            r.epsilon = WIDEST_F64;
            r.noise_scale = WIDEST_F64;
            r.ci95_half_width = WIDEST_F64;
        }
        let mut count = ByteCount(0);
        match serde_json::to_writer(&mut count, &answer) {
            Ok(()) => count.0,
            Err(_) => usize::MAX,
        }
    }
}
