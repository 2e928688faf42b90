//! Differential privacy at the steward: the mechanism layer (the only code that draws noise).
//!
//! `mechanism` wraps opendp 0.16's discrete Laplace measurement on integers
//! (`make_laplace` over `AtomDomain<i64>` / `VectorDomain<AtomDomain<i64>>`,
//! `MaxDivergence`), checks every noise scale against opendp's own privacy
//! map before use, and reports 95% intervals from opendp's accuracy
//! function. The query engine (`crate::query`) decides what to release and
//! with which sensitivity and epsilon; it never draws noise itself.

pub mod ledger;
pub mod mechanism;

pub use mechanism::{ci95_half_width, half_width, noise_scale, DpError, Noise, OpenDpNoise, Release};
