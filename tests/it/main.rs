//! Integration tests of divert: one module per area, run with `cargo test --test it`.

mod net;
mod offline;
mod pki;
mod source;
mod steward;
mod synth;
mod util;
