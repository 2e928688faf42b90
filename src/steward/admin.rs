//! The steward's answers to the daemon's admin socket (`divert budget grant`, `divert budget list`, `divert keys status`, `divert keys excuse`), and its refusals of the sources' requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::daemon::admin::{Request, Response};
use crate::daemon::service::{AdminAnswer, RoleService};

use tracing::info;

use super::epochs::ExcuseError;
use super::store::StoreError;
use super::Steward;

/// Why an admin request to the steward failed; the message is what `divert` prints.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Ledger(#[from] crate::dp::ledger::LedgerError),
    #[error("the audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Excuse(#[from] ExcuseError),
    #[error("the {what} task failed: {detail}")]
    Task { what: &'static str, detail: String },
}

impl RoleService for Steward {
    fn role(&self) -> &'static str {
        "steward"
    }

    fn status(&self) -> serde_json::Value {
        Steward::status(self)
    }

    fn admin(self: Arc<Self>, request: Request) -> AdminAnswer {
        Box::pin(async move {
            match request {
                Request::BudgetGrant { evaluator, epsilon_micro } => {
                    // The grant and its audit entry are durable writes: off the async workers.
                    let st = self.clone();
                    match tokio::task::spawn_blocking(move || st.grant(&evaluator, epsilon_micro)).await {
                        Ok(Ok(b)) => Response::ok(serde_json::to_value(b).unwrap_or_default()),
                        Ok(Err(e)) => Response::err(e.to_string()),
                        Err(e) => Response::err(AdminError::Task { what: "grant", detail: e.to_string() }.to_string()),
                    }
                }
                Request::Budgets => match self.budgets() {
                    Ok(v) => Response::ok(serde_json::to_value(v).unwrap_or_default()),
                    Err(e) => Response::err(e.to_string()),
                },
                Request::KeyStatus => match self.epoch_status() {
                    Ok(v) => Response::ok(serde_json::json!({ "steward": { "status": v, "fresh": true } })),
                    Err(e) => Response::err(e.to_string()),
                },
                Request::KeysExcuse { source } => match self.excuse(&source).await {
                    Ok((epoch, dropped)) => Response::ok(serde_json::json!({
                        "source": source, "epoch": epoch, "records_left_out": dropped,
                    })),
                    Err(e) => Response::err(e.to_string()),
                },
                Request::Ingest { .. } => Response::err("this daemon is a steward; files are ingested by sources"),
                Request::Forget { .. } => Response::err(
                    "this daemon is a steward; records are deleted at their source (`divert forget --config SOURCE.toml`)",
                ),
                Request::KeysChanged => Response::err("the steward holds no linkage key"),
                // The runner answers status itself.
                Request::Status => Response::ok(Steward::status(&self)),
            }
        })
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Steward::close(self))
    }
}

impl Steward {
    /// Set an evaluator's budget (admin socket), audited.
    pub fn grant(&self, evaluator: &str, epsilon_micro: u64) -> Result<crate::dp::ledger::EvaluatorBudget, AdminError> {
        let budget = self.ledger.grant(evaluator, epsilon_micro)?;
        let detail = crate::audit::BudgetGrantDetail {
            evaluator: evaluator.to_string(),
            total_micro: budget.total_micro,
            spent_micro: budget.spent_micro,
        };
        self.audit.append(crate::audit::Kind::BudgetGrant, "admin", &detail)?;
        info!(evaluator, total = %crate::dp::ledger::format_epsilon(budget.total_micro), "budget granted");
        Ok(crate::dp::ledger::EvaluatorBudget { evaluator: evaluator.to_string(), budget })
    }

    /// Every evaluator's budget (admin socket).
    pub fn budgets(&self) -> Result<crate::dp::ledger::BudgetsView, AdminError> {
        Ok(self.ledger.view()?)
    }
}
