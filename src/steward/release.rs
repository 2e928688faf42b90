//! The evaluator's API at the steward: the catalog, budgets, past releases, and differentially private query answers — budget reserved durably and the release audited before any answer leaves.
//!
//! Order of a query (see `dp::ledger`): plan (no data) → refuse an answer
//! too large to keep → cached answer (its stored bytes, as stored)? → the
//! shared census it divides by, released first the same way if not yet →
//! reserve ε durably → draw noise (opendp) → append the release to the
//! audit log (fsync) → store the answer and the release record (flush) →
//! respond. A crash anywhere leaves spent ≥ what evaluators received.
//!
//! `POST /v1/plan` plans an evaluation (`query::evaluation`): no data, no budget.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tracing::{info, warn};

use super::http::{error_response, json_bytes_response, json_response, Peer, Resp};
use super::Steward;
use crate::audit::{RefusalDetail, ReleaseDetail};
use crate::dp::ledger::{format_epsilon, Budget, Refusal as BudgetRefusal, MAX_ANSWER_BYTES};
use crate::dp::mechanism::OpenDpNoise;
use crate::query::{catalog, engine, evaluation};
use crate::wire::{BudgetView, PlanResponse, QueryRequest, QueryResponse, ReleaseRecord};

/// Largest query request accepted.
const MAX_QUERY_BYTES: u64 = 64 * 1024;

impl From<Budget> for BudgetView {
    fn from(b: Budget) -> BudgetView {
        let e = |m: u64| m as f64 / 1e6;
        BudgetView { total: e(b.total_micro), spent: e(b.spent_micro), left: e(b.left_micro) }
    }
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
    crate::hex::decode_array(hash.strip_prefix("sha256:").unwrap_or(hash))
}

/// Read a request body of at most `MAX_QUERY_BYTES`, or the response refusing it (413, 408, 400).
async fn read_body(st: &Arc<Steward>, peer: &Peer, req: Request<Incoming>) -> Result<hyper::body::Bytes, Box<Resp>> {
    let too_large = format!("the query request is larger than {} KiB", MAX_QUERY_BYTES / 1024);
    super::http::read_body(st, peer, req.into_body(), MAX_QUERY_BYTES, &too_large).await.map_err(Box::new)
}

/// Refuse a query whose answer the cache could not keep, before anything is charged.
fn check_answer_size(plan: &engine::Plan) -> Result<(), Box<Resp>> {
    let most = plan.max_answer_bytes().max(plan.census().map_or(0, engine::Plan::max_answer_bytes));
    if most > MAX_ANSWER_BYTES {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "this query's answer can take up to {most} bytes, more than the {MAX_ANSWER_BYTES} the steward keeps \
                 (it must keep every answer it releases): group by fewer categories or narrow the cohort"
            ),
        )));
    }
    Ok(())
}

/// Audit and answer a budget refusal.
async fn refuse_budget(
    st: &Steward,
    evaluator: &str,
    query_hash: &str,
    epsilon_micro: u64,
    refusal: BudgetRefusal,
) -> Resp {
    let left = match refusal {
        BudgetRefusal::Exhausted { left_micro } => left_micro,
        BudgetRefusal::NoBudget => 0,
    };
    let detail = RefusalDetail {
        query_hash: Some(query_hash.to_string()),
        epsilon_micro: Some(epsilon_micro),
        reason: "budget".into(),
        left_micro: Some(left),
    };
    if let Err(e) = st.audit.append_async(crate::audit::Kind::Refusal, evaluator, &detail).await {
        return internal("auditing a refusal failed", e);
    }
    warn!(evaluator = %evaluator, asked = %format_epsilon(epsilon_micro), left = %format_epsilon(left), "query refused: budget");
    let body = serde_json::json!({
        "error": format!("{refusal}: this query needs {} ε, {} ε left", format_epsilon(epsilon_micro), format_epsilon(left)),
        "budget_left": left as f64 / 1e6,
    });
    json_response(StatusCode::FORBIDDEN, &body)
}

/// The answer stored for this evaluator's query, if any.
fn stored(st: &Steward, evaluator: &str, query_hash: &str) -> Result<Option<Vec<u8>>, Box<Resp>> {
    let Some(hash) = hash_bytes(query_hash) else {
        return Err(Box::new(internal("a query hash was malformed", query_hash)));
    };
    st.ledger.cached(evaluator, hash).map_err(|e| Box::new(internal("reading the answer cache failed", e)))
}

/// A query response around an answer's stored bytes, which go out as they were stored.
fn answer_response(st: &Steward, answer: &[u8], cached: bool, spent_micro: u64, budget: Budget) -> Resp {
    let rest = QueryResponse {
        answer: None,
        dry_run: None,
        cached,
        epsilon_spent: spent_micro as f64 / 1e6,
        epsilon_needed: None,
        budget: budget.into(),
        audit: st.audit.head(),
    };
    let rest = match serde_json::to_vec(&rest) {
        Ok(b) => b,
        Err(e) => return internal("encoding a response failed", e),
    };
    // `rest` is an object: `{` + `"answer":<stored bytes>,` + the rest of its fields.
    let mut body = Vec::with_capacity(answer.len() + rest.len() + 16);
    body.extend_from_slice(b"{\"answer\":");
    body.extend_from_slice(answer);
    body.push(b',');
    body.extend_from_slice(rest.get(1..).unwrap_or(b"}"));
    json_bytes_response(StatusCode::OK, body)
}

/// One release, in order: reserve ε durably, draw the noise, audit, store the
/// answer. Returns the stored bytes and the budget after the reservation.
async fn release(
    st: &Arc<Steward>,
    evaluator: &str,
    plan: engine::Plan,
    census: Option<engine::Answer>,
) -> Result<(Vec<u8>, Budget), Box<Resp>> {
    let Some(hash) = hash_bytes(plan.hash()) else {
        return Err(Box::new(internal("a query hash was malformed", plan.hash())));
    };
    let epsilon_micro = (plan.epsilon() * 1e6).round() as u64;

    // The population is data, not noise: when the budget looks sufficient, it
    // is built (if records arrived) while the reservation is made durable.
    // The reservation alone decides; a refused query only leaves a build
    // that the next query takes.
    let population = |st: Arc<Steward>| tokio::task::spawn_blocking(move || st.persons().population());
    let looks_paid = st.ledger.budget(evaluator).is_ok_and(|b| b.left_micro >= epsilon_micro);
    let early = looks_paid.then(|| population(st.clone()));

    // Reserve durably before any noise is drawn.
    let st2 = st.clone();
    let ev2 = evaluator.to_string();
    let reserved = tokio::task::spawn_blocking(move || st2.ledger.reserve(&ev2, hash, epsilon_micro)).await;
    let reservation = match reserved {
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(refusal))) => {
            return Err(Box::new(refuse_budget(st, evaluator, plan.hash(), epsilon_micro, refusal).await))
        }
        Ok(Err(e)) => return Err(Box::new(internal("reserving budget failed", e))),
        Err(e) => return Err(Box::new(internal("the reservation task failed", e))),
    };

    let population = match early.unwrap_or_else(|| population(st.clone())).await {
        Ok(p) => p,
        Err(e) => return Err(Box::new(internal("the population task failed (its budget stays spent)", e))),
    };
    // Draw the noise (CPU work, off the reactor).
    let executed = tokio::task::spawn_blocking(move || {
        let mut noise = OpenDpNoise::new();
        engine::execute_with_census(&plan, &population, &mut noise, census.as_ref()).map(|a| (a, plan))
    })
    .await;
    let (mut answer, plan) = match executed {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(Box::new(internal("executing a query failed (its budget stays spent)", e))),
        Err(e) => return Err(Box::new(internal("the query task failed (its budget stays spent)", e))),
    };
    let left = reservation.budget.left_micro;
    answer.budget_left = Some(left as f64 / 1e6);

    // Audit before the answer leaves; then keep the answer for the cache.
    let detail = ReleaseDetail {
        evaluator: evaluator.to_string(),
        query_hash: plan.hash().to_string(),
        epsilon_micro,
        left_micro: left,
    };
    if let Err(e) = st.audit.release_async(&detail).await {
        return Err(Box::new(internal("auditing a release failed (its budget stays spent)", e)));
    }
    let bytes = match serde_json::to_vec(&answer) {
        Ok(b) => b,
        Err(e) => return Err(Box::new(internal("encoding an answer failed", e))),
    };
    let record = ReleaseRecord {
        time: crate::days::now_text(),
        query_hash: plan.hash().to_string(),
        canonical: plan.canonical().to_string(),
        epsilon: epsilon_micro as f64 / 1e6,
    };
    // The release record and the answer are two writes of the same store,
    // queued at once, so one group commit (one fsync) usually makes both durable.
    let (st2, ev2) = (st.clone(), evaluator.to_string());
    let recorded = tokio::task::spawn_blocking(move || st2.record_release(&ev2, &record));
    let (st2, ev2, kept) = (st.clone(), evaluator.to_string(), bytes.clone());
    let stored = tokio::task::spawn_blocking(move || st2.ledger.store_answer(&ev2, hash, &kept));
    let (recorded, stored) = tokio::join!(recorded, stored);
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Box::new(internal("recording a release failed (its budget stays spent)", e))),
        Err(e) => return Err(Box::new(internal("the recording task failed (its budget stays spent)", e))),
    }
    match stored {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(Box::new(internal("storing an answer failed (its budget stays spent)", e))),
        Err(e) => return Err(Box::new(internal("the storing task failed (its budget stays spent)", e))),
    }
    info!(evaluator = %evaluator, query_hash = %plan.hash(), epsilon = %format_epsilon(epsilon_micro), left = %format_epsilon(left), "released");
    Ok((bytes, reservation.budget))
}

pub(crate) async fn post_query(st: &Arc<Steward>, peer: &Peer, req: Request<Incoming>) -> Resp {
    let evaluator = peer.id.name.clone();
    let body = match read_body(st, peer, req).await {
        Ok(b) => b,
        Err(resp) => return *resp,
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
    for e in std::iter::once(&mut query.epsilon).chain(query.persons.as_mut().map(|p| &mut p.epsilon)) {
        let micro = (*e * 1e6).round();
        if !(1.0..=1e13).contains(&micro) || (micro / 1e6 - *e).abs() > 1e-12 {
            return error_response(
                StatusCode::BAD_REQUEST,
                "epsilon must be a positive multiple of 0.000001 (the budget is kept in whole micro-epsilon)",
            );
        }
        *e = micro / 1e6;
    }
    let plan = match engine::plan(&query, &st.schema) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &public_error(&e)),
    };
    if let Err(resp) = check_answer_size(&plan) {
        return *resp;
    }
    let budget_now = match st.ledger.budget(&evaluator) {
        Ok(b) => b,
        Err(e) => return internal("reading a budget failed", e),
    };
    let epsilon_micro = (plan.epsilon() * 1e6).round() as u64;
    let mine = match stored(st, &evaluator, plan.hash()) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    // The shared census: stored already, or to be released (and paid for) first.
    let census = match plan.census() {
        None => None,
        Some(c) => match stored(st, &evaluator, c.hash()) {
            Ok(s) => Some((c.clone(), s)),
            Err(resp) => return *resp,
        },
    };
    let census_micro = match &census {
        Some((c, None)) => (c.epsilon() * 1e6).round() as u64,
        _ => 0,
    };
    if request.dry_run {
        let needed = if mine.is_some() { 0 } else { epsilon_micro + census_micro };
        let resp = QueryResponse {
            answer: None,
            dry_run: Some(plan.dry_run()),
            cached: mine.is_some(),
            epsilon_spent: 0.0,
            epsilon_needed: Some(needed as f64 / 1e6),
            budget: budget_now.into(),
            audit: st.audit.head(),
        };
        return json_response(StatusCode::OK, &resp);
    }

    // The same query asked again returns the stored answer, byte for byte, at no cost.
    if let Some(bytes) = mine {
        return answer_response(st, &bytes, true, 0, budget_now);
    }

    let census_answer = match census {
        None => None,
        Some((c, stored_bytes)) => {
            let bytes = match stored_bytes {
                Some(b) => b,
                None => {
                    // Both or neither, as far as the budget now tells: never the census alone
                    // for lack of budget for the query it was asked for.
                    if budget_now.left_micro < epsilon_micro + census_micro {
                        let refusal = if budget_now.total_micro == 0 {
                            BudgetRefusal::NoBudget
                        } else {
                            BudgetRefusal::Exhausted { left_micro: budget_now.left_micro }
                        };
                        return refuse_budget(st, &evaluator, plan.hash(), epsilon_micro + census_micro, refusal).await;
                    }
                    match release(st, &evaluator, c, None).await {
                        Ok((b, _)) => b,
                        Err(resp) => return *resp,
                    }
                }
            };
            match serde_json::from_slice::<engine::Answer>(&bytes) {
                Ok(a) => Some(a),
                Err(e) => return internal("a stored census could not be read", e),
            }
        }
    };
    match release(st, &evaluator, plan, census_answer).await {
        Ok((bytes, budget)) => answer_response(st, &bytes, false, epsilon_micro + census_micro, budget),
        Err(resp) => *resp,
    }
}

/// `POST /v1/plan`: an evaluation plan (JSON of `config/evaluation.toml`) →
/// the epsilon of each analysis, its expected intervals, which are already
/// released, and what the rest would spend. Touches no data and no budget.
pub(crate) async fn post_plan(st: &Arc<Steward>, peer: &Peer, req: Request<Incoming>) -> Resp {
    let evaluator = peer.id.name.clone();
    let body = match read_body(st, peer, req).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let request: evaluation::EvaluationPlan = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!(
                "not an evaluation plan (line {} column {}); see config/evaluation.toml and docs/queries.md",
                e.line(),
                e.column()
            );
            return error_response(StatusCode::BAD_REQUEST, &msg);
        }
    };
    let st2 = st.clone();
    let planned = tokio::task::spawn_blocking(move || evaluation::plan(&request, &st2.schema)).await;
    let mut planned = match planned {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return error_response(StatusCode::BAD_REQUEST, &public_error(&e)),
        Err(e) => return internal("the planning task failed", e),
    };
    let mut needed = 0u64;
    for s in &mut planned.steps {
        let p = match engine::plan(&s.query, &st.schema) {
            Ok(p) => p,
            Err(e) => return error_response(StatusCode::BAD_REQUEST, &public_error(&e)),
        };
        if let Err(resp) = check_answer_size(&p) {
            return *resp;
        }
        s.released = match stored(st, &evaluator, &s.query_hash) {
            Ok(x) => x.is_some(),
            Err(resp) => return *resp,
        };
        if !s.released {
            needed += (s.epsilon * 1e6).round() as u64;
        }
    }
    planned.epsilon_needed = needed as f64 / 1e6;
    match st.ledger.budget(&evaluator) {
        Ok(b) => json_response(StatusCode::OK, &PlanResponse { evaluation: planned, budget: b.into() }),
        Err(e) => internal("reading a budget failed", e),
    }
}
/// The release store: what `GET /v1/releases` shows an evaluator of its own past releases.
impl Steward {
    /// Remember a release for `GET /v1/releases`, durably (blocking).
    pub(crate) fn record_release(
        &self,
        evaluator: &str,
        record: &crate::wire::ReleaseRecord,
    ) -> Result<(), super::StoreError> {
        let mut key = evaluator.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&self.store.db().generate_id()?.to_be_bytes());
        let value = serde_json::to_vec(record).map_err(|e| {
            super::StoreError::Sled(sled::Error::Unsupported(format!("encoding a release record: {e}")))
        })?;
        crate::storage::check_value(&value)?;
        let releases = self.releases.clone();
        self.store.durable().write(move |_| releases.insert(key, value).map(|_| ()))?;
        Ok(())
    }

    /// An evaluator's own past releases, oldest first.
    pub(crate) fn releases_of(&self, evaluator: &str) -> Result<Vec<crate::wire::ReleaseRecord>, super::StoreError> {
        let mut prefix = evaluator.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.releases.scan_prefix(prefix) {
            let (_, v) = kv?;
            if let Ok(r) = serde_json::from_slice(&v) {
                out.push(r);
            }
        }
        Ok(out)
    }
}
