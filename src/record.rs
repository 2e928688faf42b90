//! The pseudonymized record: the only form of a record that leaves an agency (JSON lines on disk, batches on the wire).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A pseudonymized record. It carries no identity value: tokens are keyed
/// hashes, the date of birth has become `fields.age`, free text is gone
/// unless the schema marks it safe, and the agency's record id is a keyed
/// hash (`rid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudoRecord {
    /// The agency that holds the record.
    pub source: String,
    /// The record kind (a key of the schema's `kinds`).
    pub kind: String,
    /// The line of the record in the agency's input file.
    pub line: u64,
    /// The key epoch the tokens were made under.
    pub epoch: u32,
    /// Keyed hash of (source, kind, agency record id), 32 hex digits.
    pub rid: String,
    /// Scheme name → `<epoch>:<32 hex digits>`; a scheme whose fields the record lacks is absent.
    pub tokens: BTreeMap<String, String>,
    /// Released fields: `age`, released identity categories (`sex`), and the
    /// kind's fields (dates as `YYYY-MM-DD`, enums as their value, bools,
    /// integers, safe strings); `null` when missing.
    pub fields: BTreeMap<String, serde_json::Value>,
}
