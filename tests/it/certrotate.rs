//! Certificate rotation on a running steward: a real `divert serve` process, real mutual TLS on loopback, the PKI files written as `divert ca issue` and `divert ca revoke` write them.
//!
//! - Re-issuing the steward's certificate under steady load and sending
//!   SIGHUP fails no request, and every handshake after the switch presents
//!   the new certificate.
//! - Revoking a client (new CRL copied next to the steward) refuses its new
//!   handshakes within the file watch's interval, without a SIGHUP, while
//!   other clients keep working.
//! - A certificate expiring in under 30 days shows in `divert status`, in the
//!   log, and as `divert_certificate_expiry_warning 1` on the metrics port.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use divert::pki::{self, Role};
use divert::wire::CATALOG_PATH;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::net::{client_config, steward_config_text, tls_connect, Pki, PROGRAM};
use crate::util::{divert_in, holds, start_steward, text, wait_until, ChildGuard};

/// A `divert serve` steward with its metrics on a loopback port; killed if a test fails while it runs.
struct Daemon {
    child: ChildGuard,
    config: PathBuf,
    tls_dir: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Daemon {
    /// Issue the steward's certificate for `days` into `<dir>/tls` and run `divert serve` on `<dir>/steward.toml`.
    fn start(dir: &Path, pki: &Pki, days: u32) -> Daemon {
        let tls_dir = dir.join("tls");
        pki::issue(&pki.ca, Role::Steward, "steward", &tls_dir, days, &[], &[]).expect("issue the steward certificate");
        let data = dir.join("data");
        let config = dir.join("steward.toml");
        let text =
            format!("metrics_listen = \"127.0.0.1:0\"\n{}", steward_config_text(&tls_dir, &data, "127.0.0.1:0", ""));
        std::fs::write(&config, text).expect("write config");
        let log = dir.join("steward.log");
        let (child, addr) = start_steward(&config, &data, &log, Duration::from_secs(60));
        let mut d = Daemon { child, config, tls_dir, log, addr, metrics: SocketAddr::from(([127, 0, 0, 1], 0)) };
        // The metrics port is bound before the steward listens, and logged.
        d.metrics = wait_until(Duration::from_secs(10), "the metrics address in the log", || {
            let log = d.log_text();
            log.split("metrics_listen=")
                .nth(1)
                .and_then(|rest| {
                    rest.split_whitespace().next().and_then(|a| a.trim_matches('"').parse::<SocketAddr>().ok())
                })
                .ok_or(log)
        });
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().expect("kill").success(), "kill {sig} {pid}");
    }

    /// Wait until the log contains `needle`.
    fn wait_log(&self, needle: &str, limit: Duration) {
        wait_until(limit, &format!("`{needle}` in the log"), || {
            let log = self.log_text();
            holds(log.contains(needle), || log)
        });
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.wait_for_exit(Duration::from_secs(30));
        assert!(status.success(), "the steward did not stop cleanly: {status:?}\n{}", self.log_text());
    }

    /// A plain-TCP HTTP/1.1 request to the metrics port: (status, head, body).
    fn http(&self, method: &str, path: &str) -> (u16, String, String) {
        let mut tcp = std::net::TcpStream::connect(self.metrics).expect("connect to metrics");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).expect("send");
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).expect("read metrics response");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_string(), body.to_string())
    }

    /// `GET /metrics`, checked to be 200 in the text format.
    fn metrics(&self) -> String {
        let (status, head, body) = self.http("GET", "/metrics");
        assert_eq!(status, 200, "{head}\n{body}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
        body
    }
}

/// The value of the sample `series` (name and labels, exactly) in exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn series(name: &str) -> String {
    format!("{name}{{role=\"steward\",name=\"steward\"}}")
}

fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).expect("read cert.pem").to_vec()
}

/// One HTTP/1.1 connection over mutual TLS, remembering the certificate the server presented.
struct Conn {
    send: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    peer: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<Conn, String> {
        let tls = tls_connect(addr, cfg).await?;
        let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let (send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("http: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { send, driver, peer })
    }

    async fn get(&mut self, path: &str) -> Result<StatusCode, String> {
        self.send.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let req = Request::builder()
            .method("GET")
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self.send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        resp.into_body().collect().await.map_err(|e| format!("response body: {e}"))?;
        Ok(status)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A fresh connection and one `GET /v1/catalog`: `Ok` only for a 200.
async fn catalog_once(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<(), String> {
    let mut c = Conn::connect(addr, cfg).await?;
    match c.get(CATALOG_PATH).await? {
        StatusCode::OK => Ok(()),
        other => Err(format!("status {other}")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime")
}

/// What one load task saw.
#[derive(Default)]
struct TaskLog {
    /// Per handshake, in order: `None` for the old certificate, else the certificate presented.
    handshakes: Vec<Option<Vec<u8>>>,
    ok: u64,
    failures: Vec<String>,
}

#[test]
fn rotation_under_load_fails_no_request() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let evaluator = pki.issue(Role::Evaluator, "unm");
    let dir = tmp.path().join("steward");
    // 30 days: already inside the warning window (under 30 days left).
    let d = Daemon::start(&dir, &pki, 30);
    let old = cert_der(&d.tls_dir.join(pki::CERT_FILE));
    let before = d.metrics();
    assert_eq!(sample(&before, &series("divert_certificate_expiry_warning")), Some(1.0), "{before}");
    assert_eq!(sample(&before, &series("divert_tls_reloads_total")), Some(0.0), "{before}");

    let rt = runtime();
    let cfg = client_config(&pki.ca_pem(), Some(&evaluator));
    let stop = Arc::new(AtomicBool::new(false));
    const TASKS: usize = 4;
    let oks: Arc<Vec<AtomicU64>> = Arc::new((0..TASKS).map(|_| AtomicU64::new(0)).collect());
    let new_seen: Arc<Vec<AtomicU64>> = Arc::new((0..TASKS).map(|_| AtomicU64::new(0)).collect());
    let logs: Arc<Mutex<Vec<TaskLog>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (cfg, stop, oks, new_seen, logs, old, addr) =
            (cfg.clone(), stop.clone(), oks.clone(), new_seen.clone(), logs.clone(), old.clone(), d.addr);
        tasks.push(rt.spawn(async move {
            let mut log = TaskLog::default();
            while !stop.load(Ordering::Relaxed) {
                // A new handshake, then three requests on it (keep-alive).
                let mut conn = match Conn::connect(addr, cfg.clone()).await {
                    Ok(c) => c,
                    Err(e) => {
                        log.failures.push(format!("task {i}: connect: {e}"));
                        continue;
                    }
                };
                if conn.peer == old {
                    log.handshakes.push(None);
                } else {
                    log.handshakes.push(Some(conn.peer.clone()));
                    new_seen[i].fetch_add(1, Ordering::Relaxed);
                }
                for _ in 0..3 {
                    match conn.get(CATALOG_PATH).await {
                        Ok(StatusCode::OK) => {
                            log.ok += 1;
                            oks[i].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => log.failures.push(format!("task {i}: status {other}")),
                        Err(e) => log.failures.push(format!("task {i}: {e}")),
                    }
                }
            }
            logs.lock().expect("logs").push(log);
        }));
    }

    // Every task under way before the rotation.
    wait_until(Duration::from_secs(20), "150 answers to every task", || {
        holds(oks.iter().all(|n| n.load(Ordering::Relaxed) >= 150), || format!("{oks:?}"))
    });
    let before_rotation: u64 = oks.iter().map(|n| n.load(Ordering::Relaxed)).sum();

    // `divert ca issue` over the same --out directory, then SIGHUP.
    let issued = pki::issue(&pki.ca, Role::Steward, "steward", &d.tls_dir, 90, &[], &[]).expect("re-issue");
    assert!(issued.replaced);
    let new = cert_der(&d.tls_dir.join(pki::CERT_FILE));
    assert_ne!(new, old);
    d.signal("-HUP");
    d.wait_log("SIGHUP: reloading", Duration::from_secs(10));

    // Keep the load on until every task has handshaken with the new certificate a few times.
    wait_until(Duration::from_secs(20), "every task to see the new certificate 50 times", || {
        holds(new_seen.iter().all(|n| n.load(Ordering::Relaxed) >= 50), || d.log_text())
    });
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("load task stopped").expect("load task");
        }
    });

    let logs = std::mem::take(&mut *logs.lock().expect("logs"));
    assert_eq!(logs.len(), TASKS);
    let failures: Vec<&String> = logs.iter().flat_map(|l| &l.failures).collect();
    assert!(failures.is_empty(), "{} failed requests, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    let total: u64 = logs.iter().map(|l| l.ok).sum();
    assert!(total > before_rotation, "no request after the rotation");
    for (i, l) in logs.iter().enumerate() {
        // The old certificate, then the new one and never the old one again.
        let first_new = l.handshakes.iter().position(Option::is_some).expect("the new certificate seen");
        assert!(first_new > 0, "task {i} never saw the old certificate");
        for (n, h) in l.handshakes[first_new..].iter().enumerate() {
            assert_eq!(
                h.as_deref(),
                Some(new.as_slice()),
                "task {i}, handshake {}: not the new certificate",
                first_new + n
            );
        }
    }
    let peer_not_after = pki::cert_not_after(&new).expect("not_after");
    assert_eq!(peer_not_after, issued.member.not_after);

    // The metrics follow the reloaded certificate.
    let after = d.metrics();
    assert_eq!(sample(&after, &series("divert_certificate_expiry_warning")), Some(0.0), "{after}");
    assert!(sample(&after, &series("divert_tls_reloads_total")).is_some_and(|n| n >= 1.0), "{after}");
    let expiry = sample(&after, &series("divert_certificate_expiry_seconds")).expect("expiry");
    assert!(expiry > 89.0 * 86400.0 && expiry <= 90.0 * 86400.0, "{after}");
    assert!(d.log_text().contains("TLS material reloaded"), "{}", d.log_text());
    d.stop();
    eprintln!("rotation under load: {total} requests, {:?}", started.elapsed());
}

/// Write `bytes` to `path` atomically (a copy that a reader never sees half-written).
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn revoked_client_is_refused_without_sighup() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let revoked = client_config(&pki.ca_pem(), Some(&pki.issue(Role::Evaluator, "unm")));
    let other = client_config(&pki.ca_pem(), Some(&pki.issue(Role::Evaluator, "other")));
    let d = Daemon::start(&tmp.path().join("steward"), &pki, 90);
    let rt = runtime();
    rt.block_on(catalog_once(d.addr, revoked.clone())).expect("before revocation: unm");
    rt.block_on(catalog_once(d.addr, other.clone())).expect("before revocation: other");

    // `divert ca revoke`, then the new CRL copied next to the steward's certificate.
    let gone = pki::revoke(&pki.ca, "unm", Some(Role::Evaluator), None, 7).expect("revoke");
    assert_eq!(gone.len(), 1);
    let crl = std::fs::read(pki.ca.join(pki::CRL_FILE)).expect("read CRL");
    replace_file(&d.tls_dir.join(pki::CRL_FILE), &crl);
    let changed = Instant::now();

    let refusal = wait_until(Duration::from_secs(60), "the revoked certificate to be refused", || {
        rt.block_on(catalog_once(d.addr, other.clone()))
            .unwrap_or_else(|e| panic!("another client failed after {:?}: {e}", changed.elapsed()));
        match rt.block_on(catalog_once(d.addr, revoked.clone())) {
            Ok(()) => Err(d.log_text()),
            Err(e) => Ok(e),
        }
    });
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(60), "refused only after {took:?}");
    // Refused for good, while the other client keeps working.
    for _ in 0..3 {
        assert!(
            rt.block_on(catalog_once(d.addr, revoked.clone())).is_err(),
            "the revoked certificate got through again"
        );
        rt.block_on(catalog_once(d.addr, other.clone())).expect("other client after the revocation");
    }
    let log = d.log_text();
    assert!(log.contains("TLS files changed on disk: reloading"), "{log}");
    assert!(!log.contains("SIGHUP"), "{log}");
    assert!(log.contains("refused") && log.contains("handshake"), "{log}");
    // Refusals are counted just after the peer is told: wait for the fourth.
    let handshake = "divert_refusals_total{role=\"steward\",name=\"steward\",kind=\"handshake\"}";
    let m = wait_until(Duration::from_secs(10), "four handshake refusals counted", || {
        let m = d.metrics();
        if sample(&m, handshake).is_some_and(|n| n >= 4.0) {
            Ok(m)
        } else {
            Err(m)
        }
    });
    assert!(sample(&m, &series("divert_tls_reloads_total")).is_some_and(|n| n >= 1.0), "{m}");
    d.stop();
    eprintln!("revocation: refused {took:?} after the CRL changed ({refusal}); test {:?}", started.elapsed());
}

#[test]
fn expiry_warning_in_status_log_and_metrics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let dir = tmp.path().join("steward");
    let d = Daemon::start(&dir, &pki, 10);

    // `divert status` through the admin socket.
    let config = d.config.to_str().expect("utf-8 path");
    let out = divert_in(&dir, &["status", "--config", config]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("WARNING: certificate expires in"), "{stderr}");
    assert!(stdout.contains("warning: certificate expires in") && stdout.contains("divert ca issue"), "{stdout}");
    let out = divert_in(&dir, &["status", "--config", config, "--json"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let days = status["certificate"]["days_left"].as_i64().expect("days_left");
    assert!((9..=10).contains(&days), "{status}");
    assert!(status["certificate"]["warning"].as_str().is_some_and(|w| w.contains(&format!("{days} days"))), "{status}");

    // The log, at startup.
    d.wait_log("certificate expires soon", Duration::from_secs(10));
    assert!(d.log_text().contains(&format!("days_left={days}")), "{}", d.log_text());

    // The metrics port.
    let m = d.metrics();
    assert!(m.lines().any(|l| l == format!("{} 1", series("divert_certificate_expiry_warning"))), "{m}");
    assert!(m.contains("# TYPE divert_certificate_expiry_warning gauge"), "{m}");
    let expiry = sample(&m, &series("divert_certificate_expiry_seconds")).expect("expiry seconds");
    assert!(expiry > 9.0 * 86400.0 - 600.0 && expiry <= 10.0 * 86400.0, "{m}");
    assert_eq!(sample(&m, &series("divert_records_held")), Some(0.0), "{m}");
    assert!(sample(&m, &series("divert_uptime_seconds")).is_some(), "{m}");
    // Only fixed names and the daemon's role and name: no SPIFFE id, no program, no addresses.
    assert!(!m.contains("spiffe://") && !m.contains(PROGRAM) && !m.contains("127.0.0.1"), "{m}");
    let (status, head, _) = d.http("GET", "/");
    assert_eq!(status, 404, "{head}");
    let (status, head, _) = d.http("POST", "/metrics");
    assert_eq!(status, 405, "{head}");
    assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
    d.stop();
}
