//! What crosses the network between daemons: the batch a source posts to the steward and the steward's answers. The only serializable network types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::PseudoRecord;

pub mod binary;

/// The path a source posts batches to.
pub const BATCH_PATH: &str = "/v1/batches";

/// How a batch body is written: JSON (the documented form: the offline CLI,
/// curl, older sources) or the compact [`binary`] form sources send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFormat {
    Json,
    Binary,
}

impl BatchFormat {
    /// The format a request's `Content-Type` names: `application/json`
    /// (parameters such as a charset allowed), the binary form's type, and,
    /// as JSON, no type at all or curl's default for `--data-binary`
    /// (`application/x-www-form-urlencoded`), so older scripts keep working.
    /// `None` for any other type.
    pub fn from_content_type(value: Option<&[u8]>) -> Option<BatchFormat> {
        let Some(value) = value else { return Some(BatchFormat::Json) };
        let essence = value.split(|&b| b == b';').next().unwrap_or_default();
        let essence = essence.trim_ascii();
        if essence.eq_ignore_ascii_case(b"application/json")
            || essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        {
            Some(BatchFormat::Json)
        } else if essence.eq_ignore_ascii_case(binary::CONTENT_TYPE.as_bytes()) {
            Some(BatchFormat::Binary)
        } else {
            None
        }
    }

    /// The content type a body of this format is sent with.
    pub fn content_type(self) -> &'static str {
        match self {
            BatchFormat::Json => "application/json",
            BatchFormat::Binary => binary::CONTENT_TYPE,
        }
    }
}

/// A batch of pseudonymized records from one source.
///
/// `(source, batch_id)` identifies it: the steward stores a batch once and
/// acknowledges a replay without adding anything, so a source may re-send
/// whatever it has not seen acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The sending source's name; must equal the name in its certificate.
    pub source: String,
    /// Unique per source, forever (a store-unique prefix and a sequence number).
    pub batch_id: String,
    pub records: Vec<PseudoRecord>,
}

/// The steward's answer to a batch it has made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchAck {
    pub batch_id: String,
    /// Records stored by this request (0 for a replay).
    pub stored: u64,
    /// True when the batch was already held (a replay).
    pub duplicate: bool,
}

/// An error answer. Says what is wrong in words; never echoes a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Where sources report their key epoch (POST) and read the steward's (GET).
pub const EPOCHS_PATH: &str = "/v1/epochs";
/// Where the key custodian serves linkage keys to sources (GET).
pub const KEYS_PATH: &str = "/v1/keys";

/// A source's report of where it stands in key rotation. Counts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochReport {
    /// The epoch the source pseudonymizes new records under.
    pub active: u32,
    /// The epochs whose keys the source holds.
    pub keys: Vec<u32>,
    /// Re-pseudonymization under a newer epoch, while it runs.
    pub rekey: Option<RekeyProgress>,
    /// The newest epoch whose records (re-pseudonymized and new) the steward
    /// has all acknowledged: the source has finished it.
    pub complete: Option<u32>,
    /// Fingerprint of the active epoch's key (public: it reveals nothing of the
    /// key), so the steward can tell two different keys under one epoch number.
    pub fingerprint: String,
    /// What holds this source's rotation up, in words (no data).
    pub error: Option<String>,
}

/// How far a source is in re-pseudonymizing what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyProgress {
    pub target: u32,
    pub records_done: u64,
    pub records_total: u64,
}

/// The steward's view of key epochs, as sources and `divert keys status` see it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EpochStatus {
    /// The epoch whose linkage answers queries.
    pub active: Option<u32>,
    /// The epoch whose linkage is being built beside it.
    pub pending: Option<u32>,
    /// Per source: its last report and the records held under each epoch.
    pub sources: std::collections::BTreeMap<String, SourceEpochs>,
    /// Why the switch cannot happen even when every source is done (e.g. two keys under one epoch).
    #[serde(default)]
    pub conflict: Option<String>,
}

/// One source, as the steward sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceEpochs {
    pub report: Option<EpochReport>,
    /// RFC 3339 time of the last report.
    pub reported_at: Option<String>,
    /// Records held per epoch.
    pub records: std::collections::BTreeMap<u32, u64>,
    /// Whether the rotation to the pending epoch waits for this source.
    pub waiting_for: bool,
    /// An admin told the switch to the pending epoch not to wait for this source.
    #[serde(default)]
    pub excused: bool,
}

/// The body of a 409 answer to a batch under an epoch the steward does not link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRefusal {
    pub error: String,
    /// The batch's epoch.
    pub epoch: u32,
    /// The epoch the steward links now.
    pub current_epoch: u32,
}

/// What the custodian hands a source: the linkage keys it holds, hex-encoded.
/// Travels only over mutual TLS to a source certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    pub epochs: Vec<KeyEntry>,
}

/// One epoch's key, wiped from memory when dropped. `KeySet`'s `Debug` shows the epoch only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    #[zeroize(skip)]
    pub epoch: u32,
    pub key_hex: String,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let epochs: Vec<u32> = self.epochs.iter().map(|e| e.epoch).collect();
        write!(f, "KeySet(epochs {epochs:?})")
    }
}

// The evaluator API (`divert query`, `divert evaluate`, curl).

/// Where evaluators read the catalog of standard analyses (GET).
pub const CATALOG_PATH: &str = "/v1/catalog";
/// Where evaluators post queries (POST).
pub const QUERY_PATH: &str = "/v1/query";
/// Where evaluators read their own budget (GET).
pub const BUDGET_PATH: &str = "/v1/budget";
/// Where evaluators list their own past releases (GET).
pub const RELEASES_PATH: &str = "/v1/releases";
/// Where evaluators plan an evaluation: no data, no budget (POST).
pub const PLAN_PATH: &str = "/v1/plan";

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
    pub query: Option<crate::query::Query>,
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
    pub answer: Option<crate::query::engine::Answer>,
    /// What the query would release (dry run only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<crate::query::engine::DryRun>,
    /// True when the answer was stored from an earlier identical query (no epsilon spent now).
    pub cached: bool,
    /// Epsilon spent by this request (with the shared census it released first, if any).
    pub epsilon_spent: f64,
    /// Dry run: what the request would spend now (its own epsilon and, if not yet released, its census's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_needed: Option<f64>,
    pub budget: BudgetView,
    /// The steward's audit log as of this answer (its newest entry's seq and
    /// hash): kept by the evaluator, it lets anyone holding the log check
    /// later (`divert audit verify --expect SEQ:HASH`) that the log was not
    /// cut short or rewritten since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Receipt>,
}

/// A budget in epsilon, as evaluators see it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BudgetView {
    pub total: f64,
    pub spent: f64,
    pub left: f64,
}

/// One past release, as `GET /v1/releases` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub time: String,
    pub query_hash: String,
    pub canonical: String,
    pub epsilon: f64,
}

/// A planned evaluation, as `POST /v1/plan` answers it: nothing is read from the data, nothing spent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanResponse {
    pub evaluation: crate::query::evaluation::PlannedEvaluation,
    pub budget: BudgetView,
}

/// An audit log entry's seq and `hash` (`audit.rs`): since every hash covers the one before, it
/// vouches for the whole log up to that entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub seq: u64,
    pub hash: String,
}

impl std::str::FromStr for Receipt {
    type Err = String;

    /// `SEQ:HASH`, as `divert query` prints it.
    fn from_str(s: &str) -> Result<Receipt, String> {
        let (seq, hash) = s.split_once(':').ok_or("write SEQ:HASH, as `divert query` prints it")?;
        let seq = seq.trim().parse().map_err(|_| "SEQ is not a number".to_string())?;
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("HASH is not 64 hex digits".into());
        }
        Ok(Receipt { seq, hash })
    }
}

impl std::fmt::Display for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}
