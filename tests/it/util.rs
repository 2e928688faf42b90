//! Helpers shared by the integration tests: run the built binary, read its output, guard the daemons it starts.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Fail the test unless the outside client `tool` runs (`tool version_arg`):
/// a test of how real clients see divert proves nothing by passing without one.
/// `.ci/run` installs them (curl, openssl).
pub fn require_tool(tool: &str, version_arg: &str) {
    let ran = Command::new(tool).arg(version_arg).output();
    assert!(
        ran.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs `{tool}` on PATH (Debian: apt-get install {tool}); `{tool} {version_arg}` gave {ran:?}"
    );
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The repository root (where config/ lives).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `divert serve --config CONFIG` as a child process, its log (stderr) to `log`.
pub fn spawn_serve(config: &Path, log: &Path) -> ChildGuard {
    spawn_serve_with(config, log, &[])
}

/// [`spawn_serve`] with extra environment variables (e.g. `LD_PRELOAD`).
pub fn spawn_serve_with(config: &Path, log: &Path, env: &[(&str, &std::ffi::OsStr)]) -> ChildGuard {
    let log = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_divert"));
    cmd.args(["serve", "--config"]).arg(config).env_remove("RUST_LOG").stdout(Stdio::null()).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().expect("spawn divert serve"))
}

/// A daemon process that is killed if a test fails while it runs.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sigkill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reap");
    }

    /// SIGTERM and a clean exit.
    pub fn stop(&mut self) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM").success());
        let status = self.wait_for_exit(Duration::from_secs(30)).expect("the daemon did not stop on SIGTERM");
        assert!(status.success(), "the daemon did not stop cleanly: {status:?}");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
