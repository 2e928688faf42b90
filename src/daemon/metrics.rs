//! Prometheus metrics (`metrics_listen`): plain HTTP `GET /metrics` in the text exposition format 0.0.4.
//!
//! What is exported is counts and times only: the certificate's expiry, TLS
//! reloads, uptime, and the numbers of the role's status (outbox depth and
//! pushes for a source; records, batches, connections and refusals for a
//! steward; the key epoch). Label values are fixed: the daemon's role and
//! name from its config, and a steward's refusal kinds. No value read from a
//! record, an identity, a token or a peer ever becomes a label.
//!
//! The listener is plain HTTP: bind it to loopback (or a management network)
//! and let the Prometheus server scrape it there.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Number, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The one path served.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Requests served at once; a connection whose request arrives when all are busy is closed.
const MAX_CONNECTIONS: usize = 16;
/// Connections accepted that have not sent their request yet (the oldest idle one makes room).
const MAX_PENDING: usize = 64;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed (gracefully) after this, whatever it is doing.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Produces the exposition text; called once per scrape, on a blocking thread.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// What one scrape reports. `detail` is the role's status JSON (`divert status` shows it too).
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    /// `steward` or `source`.
    pub role: &'a str,
    /// The daemon's name from its config identity.
    pub name: &'a str,
    pub certificate_expiry_seconds: i64,
    pub certificate_expiry_warning: bool,
    pub warning_days: i64,
    pub tls_reloads: u64,
    pub uptime_seconds: i64,
    pub detail: &'a Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One metric family: its HELP and TYPE lines and its samples.
struct Family {
    name: &'static str,
    help: String,
    kind: Kind,
    /// (extra label, value) per sample; the extra label is a fixed name and a fixed value.
    samples: Vec<(Vec<(&'static str, String)>, Number)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: impl Into<String>) -> Family {
        Family { name, help: help.into(), kind, samples: Vec::new() }
    }

    fn one(name: &'static str, kind: Kind, help: impl Into<String>, value: Option<Number>) -> Family {
        let mut f = Family::new(name, kind, help);
        if let Some(v) = value {
            f.samples.push((Vec::new(), v));
        }
        f
    }
}

/// A number at `path` in a JSON value; `None` when absent or not a number.
fn number_at(v: &Value, path: &[&str]) -> Option<Number> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    match cur {
        Value::Number(n) => Some(n.clone()),
        _ => None,
    }
}

/// A refusal kind as the steward names it (`handshake`, `too_large`, ...): short, lowercase, `_`.
fn is_kind_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Escape a label value: backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escape HELP text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn families(s: &Snapshot<'_>) -> Vec<Family> {
    let mut out = vec![
        Family::one(
            "divert_certificate_expiry_seconds",
            Kind::Gauge,
            "Seconds until this daemon's current certificate expires (negative once expired).",
            Some(s.certificate_expiry_seconds.into()),
        ),
        Family::one(
            "divert_certificate_expiry_warning",
            Kind::Gauge,
            format!(
                "1 when this daemon's certificate expires in under {} days (issue a new one with `divert ca issue` and reload), else 0.",
                s.warning_days
            ),
            Some(u8::from(s.certificate_expiry_warning).into()),
        ),
        Family::one(
            "divert_tls_reloads_total",
            Kind::Counter,
            "Successful reloads of certificate, key and CRL (SIGHUP or changed files) since the daemon started.",
            Some(s.tls_reloads.into()),
        ),
        Family::one(
            "divert_uptime_seconds",
            Kind::Gauge,
            "Seconds since the daemon started.",
            Some(s.uptime_seconds.into()),
        ),
    ];
    let d = s.detail;
    match s.role {
        "source" => {
            out.push(Family::one(
                "divert_outbox_batches",
                Kind::Gauge,
                "Batches in the outbox, not yet acknowledged by the steward.",
                number_at(d, &["outbox", "batches"]),
            ));
            out.push(Family::one(
                "divert_outbox_records",
                Kind::Gauge,
                "Records in the outbox, not yet acknowledged by the steward.",
                number_at(d, &["outbox", "records"]),
            ));
            out.push(Family::one(
                "divert_pushed_batches_total",
                Kind::Counter,
                "Batches the steward has acknowledged.",
                number_at(d, &["pushed", "batches"]),
            ));
            out.push(Family::one(
                "divert_pushed_records_total",
                Kind::Counter,
                "Records the steward has acknowledged.",
                number_at(d, &["pushed", "records"]),
            ));
            out.push(Family::one(
                "divert_key_epoch",
                Kind::Gauge,
                "The linkage key epoch this source tokenizes with.",
                number_at(d, &["key", "epoch"]),
            ));
        }
        "steward" => {
            out.push(Family::one(
                "divert_records_held",
                Kind::Gauge,
                "Pseudonymized records held by the steward.",
                number_at(d, &["records"]),
            ));
            out.push(Family::one(
                "divert_batches_held",
                Kind::Gauge,
                "Batches held by the steward.",
                number_at(d, &["batches"]),
            ));
            out.push(Family::one(
                "divert_connections_open",
                Kind::Gauge,
                "Authenticated client connections open now.",
                number_at(d, &["connections_open"]),
            ));
            out.push(Family::one(
                "divert_connections_waiting",
                Kind::Gauge,
                "Authenticated client connections waiting for one of the max_connections slots.",
                number_at(d, &["connections_waiting"]),
            ));
            out.push(Family::one(
                "divert_handshakes_pending",
                Kind::Gauge,
                "Connections accepted and not yet authenticated (before or in their TLS handshake).",
                number_at(d, &["handshakes_pending"]),
            ));
            let mut refusals =
                Family::new("divert_refusals_total", Kind::Counter, "Peers and requests refused since start, by kind.");
            if let Some(map) = d.get("refusals").and_then(Value::as_object) {
                for (kind, v) in map {
                    if kind == "total" || !is_kind_name(kind) {
                        continue;
                    }
                    if let Value::Number(n) = v {
                        refusals.samples.push((vec![("kind", kind.clone())], n.clone()));
                    }
                }
            }
            out.push(refusals);
            let mut versions = Family::new(
                "divert_record_versions_total",
                Kind::Counter,
                "Records received per source, kind and outcome: new, replaced (a newer version with other \
                 content), unchanged (the same content again), stale (older than the version held), deleted.",
            );
            if let Some(map) = d.get("record_versions").and_then(Value::as_object) {
                for (source, kinds) in map {
                    for (kind, counts) in kinds.as_object().into_iter().flatten() {
                        if !is_kind_name(kind) || !is_kind_name(source) {
                            continue;
                        }
                        for (outcome, v) in counts.as_object().into_iter().flatten() {
                            if let (true, Value::Number(n)) = (is_kind_name(outcome), v) {
                                let labels = vec![
                                    ("source", source.clone()),
                                    ("kind", kind.clone()),
                                    ("outcome", outcome.clone()),
                                ];
                                versions.samples.push((labels, n.clone()));
                            }
                        }
                    }
                }
            }
            out.push(versions);
            out.push(Family::one(
                "divert_key_epoch",
                Kind::Gauge,
                "The linkage key epoch the steward treats as active.",
                number_at(d, &["key_epochs", "active"]),
            ));
        }
        _ => {}
    }
    out
}

/// The exposition text (format 0.0.4) of a snapshot. Families without a value are left out.
pub fn render(s: &Snapshot<'_>) -> String {
    let labels = format!("role=\"{}\",name=\"{}\"", escape_label_value(s.role), escape_label_value(s.name));
    let mut out = String::new();
    for f in families(s) {
        if f.samples.is_empty() {
            continue;
        }
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for (extra, value) in &f.samples {
            let mut line = format!("{}{{{labels}", f.name);
            for (k, v) in extra {
                let _ = write!(line, ",{k}=\"{}\"", escape_label_value(v));
            }
            let _ = writeln!(out, "{line}}} {value}");
        }
    }
    out
}

/// Bind the metrics listener; the error names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr} (metrics_listen)"))
}

/// Serve `GET /metrics` on `listener` until `shutdown`; connections are spawned on `tracker`.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken, tracker: TaskTracker) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Connections that have not sent a request yet are admitted apart from the
    // slots, and the oldest idle one makes room: idle sockets cannot lock a scraper out.
    let admission =
        crate::accept::Admission::new(crate::accept::Limits { pending: MAX_PENDING, per_address: MAX_PENDING });
    let shutdown2 = shutdown.clone();
    crate::accept::serve(listener, shutdown.clone(), "metrics", move |tcp, peer| {
        let (pending, _) = admission.admit(peer);
        let (slots, render, shutdown) = (slots.clone(), render.clone(), shutdown2.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = pending.evicted() => return,
                _ = shutdown.cancelled() => return,
                first = pending.first_bytes(&tcp, HEADER_TIMEOUT) => if first != crate::accept::FirstBytes::Sent { return },
            }
            drop(pending);
            let Ok(permit) = slots.try_acquire_owned() else {
                tracing::debug!(peer = %peer, "too many metrics requests at once; closing this one");
                return;
            };
            connection(tcp, render, shutdown, permit).await;
        });
    })
    .await;
}

async fn connection(tcp: TcpStream, render: Render, shutdown: CancellationToken, _permit: OwnedSemaphorePermit) {
    let svc = service_fn(move |req| {
        let render = render.clone();
        async move { Ok::<_, Infallible>(respond(&req, render).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // One request per connection: a kept-alive idle connection would hold a slot.
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = tokio::time::sleep(MAX_CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

fn text_response(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

async fn respond(req: &Request<Incoming>, render: Render) -> Response<Full<Bytes>> {
    if req.uri().path() != METRICS_PATH {
        return text_response(StatusCode::NOT_FOUND, "not found: metrics are at GET /metrics\n");
    }
    if req.method() != Method::GET {
        let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "metrics are read with GET\n");
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    // The role's status reads its store: keep that off the async workers.
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(text) => {
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            text_response(StatusCode::INTERNAL_SERVER_ERROR, "rendering metrics failed\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn snapshot<'a>(role: &'a str, name: &'a str, detail: &'a Value) -> Snapshot<'a> {
        Snapshot {
            role,
            name,
            certificate_expiry_seconds: 777_600,
            certificate_expiry_warning: true,
            warning_days: 30,
            tls_reloads: 2,
            uptime_seconds: 61,
            detail,
        }
    }

    /// Every line is a HELP, a TYPE or a sample `name{labels} value`; each family's
    /// HELP and TYPE come once, before its samples.
    fn check_format(text: &str) {
        assert!(text.ends_with('\n'), "{text}");
        let mut declared: Vec<String> = Vec::new();
        let mut typed: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!declared.contains(&name), "HELP twice for {name}");
                declared.push(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(declared.last().map(String::as_str), Some(name), "TYPE before HELP: {line}");
                assert!(kind == "gauge" || kind == "counter", "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "a counter not named _total: {line}");
                }
                typed.push(name.to_string());
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = &series[..series.find('{').unwrap()];
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                assert_eq!(typed.last().map(String::as_str), Some(name), "sample outside its family: {line}");
                assert!(series.ends_with('}'), "{line}");
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn steward_rendering() {
        let detail = serde_json::json!({
            "listen": "127.0.0.1:7443",
            "connections_open": 3,
            "connections_waiting": 2,
            "records": 12345,
            "batches": 17,
            "records_per_source": { "police": 12000, "da": 345 },
            "refusals": { "handshake": 4, "forbidden": 1, "total": 5, "Bad\"Kind": 9, "not_a_number": "x" },
            "key_epochs": { "active": 2 },
        });
        let text = render(&snapshot("steward", "steward", &detail));
        check_format(&text);
        for line in [
            "# HELP divert_certificate_expiry_seconds Seconds until this daemon's current certificate expires (negative once expired).",
            "# TYPE divert_certificate_expiry_seconds gauge",
            "divert_certificate_expiry_seconds{role=\"steward\",name=\"steward\"} 777600",
            "divert_certificate_expiry_warning{role=\"steward\",name=\"steward\"} 1",
            "# TYPE divert_tls_reloads_total counter",
            "divert_tls_reloads_total{role=\"steward\",name=\"steward\"} 2",
            "divert_uptime_seconds{role=\"steward\",name=\"steward\"} 61",
            "divert_records_held{role=\"steward\",name=\"steward\"} 12345",
            "divert_batches_held{role=\"steward\",name=\"steward\"} 17",
            "divert_connections_open{role=\"steward\",name=\"steward\"} 3",
            "divert_connections_waiting{role=\"steward\",name=\"steward\"} 2",
            "# TYPE divert_refusals_total counter",
            "divert_refusals_total{role=\"steward\",name=\"steward\",kind=\"handshake\"} 4",
            "divert_refusals_total{role=\"steward\",name=\"steward\",kind=\"forbidden\"} 1",
            "divert_key_epoch{role=\"steward\",name=\"steward\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        // Never from data: the total, an odd key, a non-number, source names, addresses.
        for absent in ["kind=\"total\"", "Bad", "not_a_number", "police", "7443", "divert_outbox"] {
            assert!(!text.contains(absent), "`{absent}` in:\n{text}");
        }
    }

    #[test]
    fn record_versions_per_source_kind_and_outcome() {
        let detail = serde_json::json!({
            "record_versions": {
                "police": { "arrest": { "new": 1989, "replaced": 1, "unchanged": 2000, "stale": 0, "deleted": 1 } },
                "Bad Source": { "arrest": { "new": 5 } },
            },
        });
        let text = render(&snapshot("steward", "steward", &detail));
        check_format(&text);
        for line in [
            "# TYPE divert_record_versions_total counter",
            "divert_record_versions_total{role=\"steward\",name=\"steward\",source=\"police\",kind=\"arrest\",outcome=\"replaced\"} 1",
            "divert_record_versions_total{role=\"steward\",name=\"steward\",source=\"police\",kind=\"arrest\",outcome=\"deleted\"} 1",
            "divert_record_versions_total{role=\"steward\",name=\"steward\",source=\"police\",kind=\"arrest\",outcome=\"unchanged\"} 2000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        assert!(!text.contains("Bad"), "{text}");
    }

    #[test]
    fn source_rendering_and_absent_fields() {
        let detail = serde_json::json!({
            "source": "police",
            "key": { "epoch": 3, "fingerprint": "ab12cd34" },
            "outbox": { "batches": 2, "records": 9000 },
            "pushed": { "batches": 40, "records": 200000 },
            "steward": { "addr": "localhost:7443", "state": "ok" },
        });
        let mut s = snapshot("source", "police", &detail);
        s.certificate_expiry_warning = false;
        let text = render(&s);
        check_format(&text);
        for line in [
            "divert_certificate_expiry_warning{role=\"source\",name=\"police\"} 0",
            "divert_outbox_batches{role=\"source\",name=\"police\"} 2",
            "divert_outbox_records{role=\"source\",name=\"police\"} 9000",
            "# TYPE divert_pushed_batches_total counter",
            "divert_pushed_batches_total{role=\"source\",name=\"police\"} 40",
            "divert_pushed_records_total{role=\"source\",name=\"police\"} 200000",
            "divert_key_epoch{role=\"source\",name=\"police\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        assert!(!text.contains("ab12cd34") && !text.contains("localhost") && !text.contains("refusals"), "{text}");

        // Absent or non-numeric fields leave their metric out, HELP and TYPE included.
        let sparse = serde_json::json!({ "key": { "epoch": null }, "outbox": { "batches": 1 } });
        let text = render(&snapshot("source", "police", &sparse));
        check_format(&text);
        assert!(text.contains("divert_outbox_batches{"), "{text}");
        for absent in ["divert_outbox_records", "divert_pushed", "divert_key_epoch"] {
            assert!(!text.contains(absent), "`{absent}` in:\n{text}");
        }
        // A steward without refusals or key epochs in its status.
        let text = render(&snapshot("steward", "steward", &serde_json::json!({ "records": 0 })));
        check_format(&text);
        assert!(!text.contains("divert_refusals_total") && !text.contains("divert_key_epoch"), "{text}");
        assert!(text.contains("divert_records_held{role=\"steward\",name=\"steward\"} 0"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("plain-name_1"), "plain-name_1");
        let detail = serde_json::json!({});
        let text = render(&snapshot("steward", "odd\"name\\\n", &detail));
        check_format(&text);
        assert!(text.contains(r#"divert_uptime_seconds{role="steward",name="odd\"name\\\n"} 61"#), "{text}");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn negative_expiry_renders() {
        let detail = serde_json::json!({});
        let mut s = snapshot("source", "police", &detail);
        s.certificate_expiry_seconds = -5;
        assert!(render(&s).contains("divert_certificate_expiry_seconds{role=\"source\",name=\"police\"} -5\n"));
    }

    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut out)).await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn serves_get_metrics_only() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let render: Render = Arc::new(|| "# HELP x y\n# TYPE x gauge\nx{role=\"a\",name=\"b\"} 1\n".to_string());
        tracker.spawn(serve(listener, render, shutdown.clone(), tracker.clone()));

        let ok = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("x{role=\"a\",name=\"b\"} 1\n"), "{ok}");
        let other = exchange(addr, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post =
            exchange(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405") && post.to_ascii_lowercase().contains("allow: get"), "{post}");

        // A bound address is a clear startup error.
        let err = bind(addr).await.unwrap_err();
        assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");

        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.unwrap();
    }
}
