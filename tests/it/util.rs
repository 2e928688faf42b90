//! Helpers shared by the integration tests: run the built binary, read its output.

use std::path::Path;
use std::process::{Command, Output};

/// The built `divert` binary, run in `dir` (so relative paths resolve there).
pub fn divert_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_divert")).current_dir(dir).args(args).output().expect("run divert")
}

/// Run `divert` in the repository root and require success.
pub fn divert_ok(dir: &Path, args: &[&str]) -> Output {
    let out = divert_in(dir, args);
    assert!(
        out.status.success(),
        "divert {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The repository root (where config/ lives).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
