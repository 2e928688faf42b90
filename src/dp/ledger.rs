//! The privacy-budget ledger: each evaluator's epsilon budget and what it has spent, in the steward's sled store, reserved atomically and durably before any noise is drawn; and the answer cache that makes a repeated query free.
//!
//! All amounts are integer **micro-epsilon** (`u64`, 1.0 ε = 1 000 000), so
//! sums are exact and a budget can never be overspent by rounding.
//!
//! # Layout (three trees, all named `ledger_*`)
//!
//! | tree | key | value |
//! |---|---|---|
//! | `ledger_budgets` | evaluator name (a certificate name: 1–63 bytes of `a-z 0-9 - _`) | version `1`, total (u64 LE), spent (u64 LE): 17 bytes |
//! | `ledger_program` | `totals` | version `1`, sum of every evaluator's total (u64 LE): 9 bytes |
//! | `ledger_answers` | evaluator `00` query hash (32 bytes) | answer header: version `1`, length (u64 LE), chunks (u32 LE) |
//! | `ledger_answers` | evaluator `00` query hash `00` chunk (u32 BE) | up to [`ANSWER_CHUNK_BYTES`] of the answer |
//!
//! Names never contain a `00` byte, so the keys are unambiguous, and an
//! answer's header sorts just before its chunks. Answers are cut into small
//! chunks for the reason given in `steward::store`: sled 0.34 writes large
//! values to blob files its `flush` does not fsync.
//!
//! # Reservation
//!
//! [`Ledger::reserve`] runs one sled transaction over the evaluator's budget
//! record — read total and spent, refuse or add the amount to spent — and
//! then flushes the store before it returns. sled serializes transactions, so
//! any number of concurrent reservations can never spend more than the
//! total; a refused reservation writes nothing. Only after `reserve` has
//! returned may the caller draw noise.
//!
//! **A reservation is spent for good.** If the query later fails — the
//! mechanism errors, the audit append fails, the connection drops, the
//! process dies — the epsilon is not given back. Refunding would need to
//! know that no noisy value derived from the reservation ever left (or was
//! even computed), and after a crash that cannot be known; losing budget is
//! the safe direction, overspending is not.
//!
//! # The order the steward must follow for one query
//!
//! 1. [`Ledger::cached`] — the same canonical query (its hash includes the
//!    epsilon) asked before by the same evaluator: answer with the stored
//!    bytes, at no cost (no averaging attack), and stop.
//! 2. [`Ledger::reserve`] — durable (transaction, then flush); a
//!    [`Refusal`] is answered (and audited) with no noise drawn.
//! 3. Draw noise and build the answer.
//! 4. Append a `release` entry to the audit log (`audit::AuditLog::append`,
//!    fsynced) carrying the evaluator, query hash, epsilon and budget left.
//! 5. [`Ledger::store_answer`] — durable (one batch, then flush).
//! 6. Respond.
//!
//! A crash after 2 leaves the epsilon spent with no answer sent; after 4 the
//! audit log shows it too; after 5 a repeat of the query gets the stored
//! answer. At every point spent ≥ the epsilon of the answers the evaluator
//! received: an answer may be lost (asking again then costs again — two
//! answers, both paid for), a reservation is never refunded.
//!
//! # Reconciliation
//!
//! At startup the steward sums the epsilon of the audit log's `release`
//! entries per evaluator (`audit::AuditLog::spent_by_evaluator`) and passes
//! it to [`Ledger::reconcile`], which raises any evaluator's spent to at
//! least that sum and never lowers anything. With the order above the audit
//! log can only show more than the ledger if the store lost writes (a
//! restored backup, a disk that lied about a flush); reconciling keeps the
//! spending the evaluator was answered for.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use crate::storage::{Durable, WriteBatch};

/// Micro-epsilon in one epsilon.
pub const MICRO_PER_EPSILON: u64 = 1_000_000;
/// How many answer bytes one chunk holds (see the module docs).
pub const ANSWER_CHUNK_BYTES: usize = 4096;
/// The largest answer the cache stores.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const TREE_BUDGETS: &str = "ledger_budgets";
const TREE_PROGRAM: &str = "ledger_program";
const TREE_ANSWERS: &str = "ledger_answers";
const KEY_TOTALS: &[u8] = b"totals";
const VERSION: u8 = 1;
const RECORD_LEN: usize = 17;
const TOTALS_LEN: usize = 9;
const ANSWER_HEADER_LEN: usize = 13;

/// Why the ledger could not do what was asked. Messages carry names and
/// amounts, never an answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("budget ledger: {0}")]
    Sled(#[from] sled::Error),
    #[error("budget ledger: a stored {what} is damaged: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("`{given}` is not an evaluator name (1-63 characters of a-z, 0-9, - and _)")]
    BadEvaluator { given: String },
    #[error("cannot set {evaluator}'s budget to {} ε: it has already spent {} ε", format_epsilon(*requested_micro), format_epsilon(*spent_micro))]
    BelowSpent { evaluator: String, spent_micro: u64, requested_micro: u64 },
    #[error("cannot set {evaluator}'s budget to {} ε: with the other evaluators' {} ε the program would exceed its cap of {} ε", format_epsilon(*requested_micro), format_epsilon(*others_micro), format_epsilon(*cap_micro))]
    OverCap { evaluator: String, requested_micro: u64, others_micro: u64, cap_micro: u64 },
    #[error("a reservation must be of more than 0 ε")]
    ZeroReservation,
    #[error("an answer of {bytes} bytes is larger than the cache keeps ({MAX_ANSWER_BYTES})")]
    AnswerTooLarge { bytes: usize },
    #[error("budget ledger: amounts overflow")]
    Overflow,
    #[error("budget ledger: a writer panicked while holding the answer lock")]
    Poisoned,
}

/// One evaluator's budget, in micro-epsilon. `left_micro` is
/// `total - spent`, or 0 if reconciliation raised spent above the total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub total_micro: u64,
    pub spent_micro: u64,
    pub left_micro: u64,
}

impl Budget {
    fn new(total_micro: u64, spent_micro: u64) -> Budget {
        Budget { total_micro, spent_micro, left_micro: total_micro.saturating_sub(spent_micro) }
    }
}

/// A successful reservation: the epsilon is spent (durably) and noise may be drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub evaluator: String,
    pub query_hash: [u8; 32],
    pub epsilon_micro: u64,
    /// The evaluator's budget after the reservation.
    pub budget: Budget,
}

/// Why a reservation was refused: an expected outcome, not a failure.
/// Nothing changed and no noise may be drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// The amount is more than the budget left.
    Exhausted { left_micro: u64 },
    /// No budget has been granted to this evaluator.
    NoBudget,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Exhausted { left_micro } => {
                write!(f, "the privacy budget left ({} ε) does not cover this query", format_epsilon(*left_micro))
            }
            Refusal::NoBudget => write!(f, "no privacy budget has been granted to this evaluator"),
        }
    }
}

/// One evaluator's budget with its name: what `budget grant` answers and
/// `budget show` lists (the admin socket's wire form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluatorBudget {
    pub evaluator: String,
    #[serde(flatten)]
    pub budget: Budget,
}

/// The whole ledger at a glance: the admin socket's answer to `Request::Budgets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetsView {
    pub program_cap_micro: u64,
    pub program_granted_micro: u64,
    pub program_spent_micro: u64,
    pub evaluators: Vec<EvaluatorBudget>,
}

/// What [`Ledger::reconcile`] changed for one evaluator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub evaluator: String,
    pub from_spent_micro: u64,
    pub to_spent_micro: u64,
}

/// The budget ledger and answer cache over the steward's sled store.
pub struct Ledger {
    /// The store's writer: every change of the ledger is a write job on it,
    /// serial with every other write of the store and durable when it returns.
    durable: Arc<Durable>,
    budgets: sled::Tree,
    program: sled::Tree,
    answers: sled::Tree,
    cap_micro: u64,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger").field("cap_micro", &self.cap_micro).finish_non_exhaustive()
    }
}

/// An error raised inside a transaction: aborts it.
fn abort<T>(e: LedgerError) -> Result<T, ConflictableTransactionError<LedgerError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn unwrap_tx<T>(r: Result<T, TransactionError<LedgerError>>) -> Result<T, LedgerError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => LedgerError::Sled(e),
    })
}

impl Ledger {
    /// Open the ledger's trees in `db`. `program_cap_micro` is the
    /// program-wide cap on the sum of all evaluators' totals (from the
    /// steward config). If the stored totals already exceed a cap that has
    /// since been lowered, the ledger still opens; grants may then only
    /// lower budgets until the sum is under the cap again.
    pub fn open(durable: &Arc<Durable>, program_cap_micro: u64) -> Result<Ledger, LedgerError> {
        let db = durable.db();
        let ledger = Ledger {
            durable: durable.clone(),
            budgets: db.open_tree(TREE_BUDGETS)?,
            program: db.open_tree(TREE_PROGRAM)?,
            answers: db.open_tree(TREE_ANSWERS)?,
            cap_micro: program_cap_micro,
        };
        // The totals record is written in the same transaction as every
        // budget change, so it must equal the sum of the records.
        let mut sum = 0u64;
        for (_, budget) in ledger.budgets()? {
            sum = sum.checked_add(budget.total_micro).ok_or(LedgerError::Overflow)?;
        }
        let stored = decode_totals(ledger.program.get(KEY_TOTALS)?.as_deref())?;
        if stored != sum {
            return Err(LedgerError::Corrupt {
                what: "program total",
                detail: format!("recorded {stored} µε, the budgets sum to {sum} µε"),
            });
        }
        Ok(ledger)
    }

    /// The program-wide cap, in micro-epsilon.
    pub fn cap_micro(&self) -> u64 {
        self.cap_micro
    }

    /// Set `evaluator`'s total budget to `epsilon_micro` (raising or
    /// lowering it; 0 stops it from spending more). The total may not be set
    /// below what the evaluator has already spent, and the sum of all totals
    /// may not exceed the program cap (a grant that lowers a total is always
    /// allowed, so a lowered cap can be met again). Durable when it returns.
    pub fn grant(&self, evaluator: &str, epsilon_micro: u64) -> Result<Budget, LedgerError> {
        check_evaluator(evaluator)?;
        let cap = self.cap_micro;
        let (budgets_tree, program_tree) = (self.budgets.clone(), self.program.clone());
        let evaluator = evaluator.to_string();
        self.durable.write(move |_| Ok(Self::grant_tx(&budgets_tree, &program_tree, &evaluator, epsilon_micro, cap)))?
    }

    fn grant_tx(
        budgets_tree: &sled::Tree,
        program_tree: &sled::Tree,
        evaluator: &str,
        epsilon_micro: u64,
        cap: u64,
    ) -> Result<Budget, LedgerError> {
        let result = (budgets_tree, program_tree).transaction(|(budgets, program)| {
            let (total, spent) = match read_record(budgets, evaluator)? {
                Ok(r) => r.unwrap_or((0, 0)),
                Err(e) => return abort(e),
            };
            let sum = match decode_totals(program.get(KEY_TOTALS)?.as_deref()) {
                Ok(s) => s,
                Err(e) => return abort(e),
            };
            if epsilon_micro < spent {
                return abort(LedgerError::BelowSpent {
                    evaluator: evaluator.to_string(),
                    spent_micro: spent,
                    requested_micro: epsilon_micro,
                });
            }
            let others = sum.saturating_sub(total);
            let Some(new_sum) = others.checked_add(epsilon_micro) else { return abort(LedgerError::Overflow) };
            if new_sum > cap && epsilon_micro > total {
                return abort(LedgerError::OverCap {
                    evaluator: evaluator.to_string(),
                    requested_micro: epsilon_micro,
                    others_micro: others,
                    cap_micro: cap,
                });
            }
            budgets.insert(evaluator.as_bytes(), &encode_record(epsilon_micro, spent)[..])?;
            program.insert(KEY_TOTALS, &encode_totals(new_sum)[..])?;
            Ok(Budget::new(epsilon_micro, spent))
        });
        unwrap_tx(result)
    }

    /// Reserve `epsilon_micro` of `evaluator`'s budget for the query
    /// `query_hash`: atomically move it from left to spent and flush the
    /// store, before any noise is drawn. The outer `Result` is the ledger
    /// failing (nothing may be released then either); the inner one is the
    /// answer: a [`Reservation`], or a [`Refusal`] that changed nothing.
    pub fn reserve(
        &self,
        evaluator: &str,
        query_hash: [u8; 32],
        epsilon_micro: u64,
    ) -> Result<Result<Reservation, Refusal>, LedgerError> {
        check_evaluator(evaluator)?;
        if epsilon_micro == 0 {
            return Err(LedgerError::ZeroReservation);
        }
        let tree = self.budgets.clone();
        let name = evaluator.to_string();
        let outcome = self.durable.write(move |_| Ok(Self::reserve_tx(&tree, &name, epsilon_micro)))??;
        Ok(outcome.map(|budget| Reservation { evaluator: evaluator.to_string(), query_hash, epsilon_micro, budget }))
    }

    /// The reservation's transaction (on the writer thread): the new budget, or a refusal.
    fn reserve_tx(
        tree: &sled::Tree,
        evaluator: &str,
        epsilon_micro: u64,
    ) -> Result<Result<Budget, Refusal>, LedgerError> {
        let result = tree.transaction(|budgets| {
            let (total, spent) = match read_record(budgets, evaluator)? {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(Err(Refusal::NoBudget)),
                Err(e) => return abort(e),
            };
            let left = total.saturating_sub(spent);
            if epsilon_micro > left {
                return Ok(Err(Refusal::Exhausted { left_micro: left }));
            }
            // `spent + epsilon <= total`, so this cannot overflow.
            let new_spent = spent + epsilon_micro;
            budgets.insert(evaluator.as_bytes(), &encode_record(total, new_spent)[..])?;
            Ok(Ok(Budget::new(total, new_spent)))
        });
        unwrap_tx(result)
    }

    /// The answer stored for this evaluator's query, if any.
    pub fn cached(&self, evaluator: &str, query_hash: [u8; 32]) -> Result<Option<Vec<u8>>, LedgerError> {
        check_evaluator(evaluator)?;
        let header_key = answer_key(evaluator, &query_hash);
        let Some(header) = self.answers.get(&header_key)? else { return Ok(None) };
        let (len, chunks) = decode_answer_header(&header)?;
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(MAX_ANSWER_BYTES));
        for i in 0..chunks {
            let chunk = self.answers.get(chunk_key(&header_key, i))?.ok_or_else(|| LedgerError::Corrupt {
                what: "cached answer",
                detail: format!("{evaluator}: chunk {i} of {chunks} is missing"),
            })?;
            out.extend_from_slice(&chunk);
        }
        if out.len() as u64 != len {
            return Err(LedgerError::Corrupt {
                what: "cached answer",
                detail: format!("{evaluator}: {} bytes stored, {len} recorded", out.len()),
            });
        }
        Ok(Some(out))
    }

    /// Keep the answer to this evaluator's query so that asking again costs
    /// nothing; durable (one atomic batch, then a flush) when it returns.
    /// Call it only after the reservation and the audit append. If an answer
    /// is already stored (two identical queries raced, and both were paid
    /// for), the first one stays and this returns `false`.
    pub fn store_answer(&self, evaluator: &str, query_hash: [u8; 32], answer: &[u8]) -> Result<bool, LedgerError> {
        check_evaluator(evaluator)?;
        if answer.len() > MAX_ANSWER_BYTES {
            return Err(LedgerError::AnswerTooLarge { bytes: answer.len() });
        }
        let header_key = answer_key(evaluator, &query_hash);
        let chunks: Vec<&[u8]> = answer.chunks(ANSWER_CHUNK_BYTES).collect();
        let count = u32::try_from(chunks.len()).map_err(|_| LedgerError::Overflow)?;
        let mut batch = WriteBatch::default();
        for (i, chunk) in (0u32..).zip(&chunks) {
            batch.insert(chunk_key(&header_key, i), chunk);
        }
        batch.insert(&header_key, encode_answer_header(answer.len() as u64, count));
        let answers = self.answers.clone();
        // The check and the write on the writer thread: of two identical answers racing, the first stays.
        let stored = self.durable.write(move |_| {
            if answers.contains_key(&header_key)? {
                return Ok(false);
            }
            answers.apply_batch(batch.into_inner()?)?;
            Ok(true)
        })?;
        Ok(stored)
    }

    /// One evaluator's budget (all zero if none was ever granted).
    pub fn budget(&self, evaluator: &str) -> Result<Budget, LedgerError> {
        check_evaluator(evaluator)?;
        let (total, spent) = decode_record(self.budgets.get(evaluator.as_bytes())?.as_deref())?.unwrap_or((0, 0));
        Ok(Budget::new(total, spent))
    }

    /// Every evaluator that has a budget record, by name.
    pub fn budgets(&self) -> Result<Vec<(String, Budget)>, LedgerError> {
        let mut out = Vec::new();
        for item in self.budgets.iter() {
            let (k, v) = item?;
            let name = String::from_utf8(k.to_vec()).map_err(|_| LedgerError::Corrupt {
                what: "budget key",
                detail: "an evaluator name is not UTF-8".into(),
            })?;
            let (total, spent) = decode_record(Some(&v))?.unwrap_or((0, 0));
            out.push((name, Budget::new(total, spent)));
        }
        Ok(out)
    }

    /// Epsilon spent across all evaluators.
    pub fn program_spent_micro(&self) -> Result<u64, LedgerError> {
        Ok(self.budgets()?.iter().fold(0u64, |acc, (_, b)| acc.saturating_add(b.spent_micro)))
    }

    /// The whole ledger, for `divert budget show`.
    pub fn view(&self) -> Result<BudgetsView, LedgerError> {
        let budgets = self.budgets()?;
        let granted = budgets.iter().fold(0u64, |acc, (_, b)| acc.saturating_add(b.total_micro));
        let spent = budgets.iter().fold(0u64, |acc, (_, b)| acc.saturating_add(b.spent_micro));
        Ok(BudgetsView {
            program_cap_micro: self.cap_micro,
            program_granted_micro: granted,
            program_spent_micro: spent,
            evaluators: budgets.into_iter().map(|(evaluator, budget)| EvaluatorBudget { evaluator, budget }).collect(),
        })
    }

    /// Raise each evaluator's spent to at least what the audit log shows it
    /// was released (`audit_spent`: evaluator → micro-epsilon); never lower
    /// anything, never change a total. An evaluator the ledger does not know
    /// gets a record with total 0. Returns what changed (the steward should
    /// log and audit it); durable when it returns.
    pub fn reconcile(&self, audit_spent: &BTreeMap<String, u64>) -> Result<Vec<Adjustment>, LedgerError> {
        for evaluator in audit_spent.keys() {
            check_evaluator(evaluator)?;
        }
        let (tree, audit_spent) = (self.budgets.clone(), audit_spent.clone());
        self.durable.write(move |_| Ok(Self::reconcile_tx(&tree, &audit_spent)))?
    }

    fn reconcile_tx(tree: &sled::Tree, audit_spent: &BTreeMap<String, u64>) -> Result<Vec<Adjustment>, LedgerError> {
        let mut changed = Vec::new();
        for (evaluator, &audited) in audit_spent {
            let result = tree.transaction(|budgets| {
                let (total, spent) = match read_record(budgets, evaluator)? {
                    Ok(r) => r.unwrap_or((0, 0)),
                    Err(e) => return abort(e),
                };
                if audited <= spent {
                    return Ok(None);
                }
                budgets.insert(evaluator.as_bytes(), &encode_record(total, audited)[..])?;
                Ok(Some(spent))
            });
            if let Some(from) = unwrap_tx(result)? {
                changed.push(Adjustment {
                    evaluator: evaluator.clone(),
                    from_spent_micro: from,
                    to_spent_micro: audited,
                });
            }
        }
        Ok(changed)
    }
}

fn check_evaluator(name: &str) -> Result<(), LedgerError> {
    crate::spiffe::validate_name(name).map_err(|_| LedgerError::BadEvaluator { given: name.to_string() })
}

type TxResult<T> = Result<T, ConflictableTransactionError<LedgerError>>;

/// Read a budget record inside a transaction: the outer error is sled's,
/// the inner one a damaged record.
fn read_record(tree: &TransactionalTree, evaluator: &str) -> TxResult<Result<Option<(u64, u64)>, LedgerError>> {
    let v = tree.get(evaluator.as_bytes())?;
    Ok(decode_record(v.as_deref()))
}

fn encode_record(total: u64, spent: u64) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&total.to_le_bytes());
    out[9..17].copy_from_slice(&spent.to_le_bytes());
    out
}

fn decode_record(v: Option<&[u8]>) -> Result<Option<(u64, u64)>, LedgerError> {
    let Some(v) = v else { return Ok(None) };
    match v {
        [VERSION, rest @ ..] if rest.len() == 16 => Ok(Some((le_u64(&rest[0..8]), le_u64(&rest[8..16])))),
        _ => Err(LedgerError::Corrupt { what: "budget record", detail: format!("{} bytes", v.len()) }),
    }
}

fn encode_totals(sum: u64) -> [u8; TOTALS_LEN] {
    let mut out = [0u8; TOTALS_LEN];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&sum.to_le_bytes());
    out
}

fn decode_totals(v: Option<&[u8]>) -> Result<u64, LedgerError> {
    match v {
        None => Ok(0),
        Some([VERSION, rest @ ..]) if rest.len() == 8 => Ok(le_u64(rest)),
        Some(v) => Err(LedgerError::Corrupt { what: "program total", detail: format!("{} bytes", v.len()) }),
    }
}

fn encode_answer_header(len: u64, chunks: u32) -> [u8; ANSWER_HEADER_LEN] {
    let mut out = [0u8; ANSWER_HEADER_LEN];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&len.to_le_bytes());
    out[9..13].copy_from_slice(&chunks.to_le_bytes());
    out
}

fn decode_answer_header(v: &[u8]) -> Result<(u64, u32), LedgerError> {
    match v {
        [VERSION, rest @ ..] if rest.len() == 12 => {
            let mut c = [0u8; 4];
            c.copy_from_slice(&rest[8..12]);
            Ok((le_u64(&rest[0..8]), u32::from_le_bytes(c)))
        }
        _ => Err(LedgerError::Corrupt { what: "cached answer header", detail: format!("{} bytes", v.len()) }),
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn answer_key(evaluator: &str, query_hash: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(evaluator.len() + 33);
    k.extend_from_slice(evaluator.as_bytes());
    k.push(0);
    k.extend_from_slice(query_hash);
    k
}

fn chunk_key(header_key: &[u8], i: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(header_key.len() + 5);
    k.extend_from_slice(header_key);
    k.push(0);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Why an epsilon given as text was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpsilonError {
    #[error("`{given}` is not an epsilon: write a decimal number such as 1, 0.5 or 0.000001")]
    NotDecimal { given: String },
    #[error("`{given}` has more than 6 decimals: epsilon is kept in millionths")]
    TooPrecise { given: String },
    #[error("`{given}` is too large an epsilon")]
    TooLarge { given: String },
    #[error("`{given}` is outside the epsilon one query may spend: more than 0 and at most {max}")]
    OutOfRange { given: String, max: u32 },
}

/// The epsilon of one query, as typed by an evaluator (`--epsilon 0.5`):
/// an exact decimal (see [`parse_epsilon`]: no `NaN`, `inf`, sign or
/// exponent), more than zero and at most [`MAX_EPSILON`](super::mechanism::MAX_EPSILON).
/// A value that is not one is an error, never "use the default".
pub fn parse_query_epsilon(s: &str) -> Result<f64, EpsilonError> {
    let micro = parse_epsilon(s.trim())?;
    let max = super::mechanism::MAX_EPSILON;
    if micro == 0 || micro as f64 > max * MICRO_PER_EPSILON as f64 {
        return Err(EpsilonError::OutOfRange { given: s.to_string(), max: max as u32 });
    }
    Ok(micro as f64 / MICRO_PER_EPSILON as f64)
}

/// Parse a decimal epsilon (`1`, `1.5`, `0.000001`) exactly into
/// micro-epsilon, with no floating point: digits, optionally a point and 1
/// to 6 more digits. No sign, exponent or spaces.
pub fn parse_epsilon(s: &str) -> Result<u64, EpsilonError> {
    let not_decimal = || EpsilonError::NotDecimal { given: s.to_string() };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_decimal());
    }
    let frac = match frac {
        None => "",
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => return Err(not_decimal()),
        Some(f) if f.len() > 6 => return Err(EpsilonError::TooPrecise { given: s.to_string() }),
        Some(f) => f,
    };
    let too_large = || EpsilonError::TooLarge { given: s.to_string() };
    let whole: u64 = int.parse().map_err(|_| too_large())?;
    let mut micro_frac = 0u64;
    for (i, b) in frac.bytes().enumerate() {
        micro_frac += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
    }
    whole.checked_mul(MICRO_PER_EPSILON).and_then(|w| w.checked_add(micro_frac)).ok_or_else(too_large)
}

/// Micro-epsilon as a decimal epsilon with no trailing zeros: `1500000` → `1.5`.
pub fn format_epsilon(micro: u64) -> String {
    let whole = micro / MICRO_PER_EPSILON;
    let frac = micro % MICRO_PER_EPSILON;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_ledger(cap: u64) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let durable = Arc::new(Durable::open(dir.path(), 1 << 20).unwrap());
        let ledger = Ledger::open(&durable, cap).unwrap();
        (dir, ledger)
    }

    #[test]
    fn ledger_epsilon_text_round_trips() {
        assert_eq!(parse_query_epsilon("0.5"), Ok(0.5));
        assert_eq!(parse_query_epsilon("10"), Ok(10.0));
        for bad in ["NaN", "nan", "inf", "-inf", "infinity", "1e400", "1e-3", "-1", "+1", "", " "] {
            assert!(matches!(parse_query_epsilon(bad), Err(EpsilonError::NotDecimal { .. })), "{bad}");
        }
        for bad in ["0", "0.0", "10.000001", "11"] {
            assert!(matches!(parse_query_epsilon(bad), Err(EpsilonError::OutOfRange { .. })), "{bad}");
        }
        assert_eq!(parse_epsilon("0.000001"), Ok(1));
        assert_eq!(parse_epsilon("1.5"), Ok(1_500_000));
        assert_eq!(parse_epsilon("0.1"), Ok(100_000));
        assert_eq!(parse_epsilon("2"), Ok(2_000_000));
        assert!(matches!(parse_epsilon("0.0000001"), Err(EpsilonError::TooPrecise { .. })));
        for bad in ["", ".5", "1.", "-1", "+1", "1e3", " 1", "1,5", "0x10", "1.2.3"] {
            assert!(matches!(parse_epsilon(bad), Err(EpsilonError::NotDecimal { .. })), "{bad}");
        }
        assert!(matches!(parse_epsilon("99999999999999999999"), Err(EpsilonError::TooLarge { .. })));
        for m in [0, 1, 10, 100_000, 1_000_000, 1_500_000, 123_456_789] {
            assert_eq!(parse_epsilon(&format_epsilon(m)), Ok(m));
        }
        assert_eq!(format_epsilon(1_500_000), "1.5");
        assert_eq!(format_epsilon(1), "0.000001");
    }

    #[test]
    fn ledger_grant_reserve_refuse() {
        let (_dir, l) = temp_ledger(3_000_000);
        let h = [7u8; 32];
        assert_eq!(l.reserve("eval", h, 1).unwrap(), Err(Refusal::NoBudget));
        assert_eq!(l.grant("eval", 1_000_000).unwrap(), Budget::new(1_000_000, 0));
        let r = l.reserve("eval", h, 600_000).unwrap().unwrap();
        assert_eq!(r.budget, Budget::new(1_000_000, 600_000));
        assert_eq!(l.reserve("eval", h, 400_001).unwrap(), Err(Refusal::Exhausted { left_micro: 400_000 }));
        assert_eq!(l.budget("eval").unwrap().spent_micro, 600_000);
        assert!(matches!(l.grant("eval", 500_000), Err(LedgerError::BelowSpent { .. })));
        assert!(matches!(l.grant("other", 2_000_001), Err(LedgerError::OverCap { .. })));
        l.grant("other", 2_000_000).unwrap();
        assert!(matches!(l.reserve("eval", h, 0), Err(LedgerError::ZeroReservation)));
        assert!(matches!(l.reserve("Eval!", h, 1), Err(LedgerError::BadEvaluator { .. })));
        assert_eq!(l.program_spent_micro().unwrap(), 600_000);
        assert_eq!(l.view().unwrap().program_granted_micro, 3_000_000);
    }

    #[test]
    fn ledger_answers_are_chunked_and_first_wins() {
        let (_dir, l) = temp_ledger(1_000_000);
        let h = [1u8; 32];
        assert_eq!(l.cached("eval", h).unwrap(), None);
        let big: Vec<u8> = (0..3 * ANSWER_CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
        assert!(l.store_answer("eval", h, &big).unwrap());
        assert!(!l.store_answer("eval", h, b"other").unwrap());
        assert_eq!(l.cached("eval", h).unwrap(), Some(big));
        assert_eq!(l.cached("eval2", h).unwrap(), None);
        assert!(l.store_answer("eval", [2u8; 32], b"").unwrap());
        assert_eq!(l.cached("eval", [2u8; 32]).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn ledger_reconcile_only_raises() {
        let (_dir, l) = temp_ledger(10_000_000);
        l.grant("a", 1_000_000).unwrap();
        l.reserve("a", [0; 32], 300_000).unwrap().unwrap();
        let audit: BTreeMap<String, u64> = [("a".to_string(), 200_000), ("b".to_string(), 50_000)].into();
        let changed = l.reconcile(&audit).unwrap();
        assert_eq!(changed, vec![Adjustment { evaluator: "b".into(), from_spent_micro: 0, to_spent_micro: 50_000 }]);
        assert_eq!(l.budget("a").unwrap().spent_micro, 300_000);
        assert_eq!(l.budget("b").unwrap(), Budget::new(0, 50_000));
        let audit: BTreeMap<String, u64> = [("a".to_string(), 1_200_000)].into();
        l.reconcile(&audit).unwrap();
        assert_eq!(l.budget("a").unwrap(), Budget { total_micro: 1_000_000, spent_micro: 1_200_000, left_micro: 0 });
        assert_eq!(l.reserve("a", [0; 32], 1).unwrap(), Err(Refusal::Exhausted { left_micro: 0 }));
    }
}
