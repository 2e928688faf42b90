//! Integration tests of divert: one module per area, run with `cargo test --test it`.

mod attack;
mod certrotate;
mod crash;
mod demo;
mod layering;
mod ledger;
mod net;
mod offline;
mod pki;
mod powerloss;
mod query;
mod release;
mod report;
mod rotation;
mod source;
mod steward;
mod synth;
mod util;
