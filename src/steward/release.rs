//! The evaluator's API at the steward: the catalog, budgets, past releases, and differentially private query answers — budget reserved durably and the release audited before any answer leaves.
//!
//! Order of a query (see `dp::ledger`): plan (no data) → cached answer? →
//! reserve ε durably → draw noise (opendp) → append the release to the
//! audit log (fsync) → store the answer and the release record (flush) →
//! respond. A crash anywhere leaves spent ≥ what evaluators received.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::http::{error_response, json_response, Peer, Resp};
use super::Steward;
use crate::audit::{RefusalDetail, ReleaseDetail};
use crate::dp::ledger::{format_epsilon, Budget, Refusal as BudgetRefusal};
use crate::dp::mechanism::OpenDpNoise;
use crate::query::{catalog, engine, Query};

pub const CATALOG_PATH: &str = "/v1/catalog";
pub const QUERY_PATH: &str = "/v1/query";
pub const BUDGET_PATH: &str = "/v1/budget";
pub const RELEASES_PATH: &str = "/v1/releases";

/// Largest query request accepted.
const MAX_QUERY_BYTES: u64 = 64 * 1024;

/// A query request: a named analysis with parameters, or a query in full.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// A catalog analysis by name (`GET /v1/catalog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<String>,
    /// The analysis's parameters, as strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// A query in full (see docs/queries.md), instead of an analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Query>,
    /// Overrides the query's epsilon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Return the intervals this epsilon would give, touching no data and no budget.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a query request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryResponse {
    /// Noisy values with their intervals (absent for a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<engine::Answer>,
    /// What the query would release (dry run only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<engine::DryRun>,
    /// True when the answer was stored from an earlier identical query (no epsilon spent now).
    pub cached: bool,
    /// Epsilon spent by this request.
    pub epsilon_spent: f64,
    pub budget: BudgetView,
    /// The steward's audit log as of this answer (its newest entry's seq and
    /// hash): kept by the evaluator, it lets anyone holding the log check
    /// later (`divert audit verify --expect SEQ:HASH`) that the log was not
    /// cut short or rewritten since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::Receipt>,
}

/// A budget in epsilon, as evaluators see it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BudgetView {
    pub total: f64,
    pub spent: f64,
    pub left: f64,
}

impl From<Budget> for BudgetView {
    fn from(b: Budget) -> BudgetView {
        let e = |m: u64| m as f64 / 1e6;
        BudgetView { total: e(b.total_micro), spent: e(b.spent_micro), left: e(b.left_micro) }
    }
}

/// One past release, as `GET /v1/releases` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub time: String,
    pub query_hash: String,
    pub canonical: String,
    pub epsilon: f64,
}

/// A failure on the steward's side: logged in full here, answered in general terms.
fn internal(what: &str, e: impl std::fmt::Display) -> Resp {
    tracing::error!(error = %e, "{what}");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "the steward could not answer; try again later")
}

pub(crate) async fn get_catalog(_st: &Arc<Steward>, _peer: &Peer) -> Resp {
    json_response(StatusCode::OK, &catalog::catalog())
}

pub(crate) async fn get_budget(st: &Arc<Steward>, peer: &Peer) -> Resp {
    match st.ledger.budget(&peer.id.name) {
        Ok(b) => json_response(StatusCode::OK, &BudgetView::from(b)),
        Err(e) => internal("reading a budget failed", e),
    }
}

pub(crate) async fn get_releases(st: &Arc<Steward>, peer: &Peer) -> Resp {
    match st.releases_of(&peer.id.name) {
        Ok(list) => json_response(StatusCode::OK, &list),
        Err(e) => internal("reading releases failed", e),
    }
}

/// A query error as the evaluator is told it: names only what the schema
/// and the catalog define, never a string the request carried (an echoed
/// request could put whatever an evaluator typed into answers and logs).
fn public_error(e: &crate::query::QueryError) -> String {
    use crate::query::QueryError as Q;
    match e {
        Q::Json(_) => "the query does not have the shape of the query model (see docs/queries.md)".into(),
        Q::UnknownAnalysis(_) => {
            let names: Vec<String> = catalog::catalog().into_iter().map(|a| a.name).collect();
            format!("unknown analysis; the catalog's analyses: {}", names.join(", "))
        }
        Q::UnknownKind(_, kinds) => format!("unknown record kind; the schema's kinds: {kinds}"),
        Q::Parameter { analysis, parameter, reason } => {
            let known =
                catalog::find(analysis).map(|a| a.parameters.iter().any(|p| &p.name == parameter)).unwrap_or(false);
            if known {
                e.to_string()
            } else if reason.starts_with("unknown") {
                format!("analysis `{analysis}`: an unknown parameter; {reason}")
            } else {
                format!("analysis `{analysis}`: a parameter: {reason}")
            }
        }
        Q::UnknownField { kind, .. } => format!("record kind `{kind}` has no such field (see config/schema.toml)"),
        Q::UnknownValue { what, allowed, .. } => format!("`{what}`: a value that is not allowed (allowed: {allowed})"),
        other => other.to_string(),
    }
}

fn hash_bytes(hash: &str) -> Option<[u8; 32]> {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub(crate) async fn post_query(st: &Arc<Steward>, peer: &Peer, req: Request<Incoming>) -> Resp {
    let evaluator = peer.id.name.clone();
    let too_large = format!("the query request is larger than {} KiB", MAX_QUERY_BYTES / 1024);
    let body = match super::http::read_body(st, peer, req.into_body(), MAX_QUERY_BYTES, &too_large).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            // serde's message may quote the request; say only where it broke.
            let msg = format!(
                "not a query request (line {} column {}): send {{\"analysis\": NAME, \"params\": {{...}}}} or {{\"query\": {{...}}}}",
                e.line(),
                e.column()
            );
            return error_response(StatusCode::BAD_REQUEST, &msg);
        }
    };

    // Plan: validation and sensitivity, no data touched.
    let query = match (&request.analysis, &request.query) {
        (Some(name), None) => match catalog::find(name).and_then(|a| a.instantiate(&request.params)) {
            Ok(q) => q,
            Err(e) => return error_response(StatusCode::BAD_REQUEST, &public_error(&e)),
        },
        (None, Some(q)) if request.params.is_empty() => q.clone(),
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "give either `analysis` (with optional `params`) or `query`, not both",
            )
        }
    };
    let mut query = query;
    if let Some(e) = request.epsilon {
        query.epsilon = e;
    }
    // The ledger counts whole micro-epsilon: a query is charged exactly what
    // its noise is drawn for, so an epsilon between two micro-epsilon is refused
    // rather than rounded (rounding down would undercharge).
    let micro = (query.epsilon * 1e6).round();
    if !(1.0..=1e13).contains(&micro) || (micro / 1e6 - query.epsilon).abs() > 1e-12 {
        return error_response(
            StatusCode::BAD_REQUEST,
            "epsilon must be a positive multiple of 0.000001 (the budget is kept in whole micro-epsilon)",
        );
    }
    query.epsilon = micro / 1e6;
    let plan = match engine::plan(&query, &st.schema) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &public_error(&e)),
    };
    let budget_now = match st.ledger.budget(&evaluator) {
        Ok(b) => b,
        Err(e) => return internal("reading a budget failed", e),
    };
    if request.dry_run {
        let resp = QueryResponse {
            answer: None,
            dry_run: Some(plan.dry_run()),
            cached: false,
            epsilon_spent: 0.0,
            budget: budget_now.into(),
            audit: st.audit.head(),
        };
        return json_response(StatusCode::OK, &resp);
    }
    let Some(hash) = hash_bytes(plan.hash()) else {
        return internal("a query hash was malformed", plan.hash());
    };
    let epsilon_micro = (plan.epsilon() * 1e6).round() as u64;

    // The same query asked again returns the stored answer at no cost.
    match st.ledger.cached(&evaluator, hash) {
        Ok(Some(bytes)) => match serde_json::from_slice::<engine::Answer>(&bytes) {
            Ok(mut answer) => {
                answer.budget_left = Some(budget_now.left_micro as f64 / 1e6);
                let resp = QueryResponse {
                    answer: Some(answer),
                    dry_run: None,
                    cached: true,
                    epsilon_spent: 0.0,
                    budget: budget_now.into(),
                    audit: st.audit.head(),
                };
                return json_response(StatusCode::OK, &resp);
            }
            Err(e) => return internal("a stored answer could not be read", e),
        },
        Ok(None) => {}
        Err(e) => return internal("reading the answer cache failed", e),
    }

    // Reserve durably before any noise is drawn.
    let st2 = st.clone();
    let ev2 = evaluator.clone();
    let reserved = tokio::task::spawn_blocking(move || st2.ledger.reserve(&ev2, hash, epsilon_micro)).await;
    let reservation = match reserved {
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(refusal))) => {
            let left = match refusal {
                BudgetRefusal::Exhausted { left_micro } => left_micro,
                BudgetRefusal::NoBudget => 0,
            };
            let detail = RefusalDetail {
                query_hash: Some(plan.hash().to_string()),
                epsilon_micro: Some(epsilon_micro),
                reason: "budget".into(),
                left_micro: Some(left),
            };
            if let Err(e) = st.audit.append_async(crate::audit::Kind::Refusal, &evaluator, &detail).await {
                return internal("auditing a refusal failed", e);
            }
            warn!(evaluator = %evaluator, asked = %format_epsilon(epsilon_micro), left = %format_epsilon(left), "query refused: budget");
            let body = serde_json::json!({
                "error": format!("{refusal}: this query needs {} ε, {} ε left", format_epsilon(epsilon_micro), format_epsilon(left)),
                "budget_left": left as f64 / 1e6,
            });
            return json_response(StatusCode::FORBIDDEN, &body);
        }
        Ok(Err(e)) => return internal("reserving budget failed", e),
        Err(e) => return internal("the reservation task failed", e),
    };

    // Draw the noise (CPU work, off the reactor).
    let st2 = st.clone();
    let executed = tokio::task::spawn_blocking(move || {
        let population = st2.persons().population();
        let mut noise = OpenDpNoise::new();
        engine::execute(&plan, &population, &mut noise).map(|a| (a, plan))
    })
    .await;
    let (mut answer, plan) = match executed {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return internal("executing a query failed (its budget stays spent)", e),
        Err(e) => return internal("the query task failed (its budget stays spent)", e),
    };
    let left = reservation.budget.left_micro;
    answer.budget_left = Some(left as f64 / 1e6);

    // Audit before the answer leaves; then keep the answer for the cache.
    let detail = ReleaseDetail {
        evaluator: evaluator.clone(),
        query_hash: plan.hash().to_string(),
        epsilon_micro,
        left_micro: left,
    };
    if let Err(e) = st.audit.release_async(&detail).await {
        return internal("auditing a release failed (its budget stays spent)", e);
    }
    let bytes = match serde_json::to_vec(&answer) {
        Ok(b) => b,
        Err(e) => return internal("encoding an answer failed", e),
    };
    let record = ReleaseRecord {
        time: crate::pki::format_time(time::OffsetDateTime::now_utc()),
        query_hash: plan.hash().to_string(),
        canonical: plan.canonical().to_string(),
        epsilon: epsilon_micro as f64 / 1e6,
    };
    let st2 = st.clone();
    let ev2 = evaluator.clone();
    let stored = tokio::task::spawn_blocking(move || -> Result<(), String> {
        st2.record_release(&ev2, &record).map_err(|e| e.to_string())?;
        st2.ledger.store_answer(&ev2, hash, &bytes).map_err(|e| e.to_string())?;
        Ok(())
    })
    .await;
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return internal("storing an answer failed (its budget stays spent)", e),
        Err(e) => return internal("the storing task failed (its budget stays spent)", e),
    }
    info!(evaluator = %evaluator, query_hash = %plan.hash(), epsilon = %format_epsilon(epsilon_micro), left = %format_epsilon(left), "released");
    let resp = QueryResponse {
        answer: Some(answer),
        dry_run: None,
        cached: false,
        epsilon_spent: epsilon_micro as f64 / 1e6,
        budget: reservation.budget.into(),
        audit: st.audit.head(),
    };
    json_response(StatusCode::OK, &resp)
}
