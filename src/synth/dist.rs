//! Random draws the model needs (exponential, normal, gamma, categorical), seeded streams, and a keyed id permutation.
//!
//! Written here because only `rand` 0.8 is a dependency (no `rand_distr`);
//! each sampler is a textbook method, named beside it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Independent random streams of one seed: `domain` separates uses (persons,
/// records), `index` the item. One stream per item keeps a person's draws the
/// same however many other persons are generated, and never depends on
/// iteration order.
pub fn stream(seed: u64, domain: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((domain << 40) | index);
    rng
}

/// True with probability `p` (never panics: p ≤ 0 is never, p ≥ 1 always).
pub fn chance<R: Rng>(rng: &mut R, p: f64) -> bool {
    rng.gen::<f64>() < p
}

/// Exponential with the given mean (inverse transform).
pub fn exponential<R: Rng>(rng: &mut R, mean: f64) -> f64 {
    let u: f64 = rng.gen();
    -mean * (1.0 - u).ln()
}

/// Standard normal (Box–Muller).
pub fn normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Gamma with the given shape and mean (Marsaglia & Tsang 2000; shape < 1 by the u^(1/shape) boost).
pub fn gamma<R: Rng>(rng: &mut R, shape: f64, mean: f64) -> f64 {
    if !(shape > 0.0 && mean > 0.0) {
        return mean.max(0.0);
    }
    let scale = mean / shape;
    let (a, boost) = if shape < 1.0 {
        let u: f64 = 1.0 - rng.gen::<f64>();
        (shape + 1.0, u.powf(1.0 / shape))
    } else {
        (shape, 1.0)
    };
    let d = a - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.gen::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v * scale * boost;
        }
    }
}

/// A categorical distribution over indices 0..n from non-negative weights.
#[derive(Debug, Clone)]
pub struct Categorical {
    cumulative: Vec<f64>,
}

impl Categorical {
    /// Weights need not sum to 1; negative or non-finite weights count as 0.
    /// All-zero weights pick index 0, so a bad parameter never panics.
    pub fn new(weights: &[f64]) -> Categorical {
        let mut total = 0.0;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += if w.is_finite() && w > 0.0 { w } else { 0.0 };
                total
            })
            .collect();
        Categorical { cumulative }
    }

    /// Zipf-like weights 1/(rank + 2)^0.9 for a list ordered from most to least common.
    pub fn zipf(n: usize) -> Categorical {
        Categorical::zipf_with(n, 0.9, 2.0)
    }

    /// Zipf-like weights 1/(rank + offset)^exponent: a larger offset and a
    /// smaller exponent flatten the head of the list.
    pub fn zipf_with(n: usize, exponent: f64, offset: f64) -> Categorical {
        let weights: Vec<f64> = (0..n).map(|rank| 1.0 / (rank as f64 + offset).powf(exponent)).collect();
        Categorical::new(&weights)
    }

    pub fn pick<R: Rng>(&self, rng: &mut R) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        if total <= 0.0 {
            return 0;
        }
        let x = rng.gen::<f64>() * total;
        self.cumulative.partition_point(|&c| c <= x).min(self.cumulative.len() - 1)
    }
}

/// A keyed permutation of 0..size (a 4-round Feistel network on the next
/// power of two, with cycle walking): distinct inputs give distinct outputs
/// that look random. Used for state ids, so no two persons share one.
#[derive(Debug, Clone)]
pub struct Permutation {
    size: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    pub fn new(size: u64, seed: u64) -> Permutation {
        let bits = 64 - size.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut rng = stream(seed, 0xFE, 0);
        Permutation { size: size.max(1), half_bits, keys: [rng.gen(), rng.gen(), rng.gen(), rng.gen()] }
    }

    pub fn apply(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let mut v = x % self.size;
        // Cycle walking: re-encrypt until the value falls back inside 0..size;
        // it terminates because the network is a permutation of the enclosing range.
        loop {
            let (mut l, mut r) = (v >> self.half_bits, v & mask);
            for key in self.keys {
                let f = mix(r ^ key) & mask;
                (l, r) = (r, l ^ f);
            }
            v = (l << self.half_bits) | r;
            if v < self.size {
                return v;
            }
        }
    }
}

/// SplitMix64's finalizer: a fast, well-mixing round function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_have_their_means() {
        let mut rng = stream(3, 0, 0);
        let n = 200_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        assert!((mean(&mut || exponential(&mut rng, 5.0)) - 5.0).abs() < 0.1);
        let mut rng = stream(3, 0, 1);
        assert!((mean(&mut || gamma(&mut rng, 1.5, 1.2)) - 1.2).abs() < 0.02);
        let mut rng = stream(3, 0, 2);
        assert!((mean(&mut || gamma(&mut rng, 0.5, 2.0)) - 2.0).abs() < 0.05);
        let mut rng = stream(3, 0, 3);
        assert!(mean(&mut || normal(&mut rng)).abs() < 0.01);
        let mut rng = stream(3, 0, 4);
        let c = Categorical::new(&[0.2, 0.0, 0.8]);
        let picks: Vec<usize> = (0..n).map(|_| c.pick(&mut rng)).collect();
        assert!(!picks.contains(&1));
        let share2 = picks.iter().filter(|&&i| i == 2).count() as f64 / n as f64;
        assert!((share2 - 0.8).abs() < 0.01);
    }

    #[test]
    fn permutation_is_a_bijection() {
        let p = Permutation::new(1000, 9);
        let mut seen = [false; 1000];
        for x in 0..1000 {
            let y = p.apply(x) as usize;
            assert!(!seen[y]);
            seen[y] = true;
        }
    }
}
