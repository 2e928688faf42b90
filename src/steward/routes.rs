//! The steward's authorization table: which certificate role may call which method on which path, and the handler it reaches.
//!
//! A request reaches a handler only through a row of [`ROUTES`] naming its
//! path, the role of the peer's verified certificate and its method; every
//! other request is refused here, before a byte of its body is read: 404 for
//! an unknown path, 403 for a role the row does not name, 405 (with `Allow`)
//! for a method it does not list. A new endpoint is one row and one arm of
//! [`call`].

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Request, StatusCode};

use super::http::{refuse_unread, Peer, Resp};
use super::{Refusal, Steward};
use crate::spiffe::Role;
use crate::wire::{BATCH_PATH, BUDGET_PATH, CATALOG_PATH, EPOCHS_PATH, PLAN_PATH, QUERY_PATH, RELEASES_PATH};

/// The handlers a route can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    PostBatch,
    GetEpochs,
    PostEpochs,
    GetCatalog,
    GetBudget,
    GetReleases,
    PostQuery,
    PostPlan,
}

/// One path: the role it serves, its methods, and what a refusal says.
struct Route {
    path: &'static str,
    role: Role,
    /// Method (upper case) → handler; their names, joined, are the `Allow` of a 405.
    methods: &'static [(&'static str, Handler)],
    /// Said to a method not listed.
    methods_are: &'static str,
    /// Said, before "this certificate's role is …", to another role.
    only: &'static str,
}

/// What evaluators may call, said to a wrong method on any of their paths.
const EVALUATOR_METHODS: &str = "POST /v1/query, /v1/plan; GET /v1/catalog, /v1/budget, /v1/releases";
const EVALUATORS_ONLY: &str = "only evaluator certificates may query";

/// The table.
const ROUTES: &[Route] = &[
    Route {
        path: BATCH_PATH,
        role: Role::Source,
        methods: &[("POST", Handler::PostBatch)],
        methods_are: "batches are sent with POST",
        only: "only source certificates may send batches",
    },
    Route {
        path: EPOCHS_PATH,
        role: Role::Source,
        methods: &[("GET", Handler::GetEpochs), ("POST", Handler::PostEpochs)],
        methods_are: "GET /v1/epochs reads the key epochs; POST reports this source's",
        only: "only source certificates take part in key rotation",
    },
    Route {
        path: CATALOG_PATH,
        role: Role::Evaluator,
        methods: &[("GET", Handler::GetCatalog)],
        methods_are: EVALUATOR_METHODS,
        only: EVALUATORS_ONLY,
    },
    Route {
        path: BUDGET_PATH,
        role: Role::Evaluator,
        methods: &[("GET", Handler::GetBudget)],
        methods_are: EVALUATOR_METHODS,
        only: EVALUATORS_ONLY,
    },
    Route {
        path: RELEASES_PATH,
        role: Role::Evaluator,
        methods: &[("GET", Handler::GetReleases)],
        methods_are: EVALUATOR_METHODS,
        only: EVALUATORS_ONLY,
    },
    Route {
        path: QUERY_PATH,
        role: Role::Evaluator,
        methods: &[("POST", Handler::PostQuery)],
        methods_are: EVALUATOR_METHODS,
        only: EVALUATORS_ONLY,
    },
    Route {
        path: PLAN_PATH,
        role: Role::Evaluator,
        methods: &[("POST", Handler::PostPlan)],
        methods_are: EVALUATOR_METHODS,
        only: EVALUATORS_ONLY,
    },
];

/// Route a request by path, the role of the peer's certificate and the method.
pub(crate) async fn route(st: Arc<Steward>, peer: Arc<Peer>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let Some(r) = ROUTES.iter().find(|r| r.path == req.uri().path()) else {
        return Ok(refuse_unread(&st, &peer, Refusal::NotFound, StatusCode::NOT_FOUND, "no such endpoint"));
    };
    if peer.id.role != r.role {
        let message = format!("{}; this certificate's role is {}", r.only, peer.id.role);
        return Ok(refuse_unread(&st, &peer, Refusal::Forbidden, StatusCode::FORBIDDEN, &message));
    }
    let Some(&(_, handler)) = r.methods.iter().find(|(m, _)| *m == req.method().as_str()) else {
        let mut resp = refuse_unread(&st, &peer, Refusal::NotFound, StatusCode::METHOD_NOT_ALLOWED, r.methods_are);
        let allow: Vec<&str> = r.methods.iter().map(|(m, _)| *m).collect();
        if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
            resp.headers_mut().insert(ALLOW, v);
        }
        return Ok(resp);
    };
    Ok(call(handler, &st, peer, req).await)
}

async fn call(handler: Handler, st: &Arc<Steward>, peer: Arc<Peer>, req: Request<Incoming>) -> Resp {
    use super::{http, release};
    match handler {
        Handler::PostBatch => http::post_batch(st, peer, req).await,
        Handler::GetEpochs => http::get_epochs(st).await,
        Handler::PostEpochs => http::post_epochs(st, &peer, req).await,
        Handler::GetCatalog => release::get_catalog(st, &peer).await,
        Handler::GetBudget => release::get_budget(st, &peer).await,
        Handler::GetReleases => release::get_releases(st, &peer).await,
        Handler::PostQuery => release::post_query(st, &peer, req).await,
        Handler::PostPlan => release::post_plan(st, &peer, req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_routed_once_and_every_method_names_a_handler_once() {
        let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), ROUTES.len(), "a path with two rows");
        for r in ROUTES {
            let mut methods: Vec<&str> = r.methods.iter().map(|(m, _)| *m).collect();
            methods.sort();
            methods.dedup();
            assert_eq!(methods.len(), r.methods.len(), "{}: a method listed twice", r.path);
            assert!(methods.iter().all(|m| m.chars().all(|c| c.is_ascii_uppercase())), "{}", r.path);
        }
    }

    #[test]
    fn sources_reach_only_batches_and_epochs_and_evaluators_only_the_release_api() {
        for r in ROUTES {
            let source_path = r.path == BATCH_PATH || r.path == EPOCHS_PATH;
            assert_eq!(r.role == Role::Source, source_path, "{}", r.path);
            assert_eq!(r.role == Role::Evaluator, !source_path, "{}", r.path);
        }
    }
}
