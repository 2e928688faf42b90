//! Helpers shared by the integration tests: run the built binary, read its output, guard the daemons it starts.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`wait_until_async`] look again.
const POLL: Duration = Duration::from_millis(20);

/// Poll `probe` until it returns `Some` (its value) or `limit` passes (`None`).
/// The one poll loop of the tests; [`wait_until`] is the form most want.
pub fn poll_until<T>(limit: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL, limit, probe)
}

/// [`poll_until`] looking every `interval` (a test that acts the moment something happens).
pub fn poll_every<T>(interval: Duration, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Poll `probe` until it returns `Ok`, and return its value; `Err` says what
/// is still missing (the current state). After `limit`, the test fails with
/// `what` and the last `Err`. Wait on positive evidence, never a fixed sleep.
#[track_caller]
pub fn wait_until<T>(limit: Duration, what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
    wait_until_every(POLL, limit, what, probe)
}

/// [`wait_until`] looking every `interval`.
#[track_caller]
pub fn wait_until_every<T>(
    interval: Duration,
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let mut state = String::new();
    let found = poll_every(interval, limit, || probe().map_err(|e| state = e).ok());
    found.unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}: {state}"))
}

/// [`wait_until`] for a test on a tokio runtime (sleeps without blocking a worker).
pub async fn wait_until_async<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    retry_async(limit, what, || std::future::ready(probe())).await
}

/// [`wait_until_async`] for a probe that is itself async (e.g. starting a
/// service that may find its store still locked for a moment).
pub async fn retry_async<T, F: std::future::Future<Output = Result<T, String>>>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(state) => assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}: {state}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Ok(())` when `cond` holds, else `Err(state())`: a probe for [`wait_until`] from a condition.
pub fn holds(cond: bool, state: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(state())
    }
}

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

/// A steward `divert serve --config CONFIG` (data in `data`, log to `log`),
/// started and waited on until it has written the address it bound (up to
/// `wait`); the address file of an earlier run is removed first, so the
/// address read is this run's. Panics with the log if it does not start.
pub fn start_steward(config: &Path, data: &Path, log: &Path, wait: Duration) -> (ChildGuard, std::net::SocketAddr) {
    start_steward_with(config, data, log, wait, &[])
}

/// [`start_steward`] with extra environment variables (e.g. `LD_PRELOAD`).
pub fn start_steward_with(
    config: &Path,
    data: &Path,
    log: &Path,
    wait: Duration,
    env: &[(&str, &std::ffi::OsStr)],
) -> (ChildGuard, std::net::SocketAddr) {
    let _ = std::fs::remove_file(data.join(divert::config::LISTEN_ADDR_FILE));
    let child = spawn_serve_with(config, log, env);
    match crate::net::read_listen_addr(data, wait) {
        Some(addr) => (child, addr),
        None => panic!(
            "the steward ({}) did not start within {wait:?}: {}",
            config.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// A daemon process that is killed if a test fails while it runs.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The exit status once the process has exited; the test fails after `limit`.
    #[track_caller]
    pub fn wait_for_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        wait_until(limit, "the daemon to exit", || self.0.try_wait().expect("try_wait").ok_or_else(|| "running".into()))
    }

    pub fn sigkill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reap");
    }

    /// SIGTERM and a clean exit.
    pub fn stop(&mut self) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM").success());
        let status = self.wait_for_exit(Duration::from_secs(30));
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
