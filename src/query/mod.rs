//! Differentially private queries over linked persons: the query model, the engine, the catalog.
//!
//! - `population`: persons (the privacy unit) and their events in a compact
//!   columnar form, built once at the steward from linked pseudonymized
//!   records. Person ids stay inside it.
//! - `model`: the JSON query an evaluator sends (cohort, anchor, windows,
//!   outcome, statistic, grouping, bounds, epsilon) and its canonical form.
//! - `engine`: `plan` (validation, the list of noisy releases with their
//!   sensitivity and epsilon, a dry run) and `execute` (per-person values,
//!   clamping, aggregation, noise through `crate::dp`, post-processing).
//! - `catalog`: the named standard analyses of a diversion-program evaluation.
//! - `evaluation`: an evaluation as a plan of analyses (headline first) and
//!   the planner that shares the budget among them and predicts their
//!   intervals from the noise distributions alone.
//!
//! Nothing this module returns carries a person id, a token, a row or an
//! exact aggregate: an `Answer` holds only noisy releases and their
//! post-processing; errors name the query's own fields, never data.
//! docs/queries.md describes the query language for evaluators.

pub mod catalog;
pub mod engine;
pub mod evaluation;
pub mod model;
pub mod population;

pub use catalog::{catalog, Analysis, Parameter};
pub use engine::{execute, plan, Answer, Cell, DryRun, Noisy, Plan, PlannedRelease};
pub use model::{Category, Query};
pub use population::{Population, Prepared, Preparer};

use crate::dp::DpError;

/// Why a query was refused or could not be answered. Names fields of the
/// query and the schema, never values from the data.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("query is not valid JSON for the query model: {0}")]
    Json(String),
    #[error("unknown record kind `{0}` (the schema's kinds: {1})")]
    UnknownKind(String, String),
    #[error("record kind `{kind}` has no field `{field}`")]
    UnknownField { kind: String, field: String },
    #[error("field `{kind}.{field}`: {reason}")]
    Field { kind: String, field: String, reason: String },
    #[error("`{what}`: unknown value `{value}` (allowed: {allowed})")]
    UnknownValue { what: String, value: String, allowed: String },
    #[error("bounds [{lower}, {upper}]: {reason}")]
    Bounds { lower: i64, upper: i64, reason: String },
    #[error("epsilon must be a number in (0, 10], got {0}")]
    Epsilon(f64),
    #[error("window [{from}, {to}]: {reason}")]
    Window { from: i32, to: i32, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("schema: {0}")]
    Schema(String),
    #[error("the population was built with another schema than the plan")]
    SchemaMismatch,
    #[error("analysis `{analysis}`: parameter `{parameter}`: {reason}")]
    Parameter { analysis: String, parameter: String, reason: String },
    #[error("unknown analysis `{0}`")]
    UnknownAnalysis(String),
    #[error("evaluation plan: {0}")]
    Plan(String),
    #[error("noise: {0}")]
    Noise(#[from] DpError),
}
