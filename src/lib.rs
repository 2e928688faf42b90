//! divert: pseudonymize, exchange and release diversion-program records without revealing who is who.
//!
//! The library is organised as a pure core (schema, normalization, tokens,
//! linkage, synthetic data) with adapters at the edge (key files, CSV/JSONL
//! readers) and the CLI commands in `cmd`. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod accept;
pub mod audit;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod days;
pub mod dp;
pub mod evaluator;
pub mod fsutil;
pub mod hex;
pub mod identity;
pub mod ingest;
pub mod keyedhash;
pub mod keys;
pub mod linkage;
pub mod normalize;
pub mod pki;
pub mod pseudonymize;
pub mod query;
pub mod record;
pub mod report;
pub mod schema;
pub mod source;
pub mod spiffe;
pub mod steward;
pub mod storage;
pub mod synth;
pub mod tls;
pub mod token;
pub mod wire;
