//! What crosses the network between daemons: the batch a source posts to the steward and the steward's answers. The only serializable network types.

use serde::{Deserialize, Serialize};

use crate::record::PseudoRecord;

/// The path a source posts batches to.
pub const BATCH_PATH: &str = "/v1/batches";

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
