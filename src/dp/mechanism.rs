//! The noise mechanism: discrete Laplace noise on integers, drawn only through opendp 0.16 measurements.
//!
//! A release of an integer with sensitivity Δ (the most one person can
//! change it, L1) at privacy loss ε uses the discrete Laplace distribution of
//! scale s = Δ/ε: P(noise = k) ∝ exp(−|k|/s). The scale is not trusted as
//! computed: it is handed to opendp's `make_laplace`, and opendp's privacy map
//! of the resulting measurement must give map(Δ) ≤ ε. Floating-point
//! rounding can make Δ/ε a hair too small; the scale is then raised to the
//! next representable numbers (a few ulps at most) until the map agrees, and
//! refused if it never does.
//!
//! Sampling is opendp's (`sample_discrete_laplace`, exact arithmetic on big
//! integers and rationals, so it is safe against floating-point attacks),
//! drawing randomness from OpenSSL's CSPRNG (opendp feature `use-openssl`).
//! opendp's constructors are gated by the cargo feature `contrib`, enabled
//! in Cargo.toml; unlike the Python bindings, the Rust crate needs no runtime
//! `enable_features("contrib")` call, so constructing a mechanism does nothing
//! beyond building measurements.
//!
//! The 95% interval is opendp's `discrete_laplacian_scale_to_accuracy(s, 0.05)`:
//! the half-width `a` with P(|noise| ≥ a) = 0.05 for the continuous
//! extension, so `[noisy − a, noisy + a]` holds the true value with
//! probability at least 95% (over the noise only).

use std::collections::HashMap;

use opendp::accuracy::discrete_laplacian_scale_to_accuracy;
use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace};
use opendp::measures::MaxDivergence;
use opendp::metrics::{AbsoluteDistance, L1Distance};
use serde::{Deserialize, Serialize};

/// The largest epsilon one release (or one query) may spend.
pub const MAX_EPSILON: f64 = 10.0;
/// The largest sensitivity a release may declare.
pub const MAX_SENSITIVITY: i64 = 1_000_000;
/// Significance of the reported intervals: 95%.
pub const ALPHA_95: f64 = 0.05;
/// How many ulps the scale may be raised to satisfy opendp's privacy map.
const MAX_NUDGES: u32 = 64;

/// One noisy integer, with what it cost and how far from the truth it may be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The noisy value (true value + discrete Laplace noise).
    pub value: i64,
    /// The L1 sensitivity the release was made for.
    pub sensitivity: i64,
    /// The privacy loss of the release.
    pub epsilon: f64,
    /// The discrete Laplace scale s (noise standard deviation ≈ s·√2).
    pub scale: f64,
    /// Half-width of the 95% interval around `value`.
    pub ci95_half_width: f64,
}

/// Why noise could not be drawn. Carries no data values.
#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error("epsilon must be a finite number in (0, {MAX_EPSILON}], got {0}")]
    Epsilon(f64),
    #[error("sensitivity must be in 1..={MAX_SENSITIVITY}, got {0}")]
    Sensitivity(i64),
    #[error("opendp's privacy map does not confirm epsilon {epsilon} for sensitivity {sensitivity} at any scale near {scale}")]
    PrivacyMap { sensitivity: i64, epsilon: f64, scale: f64 },
    #[error("opendp: {0}")]
    OpenDp(String),
}

impl From<opendp::error::Error> for DpError {
    fn from(e: opendp::error::Error) -> DpError {
        // The variant and message only: opendp's backtrace is noise to an evaluator.
        DpError::OpenDp(match &e.message {
            Some(m) => format!("{}: {m}", e.variant),
            None => e.variant.to_string(),
        })
    }
}

/// The only way the query engine gets noise.
pub trait Noise {
    /// Release `true_value` with discrete Laplace noise calibrated to `sensitivity` and `epsilon`.
    fn release(&mut self, true_value: i64, sensitivity: i64, epsilon: f64) -> Result<Release, DpError>;

    /// Release a vector of values whose L1 sensitivity as a whole is
    /// `sensitivity` (one person changes the vector by at most that much in
    /// total: the values are counts or sums over disjoint sets of persons),
    /// for `epsilon` in all. Each value gets independent noise of the same
    /// scale as a single release.
    fn release_all(&mut self, true_values: &[i64], sensitivity: i64, epsilon: f64) -> Result<Vec<Release>, DpError> {
        true_values.iter().map(|&v| self.release(v, sensitivity, epsilon)).collect()
    }
}

fn check(sensitivity: i64, epsilon: f64) -> Result<(), DpError> {
    if !(epsilon.is_finite() && epsilon > 0.0 && epsilon <= MAX_EPSILON) {
        return Err(DpError::Epsilon(epsilon));
    }
    if !(1..=MAX_SENSITIVITY).contains(&sensitivity) {
        return Err(DpError::Sensitivity(sensitivity));
    }
    Ok(())
}

/// The next larger f64 (for positive finite `x`).
fn next_up(x: f64) -> f64 {
    f64::from_bits(x.to_bits() + 1)
}

type ScalarLaplace = Measurement<AtomDomain<i64>, AbsoluteDistance<i64>, MaxDivergence, i64>;
type VectorLaplace = Measurement<VectorDomain<AtomDomain<i64>>, L1Distance<i64>, MaxDivergence, Vec<i64>>;

fn scalar_measurement(scale: f64) -> Result<ScalarLaplace, DpError> {
    Ok(make_laplace(AtomDomain::<i64>::default(), AbsoluteDistance::<i64>::default(), scale, None)?)
}

fn vector_measurement(scale: f64) -> Result<VectorLaplace, DpError> {
    Ok(make_laplace(VectorDomain::new(AtomDomain::<i64>::default()), L1Distance::<i64>::default(), scale, None)?)
}

/// The discrete Laplace scale for `sensitivity` at `epsilon`: Δ/ε, raised by
/// as few ulps as needed for opendp's privacy map to confirm map(Δ) ≤ ε.
/// Touches no data and draws no noise.
pub fn noise_scale(sensitivity: i64, epsilon: f64) -> Result<f64, DpError> {
    check(sensitivity, epsilon)?;
    let mut scale = sensitivity as f64 / epsilon;
    for _ in 0..MAX_NUDGES {
        // The scalar and the vector measurements share the privacy map (ZExpFamily<1>: Δ/s, rounded up).
        let m = scalar_measurement(scale)?;
        if m.map(&sensitivity)? <= epsilon {
            return Ok(scale);
        }
        scale = next_up(scale);
    }
    Err(DpError::PrivacyMap { sensitivity, epsilon, scale })
}

/// Half-width of the (1 − `alpha`) interval of discrete Laplace noise of `scale` (opendp's accuracy function).
pub fn half_width(scale: f64, alpha: f64) -> Result<f64, DpError> {
    Ok(discrete_laplacian_scale_to_accuracy(scale, alpha)?)
}

/// Half-width of the 95% interval of discrete Laplace noise of `scale`.
pub fn ci95_half_width(scale: f64) -> Result<f64, DpError> {
    half_width(scale, ALPHA_95)
}

/// Measurement only (nothing is released this way; see docs/queries.md,
/// "Why pure ε and discrete Laplace"): the zero-concentrated DP budget ρ
/// whose conversion to (ε, δ)-DP by opendp's `make_zCDP_to_approxDP` gives
/// exactly `epsilon` at `delta`, found by bisection on the scale of a
/// discrete Gaussian measurement (`make_gaussian`) of sensitivity 1.
pub fn zcdp_rho_for(epsilon: f64, delta: f64) -> Result<f64, DpError> {
    use opendp::combinators::make_zCDP_to_approxDP;
    use opendp::measures::ZeroConcentratedDivergence;
    if !(epsilon.is_finite() && epsilon > 0.0 && delta > 0.0 && delta < 1.0) {
        return Err(DpError::Epsilon(epsilon));
    }
    let eps_at = |scale: f64| -> Result<(f64, f64), DpError> {
        let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            AtomDomain::<i64>::default(),
            AbsoluteDistance::<i64>::default(),
            scale,
            None,
        )?;
        let rho = m.map(&1)?;
        let profile = make_zCDP_to_approxDP(m)?.map(&1)?;
        Ok((rho, profile.epsilon(delta)?))
    };
    // ε(δ) falls as the scale grows: find the scale where it meets `epsilon`.
    let (mut lo, mut hi): (f64, f64) = (1e-3, 1e6);
    for _ in 0..200 {
        let mid = (lo * hi).sqrt();
        if eps_at(mid)?.1 > epsilon {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(eps_at(hi)?.0)
}

/// Measurement only: the (1 − `alpha`) half-width of discrete Gaussian noise
/// calibrated so that a release of L2 sensitivity `sensitivity` costs `rho`
/// (zCDP): scale σ = Δ/√(2ρ), confirmed by opendp's privacy map of
/// `make_gaussian`, half-width by opendp's `discrete_gaussian_scale_to_accuracy`.
pub fn gaussian_half_width(sensitivity: i64, rho: f64, alpha: f64) -> Result<f64, DpError> {
    use opendp::measures::ZeroConcentratedDivergence;
    let mut scale = sensitivity as f64 / (2.0 * rho).sqrt();
    for _ in 0..MAX_NUDGES {
        let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            AtomDomain::<i64>::default(),
            AbsoluteDistance::<i64>::default(),
            scale,
            None,
        )?;
        if m.map(&sensitivity)? <= rho {
            return Ok(opendp::accuracy::discrete_gaussian_scale_to_accuracy(scale, alpha)?);
        }
        scale = next_up(scale);
    }
    Err(DpError::PrivacyMap { sensitivity, epsilon: rho, scale })
}

/// The real mechanism: opendp's discrete Laplace with OpenSSL randomness.
///
/// Keeps the scales it has verified (per sensitivity and epsilon) so repeated
/// releases skip the search; measurements themselves are rebuilt per call
/// (they are cheap, and not `Send`, while this type is).
#[derive(Debug, Default)]
pub struct OpenDpNoise {
    scales: HashMap<(i64, u64), (f64, f64)>,
}

impl OpenDpNoise {
    pub fn new() -> OpenDpNoise {
        OpenDpNoise::default()
    }

    /// (scale, 95% half-width) for a release, verified against opendp's privacy map.
    fn calibrate(&mut self, sensitivity: i64, epsilon: f64) -> Result<(f64, f64), DpError> {
        check(sensitivity, epsilon)?;
        let key = (sensitivity, epsilon.to_bits());
        if let Some(&found) = self.scales.get(&key) {
            return Ok(found);
        }
        let scale = noise_scale(sensitivity, epsilon)?;
        let found = (scale, ci95_half_width(scale)?);
        self.scales.insert(key, found);
        Ok(found)
    }
}

impl Noise for OpenDpNoise {
    fn release(&mut self, true_value: i64, sensitivity: i64, epsilon: f64) -> Result<Release, DpError> {
        let (scale, hw) = self.calibrate(sensitivity, epsilon)?;
        let m = scalar_measurement(scale)?;
        // Re-check on the very measurement that draws: the map is the privacy guarantee.
        if m.map(&sensitivity)? > epsilon {
            return Err(DpError::PrivacyMap { sensitivity, epsilon, scale });
        }
        let value = m.invoke(&true_value)?;
        Ok(Release { value, sensitivity, epsilon, scale, ci95_half_width: hw })
    }

    fn release_all(&mut self, true_values: &[i64], sensitivity: i64, epsilon: f64) -> Result<Vec<Release>, DpError> {
        let (scale, hw) = self.calibrate(sensitivity, epsilon)?;
        if true_values.is_empty() {
            return Ok(Vec::new());
        }
        let m = vector_measurement(scale)?;
        if m.map(&sensitivity)? > epsilon {
            return Err(DpError::PrivacyMap { sensitivity, epsilon, scale });
        }
        let noisy = m.invoke(&true_values.to_vec())?;
        if noisy.len() != true_values.len() {
            return Err(DpError::OpenDp("vector release changed length".into()));
        }
        Ok(noisy.into_iter().map(|value| Release { value, sensitivity, epsilon, scale, ci95_half_width: hw }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P(X = k) of the discrete Laplace distribution of `scale`.
    fn pmf(scale: f64, k: i64) -> f64 {
        let q = (-1.0 / scale).exp();
        (1.0 - q) / (1.0 + q) * q.powi(k.unsigned_abs() as i32)
    }

    /// Central moments 2 and 4 of the discrete Laplace distribution, summed from its pmf.
    fn moments(scale: f64) -> (f64, f64) {
        let (mut m2, mut m4) = (0.0, 0.0);
        for k in -2000i64..=2000 {
            let p = pmf(scale, k);
            let k = k as f64;
            m2 += p * k * k;
            m4 += p * k * k * k * k;
        }
        (m2, m4)
    }

    /// |z| above which a two-sided normal test has p < 1e-7 (each check: never flakes).
    const Z_FAIL: f64 = 5.33;

    #[test]
    fn scale_is_sensitivity_over_epsilon_and_confirmed_by_opendp() {
        for (d, e) in [(1, 1.0), (5, 0.5), (1, 0.1), (10, 0.3), (3, 7.0), (1, 1.0 / 3.0)] {
            let s = noise_scale(d, e).unwrap();
            let exact = d as f64 / e;
            assert!(s >= exact && s <= exact * (1.0 + 1e-12), "{d}/{e}: {s}");
            assert!(scalar_measurement(s).unwrap().map(&d).unwrap() <= e);
            assert!(vector_measurement(s).unwrap().map(&d).unwrap() <= e);
        }
    }

    #[test]
    fn refuses_bad_epsilon_and_sensitivity() {
        let mut m = OpenDpNoise::new();
        for e in [0.0, -1.0, 10.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(m.release(3, 1, e), Err(DpError::Epsilon(_))), "{e}");
        }
        for d in [0, -1, MAX_SENSITIVITY + 1] {
            assert!(matches!(m.release(3, d, 1.0), Err(DpError::Sensitivity(_))), "{d}");
        }
    }

    #[test]
    fn half_width_is_opendps_and_covers_95_percent() {
        for s in [0.5, 1.0, 2.0, 10.0, 100.0] {
            let a = ci95_half_width(s).unwrap();
            // Coverage of the closed interval [-floor(a), floor(a)] from the pmf.
            let k = a.floor() as i64;
            let inside: f64 = (-k..=k).map(|j| pmf(s, j)).sum();
            assert!(inside >= 0.95 - 1e-9, "scale {s}: a = {a}, coverage {inside}");
            // And it is not wildly conservative: one step in loses coverage.
            let inner: f64 = (-(k - 1)..=(k - 1)).map(|j| pmf(s, j)).sum();
            assert!(k == 0 || inner < 0.95, "scale {s}: a = {a} is loose");
        }
    }

    #[test]
    fn noise_of_a_count_follows_the_distribution_its_scale_claims() {
        const N: usize = 20_000;
        let truth = 177i64;
        let mut m = OpenDpNoise::new();
        // Sensitivity 2 at epsilon 1: scale 2.
        let releases = m.release_all(&vec![truth; N], 2, 1.0).unwrap();
        let scale = releases[0].scale;
        assert!((scale - 2.0).abs() < 1e-12);
        let noise: Vec<i64> = releases.iter().map(|r| r.value - truth).collect();
        // A sample that fails a check is drawn once more and must pass: a wrong
        // distribution fails both, a right one fails both with probability ~1e-14 (the
        // sample variance's skew makes one 5.33-sigma check rarer than 1e-7 but not by much).
        let again = |m: &mut OpenDpNoise| -> Vec<i64> {
            m.release_all(&vec![truth; N], 2, 1.0).unwrap().iter().map(|r| r.value - truth).collect()
        };
        if let Err(first) = check_distribution(&noise, scale) {
            check_distribution(&again(&mut m), scale).unwrap_or_else(|e| panic!("{first}; again: {e}"));
        }

        // The scalar path too (fewer draws: each builds a measurement).
        let draw = |m: &mut OpenDpNoise| -> Vec<i64> {
            (0..5_000).map(|_| m.release(truth, 1, 0.25).unwrap().value - truth).collect()
        };
        let scale = noise_scale(1, 0.25).unwrap();
        if let Err(first) = check_distribution(&draw(&mut m), scale) {
            check_distribution(&draw(&mut m), scale).unwrap_or_else(|e| panic!("{first}; again: {e}"));
        }
    }

    /// The statistical checks of one sample: `Err` names the first that fails.
    fn check_distribution(noise: &[i64], scale: f64) -> Result<(), String> {
        let n = noise.len() as f64;
        let q = (-1.0 / scale).exp();
        let var_claim = 2.0 * q / ((1.0 - q) * (1.0 - q));
        let (m2, m4) = moments(scale);
        assert!((m2 - var_claim).abs() < 1e-6 * var_claim, "pmf moments {m2} vs closed form {var_claim}");

        // Mean 0.
        let mean = noise.iter().map(|&x| x as f64).sum::<f64>() / n;
        let z = mean / (var_claim / n).sqrt();
        if z.is_nan() || z.abs() >= Z_FAIL {
            return Err(format!("mean {mean}: z = {z}"));
        }

        // Variance: the sample second moment against the claim, with its own standard error.
        let second = noise.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / n;
        let z = (second - var_claim) / ((m4 - var_claim * var_claim) / n).sqrt();
        if z.is_nan() || z.abs() >= Z_FAIL {
            return Err(format!("variance {second} vs {var_claim}: z = {z}"));
        }

        // P(|noise| <= k) for a few k, each a binomial test.
        for k in [0i64, 1, 2, 4, 8] {
            let p: f64 = (-k..=k).map(|j| pmf(scale, j)).sum();
            if p >= 1.0 - 1e-12 {
                continue;
            }
            let hits = noise.iter().filter(|x| x.abs() <= k).count() as f64;
            let z = (hits - n * p) / (n * p * (1.0 - p)).sqrt();
            if z.is_nan() || z.abs() >= Z_FAIL {
                return Err(format!("P(|noise| <= {k}): {} vs {p}: z = {z}", hits / n));
            }
        }

        // The reported 95% interval covers at least 95% (binomial test against 0.95, one-sided).
        let hw = ci95_half_width(scale).unwrap();
        let covered = noise.iter().filter(|&&x| (x as f64).abs() <= hw).count() as f64;
        let z = (covered - n * 0.95) / (n * 0.95 * 0.05).sqrt();
        if z.is_nan() || z <= -Z_FAIL {
            return Err(format!("coverage {} of the 95% interval: z = {z}", covered / n));
        }
        Ok(())
    }

    #[test]
    fn zcdp_measurement_matches_the_textbook_bounds() {
        // opendp's conversion is at least as tight as ε = ρ + 2√(ρ ln(1/δ)) (Bun and Steinke).
        let (eps, delta) = (2.0, 1e-7);
        let rho = zcdp_rho_for(eps, delta).unwrap();
        let classic = {
            let l = (1.0 / delta).ln();
            let x = -l.sqrt() + (l + eps).sqrt();
            x * x
        };
        assert!(rho >= classic * (1.0 - 1e-6) && rho < 2.0 * classic, "ρ {rho}, textbook {classic}");
        // σ = Δ/√(2ρ): the 95% half-width is about 1.96σ, and more budget narrows it.
        let hw = gaussian_half_width(2, rho, 0.05).unwrap();
        let sigma = 2.0 / (2.0 * rho).sqrt();
        assert!((hw - 1.96 * sigma).abs() <= 1.5, "{hw} vs {}", 1.96 * sigma);
        assert!(gaussian_half_width(2, 4.0 * rho, 0.05).unwrap() < hw);
        assert!(zcdp_rho_for(0.0, delta).is_err() && zcdp_rho_for(eps, 0.0).is_err());
    }

    #[test]
    fn releases_differ_and_report_their_scale() {
        let mut m = OpenDpNoise::new();
        let a: Vec<i64> = (0..50).map(|_| m.release(1000, 1, 0.5).unwrap().value).collect();
        assert!(a.iter().any(|&x| x != a[0]), "noise was drawn");
        let r = m.release(1000, 1, 0.5).unwrap();
        assert_eq!((r.sensitivity, r.epsilon, r.scale), (1, 0.5, 2.0));
        assert_eq!(r.ci95_half_width, ci95_half_width(2.0).unwrap());
        assert!(m.release_all(&[], 1, 1.0).unwrap().is_empty());
    }
}
