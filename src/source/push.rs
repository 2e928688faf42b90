//! The pusher: posts the oldest outbox batches to the steward over mutual TLS, several connections at once, each kept alive for many batches; a batch leaves the outbox only on the steward's acknowledgement.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

use crate::spiffe::Role;
use crate::tls::{self, ConnectError};
use crate::wire::{binary, BatchAck, BatchFormat, EpochRefusal, ErrorBody, BATCH_PATH};

use super::store::{self, OutboxRecords};
use super::Source;

/// Connections pushing at once.
pub const PUSH_CONNECTIONS: usize = 3;
/// First retry delay bound; doubles per failure up to the configured cap.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The delay before retry number `attempt` (0 = first retry): uniformly
/// random in [0, min(cap, base · 2^attempt)] ("full jitter").
pub fn backoff(attempt: u32, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.gen_range(0..=ms))
}

/// Durable, unacknowledged batches: sequence → records.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
}

#[derive(Default)]
struct Queue {
    waiting: BTreeMap<u64, u32>,
    in_flight: BTreeMap<u64, u32>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make batches (already durable in the store) pushable.
    pub fn add(&self, batches: impl IntoIterator<Item = (u64, u32)>) {
        self.lock().waiting.extend(batches);
        self.notify.notify_waiters();
    }

    /// Make pushable every batch of `stored` (the store's outbox) the queue
    /// does not hold: those a job made durable and did not hand over because
    /// it panicked. One acknowledged meanwhile is found gone and skipped.
    pub fn resync(&self, stored: BTreeMap<u64, u32>) {
        let mut q = self.lock();
        for (seq, n) in stored {
            if !q.waiting.contains_key(&seq) && !q.in_flight.contains_key(&seq) {
                q.waiting.insert(seq, n);
            }
        }
        drop(q);
        self.notify.notify_waiters();
    }

    /// The oldest batch nobody is pushing; waits for one.
    async fn take(&self) -> (u64, u32) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                if let Some((seq, n)) = q.waiting.pop_first() {
                    q.in_flight.insert(seq, n);
                    return (seq, n);
                }
            }
            notified.await;
        }
    }

    fn put_back(&self, seq: u64) {
        let mut q = self.lock();
        if let Some(n) = q.in_flight.remove(&seq) {
            q.waiting.insert(seq, n);
        }
        drop(q);
        self.notify.notify_waiters();
    }

    fn done(&self, seq: u64) {
        self.lock().in_flight.remove(&seq);
    }

    /// (batches, records) not yet acknowledged.
    pub fn depth(&self) -> (u64, u64) {
        let q = self.lock();
        let batches = (q.waiting.len() + q.in_flight.len()) as u64;
        let records = q.waiting.values().chain(q.in_flight.values()).map(|&n| u64::from(n)).sum();
        (batches, records)
    }
}

/// How pushing goes, for status and for logging once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Nothing pushed yet.
    Unknown,
    Ok,
    /// Failing since (RFC 3339), with the last error's class and message.
    Failing {
        since: String,
        class: &'static str,
        error: String,
    },
}

/// Counters for status.
pub struct Stats {
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub last_push: Mutex<Option<String>>,
    pub health: Mutex<Health>,
}

impl Stats {
    pub fn new(batches: u64, records: u64, last_push: Option<String>) -> Stats {
        Stats {
            batches: AtomicU64::new(batches),
            records: AtomicU64::new(records),
            last_push: Mutex::new(last_push),
            health: Mutex::new(Health::Unknown),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn health_now(&self) -> Health {
        self.health().clone()
    }

    fn succeeded(&self, steward: &str) {
        let mut h = self.health();
        match &*h {
            Health::Ok => {}
            Health::Unknown => tracing::info!(steward, "pushing batches to the steward"),
            Health::Failing { .. } => tracing::info!(steward, "the steward answers again; draining the outbox"),
        }
        *h = Health::Ok;
    }

    fn failed(&self, steward: &str, e: &PushError, outbox: (u64, u64)) {
        let mut h = self.health();
        let class = e.class();
        let changed = !matches!(&*h, Health::Failing { class: c, .. } if *c == class);
        if changed {
            tracing::warn!(
                steward,
                error = %e,
                outbox_batches = outbox.0,
                outbox_records = outbox.1,
                "cannot push to the steward; batches stay in the outbox, retrying with backoff"
            );
        }
        let since = match &*h {
            Health::Failing { since, .. } => since.clone(),
            _ => crate::days::now_text(),
        };
        *h = Health::Failing { since, class, error: e.to_string() };
    }
}

/// Why one push failed. Messages carry no record.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("connecting to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("TLS with the steward: {0}")]
    Tls(String),
    #[error("{0}")]
    Identity(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the steward answered {status}: {error}")]
    Status { status: StatusCode, error: String },
    #[error("the steward's answer is not an acknowledgement of batch {batch_id}: {detail}")]
    Answer { batch_id: String, detail: String },
    #[error("the store: {0}")]
    Store(String),
}

impl PushError {
    fn class(&self) -> &'static str {
        match self {
            PushError::Connect { .. } => "connect",
            PushError::Tls(_) => "tls",
            PushError::Identity(_) => "identity",
            PushError::Http(_) => "http",
            PushError::Status { .. } => "status",
            PushError::Answer { .. } => "answer",
            PushError::Store(_) => "store",
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// One pushing connection's loop, until shutdown.
pub async fn worker(src: Arc<Source>) {
    let shutdown = src.ctx.shutdown.clone();
    let mut conn: Option<Sender> = None;
    let mut attempt = 0u32;
    let mut rng = rand::rngs::StdRng::from_entropy();
    loop {
        let (seq, n) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            b = src.outbox.take() => b,
        };
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                // Not acknowledged: it stays in the outbox (the steward takes a replay as a duplicate).
                src.outbox.put_back(seq);
                return;
            }
            r = push_one(&src, &mut conn, seq, n) => r,
        };
        match result {
            Ok(()) => {
                attempt = 0;
                src.stats.succeeded(&src.cfg.steward_addr);
            }
            Err(e) => {
                conn = None;
                src.outbox.put_back(seq);
                src.stats.failed(&src.cfg.steward_addr, &e, src.outbox.depth());
                tracing::debug!(batch = seq, error = %e, "push failed");
                let delay = backoff(attempt, src.cfg.max_backoff, &mut rng);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The request body: `{"source":..,"batch_id":..,"records":[..]}` around the stored records.
pub fn batch_body(source: &str, batch_id: &str, records: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(records.len() + source.len() + batch_id.len() + 64);
    body.extend_from_slice(b"{\"source\":");
    let _ = serde_json::to_writer(&mut body, source);
    body.extend_from_slice(b",\"batch_id\":");
    let _ = serde_json::to_writer(&mut body, batch_id);
    body.extend_from_slice(b",\"records\":[");
    body.extend_from_slice(records);
    body.extend_from_slice(b"]}");
    body
}

/// What is posted for the outbox records `records`: a records section gets
/// its header (the source and the batch id) and goes in the binary form; it
/// fails only when the section is not one this release reads. JSON records
/// (separated by commas, as releases before the binary outbox kept them) go
/// in the binary form made from the text (no owned record in between), or,
/// when a record has none (or the records do not parse, which the steward
/// then refuses as it always did), as JSON.
pub fn batch_request(
    source: &str,
    batch_id: &str,
    records: OutboxRecords<'_>,
) -> Result<(Vec<u8>, BatchFormat), binary::DecodeError> {
    match records {
        OutboxRecords::Binary(section) => {
            Ok((binary::batch_from_section(source, batch_id, section)?, BatchFormat::Binary))
        }
        OutboxRecords::Json(text) => {
            let array = [b"[".as_slice(), text, b"]"].concat();
            Ok(match binary::encode_json_array(source, batch_id, &array) {
                Some(body) => (body, BatchFormat::Binary),
                None => (batch_body(source, batch_id, text), BatchFormat::Json),
            })
        }
    }
}

async fn push_one(src: &Source, conn: &mut Option<Sender>, seq: u64, n: u32) -> Result<(), PushError> {
    let value = match store::read_outbox(src.store.tree(), seq) {
        Ok(Some(v)) => v,
        Ok(None) => {
            // Already acknowledged and removed (e.g. by another worker after a retry): nothing to do.
            src.outbox.done(seq);
            return Ok(());
        }
        Err(e) => return Err(PushError::Store(e.to_string())),
    };
    let Some((_, records)) = store::split_outbox_value(&value) else {
        return Err(PushError::Store(format!("outbox batch {seq} is malformed")));
    };
    let batch_id = format!("{}-{seq}", src.store_id);
    let (body, format) = batch_request(&src.name, &batch_id, records)
        .map_err(|e| PushError::Store(format!("outbox batch {seq} is malformed ({e})")))?;
    let body = Bytes::from(body);
    drop(value);

    let (status, answer) = exchange(src, conn, body, format).await?;
    if status == StatusCode::CONFLICT {
        if let Ok(r) = serde_json::from_slice::<EpochRefusal>(&answer) {
            let switch_seq = src.store.get_u64(store::META_SWITCH_SEQ).map_err(|e| PushError::Store(e.to_string()))?;
            if r.epoch < src.keying().epoch && seq < switch_seq {
                // Written before this source last switched epochs: every row in it was
                // re-pseudonymized under the active epoch and queued again, so the
                // old copy goes (never the rows).
                let removal =
                    store::remove_outbox(src.store.tree(), seq).map_err(|e| PushError::Store(e.to_string()))?;
                src.store.apply_async(removal).await.map_err(|e| PushError::Store(e.to_string()))?;
                src.outbox.done(seq);
                tracing::info!(
                    batch = %batch_id,
                    epoch = r.epoch,
                    current = r.current_epoch,
                    "the steward retired this batch's key epoch; its records were already sent again under the new one"
                );
                return Ok(());
            }
            // The steward is ahead of us: fetch the new key and re-pseudonymize; the batch waits.
            src.wake_rotation();
            return Err(PushError::Status { status, error: r.error });
        }
    }
    if status != StatusCode::OK {
        let error = serde_json::from_slice::<ErrorBody>(&answer)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned());
        return Err(PushError::Status { status, error });
    }
    let ack: BatchAck = serde_json::from_slice(&answer)
        .map_err(|e| PushError::Answer { batch_id: batch_id.clone(), detail: e.to_string() })?;
    if ack.batch_id != batch_id {
        return Err(PushError::Answer { batch_id, detail: format!("it acknowledges `{}`", ack.batch_id) });
    }
    // Acknowledged means durable at the steward: only now may the batch go.
    // The removal and the counters in one write (of the store's writer: group-committed).
    let mut removal = store::remove_outbox(src.store.tree(), seq).map_err(|e| PushError::Store(e.to_string()))?;
    let batches = src.stats.batches.fetch_add(1, Ordering::Relaxed) + 1;
    let records = src.stats.records.fetch_add(u64::from(n), Ordering::Relaxed) + u64::from(n);
    let now = crate::days::now_text();
    removal.insert(store::META_PUSHED_BATCHES, batches.to_be_bytes());
    removal.insert(store::META_PUSHED_RECORDS, records.to_be_bytes());
    removal.insert(store::META_LAST_PUSH, now.as_bytes());
    src.store.apply_async(removal).await.map_err(|e| PushError::Store(e.to_string()))?;
    src.outbox.done(seq);
    *src.stats.last_push.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    tracing::debug!(batch = %batch_id, records = n, stored = ack.stored, duplicate = ack.duplicate, "batch acknowledged");
    Ok(())
}

/// Post one body and read the answer. A kept-alive connection the steward
/// has closed meanwhile is replaced once, silently (a batch is idempotent, so
/// sending it again is safe); other failures are the caller's to retry.
async fn exchange(
    src: &Source,
    conn: &mut Option<Sender>,
    body: Bytes,
    format: BatchFormat,
) -> Result<(StatusCode, Bytes), PushError> {
    let mut reused = false;
    if let Some(c) = conn.as_mut() {
        reused = c.ready().await.is_ok();
        if !reused {
            *conn = None;
        }
    }
    loop {
        let sender = match conn {
            Some(c) => c,
            None => conn.insert(connect(src).await?),
        };
        let req = Request::post(BATCH_PATH)
            .header(hyper::header::HOST, src.cfg.steward_addr.as_str())
            .header(hyper::header::CONTENT_TYPE, format.content_type())
            .body(Full::new(body.clone()))
            .map_err(|e| PushError::Http(e.to_string()))?;
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req)).await;
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if reused => {
                tracing::debug!(error = %e, "a kept-alive steward connection failed; connecting again");
                *conn = None;
                reused = false;
                continue;
            }
            Ok(Err(e)) => return Err(PushError::Http(e.to_string())),
            Err(_) => return Err(PushError::Http(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))),
        };
        let status = resp.status();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect())
            .await
            .map_err(|_| PushError::Http(format!("the answer did not arrive within {}s", REQUEST_TIMEOUT.as_secs())))?
            .map_err(|e| PushError::Http(format!("reading the answer: {e}")))?
            .to_bytes();
        return Ok((status, answer));
    }
}

/// Who must answer a source's connection.
#[derive(Debug, Clone, Copy)]
pub(super) enum Peer<'a> {
    /// A steward of our program.
    Steward,
    /// The key custodian: the source of our program with this name.
    Custodian(&'a str),
}

/// A new mTLS connection to the steward, its certificate checked to be a steward of our program.
async fn connect(src: &Source) -> Result<Sender, PushError> {
    connect_to(src, &src.cfg.steward_addr, &src.cfg.steward_host, Peer::Steward).await
}

/// A new mTLS connection to `addr` (TLS name `host`), the server's SPIFFE identity
/// checked to be `want` before a byte of HTTP is sent.
pub(super) async fn connect_to(src: &Source, addr: &str, host: &str, want: Peer<'_>) -> Result<Sender, PushError> {
    let client = src.ctx.tls.borrow().client.clone();
    let program = &src.ctx.config.spiffe_id.program;
    let wanted = |id: &crate::spiffe::SpiffeId| {
        &id.program == program
            && match want {
                Peer::Steward => id.role == Role::Steward,
                Peer::Custodian(name) => id.role == Role::Source && id.name == name,
            }
    };
    let stream = match tls::connect(client, addr, host, CONNECT_TIMEOUT, wanted).await {
        Ok((stream, _)) => stream,
        Err(ConnectError::Tcp(detail)) => return Err(PushError::Connect { addr: addr.into(), detail }),
        Err(e @ (ConnectError::ServerName(_) | ConnectError::Handshake(_))) => {
            return Err(PushError::Tls(e.to_string()))
        }
        Err(ConnectError::Identity(Some(id))) => {
            let expected = match want {
                Peer::Steward => format!("a steward of program {program}"),
                Peer::Custodian(name) => format!("the custodian spiffe://{program}/source/{name}"),
            };
            return Err(PushError::Identity(format!("the server at {addr} is {id}, not {expected}: refusing to send")));
        }
        Err(ConnectError::Identity(None)) => {
            return Err(PushError::Identity(format!(
                "the server at {addr} has no SPIFFE identity in its certificate: refusing to send"
            )))
        }
    };
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| PushError::Http(e.to_string()))?;
    src.ctx.tracker.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "steward connection closed");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let cap = Duration::from_secs(5);
        for attempt in 0..40u32 {
            let ceiling = (BACKOFF_BASE * 2u32.pow(attempt.min(20))).min(cap);
            let mut max_seen = Duration::ZERO;
            for _ in 0..200 {
                let d = backoff(attempt, cap, &mut rng);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
                max_seen = max_seen.max(d);
            }
            assert!(max_seen >= ceiling / 2, "attempt {attempt}: jitter spans the range ({max_seen:?})");
        }
        assert!(backoff(0, cap, &mut rng) <= Duration::from_millis(100));
        assert!(backoff(1000, Duration::from_secs(1), &mut rng) <= Duration::from_secs(1));
    }

    #[test]
    fn body_is_a_wire_batch() {
        let rec =
            r#"{"source":"police","kind":"arrest","line":2,"epoch":1,"rid":"00","tokens":{},"fields":{"age":null}}"#;
        let records = format!("{rec}\n,{rec}\n");
        let body = batch_body("police", "abc-7", records.as_bytes());
        let b: crate::wire::Batch = serde_json::from_slice(&body).unwrap();
        assert_eq!((b.source.as_str(), b.batch_id.as_str(), b.records.len()), ("police", "abc-7", 2));
        // A record without a binary form (this rid is not 32 hex digits): the batch goes as JSON.
        let (sent, format) = batch_request("police", "abc-7", OutboxRecords::Json(records.as_bytes())).unwrap();
        assert_eq!((sent, format), (body, BatchFormat::Json));
    }

    #[test]
    fn the_request_is_the_binary_form_of_the_outbox_records() {
        let rid = "ab".repeat(16);
        let token = format!("1:{}", "cd".repeat(16));
        let rec = format!(
            r#"{{"source":"police","kind":"arrest","line":2,"epoch":1,"rid":"{rid}","seq":7,"tokens":{{"names_dob":"{token}"}},"fields":{{"age":30,"sex":null,"arrest_date":"2024-02-29"}}}}"#
        );
        let records = format!("{rec}\n,{rec}\n");
        let (sent, format) = batch_request("police", "abc-7", OutboxRecords::Json(records.as_bytes())).unwrap();
        assert_eq!(format, BatchFormat::Binary);
        let json: crate::wire::Batch =
            serde_json::from_slice(&batch_body("police", "abc-7", records.as_bytes())).unwrap();
        assert_eq!(binary::decode(&sent).unwrap(), json);
        assert!(sent.len() * 2 < records.len(), "{} bytes", sent.len());

        // The outbox's own form: a records section, completed with the header.
        let section = binary::encode_section(&json.records).unwrap();
        let (from_section, format) = batch_request("police", "abc-7", OutboxRecords::Binary(&section)).unwrap();
        assert_eq!((from_section, format), (sent, BatchFormat::Binary));
        let mut later = section.clone();
        later[binary::SECTION_MAGIC.len()] = binary::VERSION + 1;
        let e = batch_request("police", "abc-7", OutboxRecords::Binary(&later)).unwrap_err();
        assert_eq!(e, binary::DecodeError::Version(binary::VERSION + 1));
    }

    #[tokio::test]
    async fn outbox_takes_oldest_and_puts_back() {
        let o = Outbox::default();
        o.add([(5, 10), (3, 7)]);
        assert_eq!(o.take().await, (3, 7));
        assert_eq!(o.depth(), (2, 17));
        o.put_back(3);
        assert_eq!(o.take().await, (3, 7));
        assert_eq!(o.take().await, (5, 10));
        o.done(3);
        assert_eq!(o.depth(), (1, 10));
    }

    #[tokio::test]
    async fn a_resync_adds_only_the_batches_the_queue_lacks() {
        let o = Outbox::default();
        o.add([(3, 7), (5, 10)]);
        assert_eq!(o.take().await, (3, 7));
        // 3 is being pushed, 5 waits, 8 was made durable and never handed over.
        o.resync(BTreeMap::from([(3, 7), (5, 10), (8, 4)]));
        assert_eq!(o.depth(), (3, 21), "nothing twice");
        assert_eq!(o.take().await, (5, 10));
        assert_eq!(o.take().await, (8, 4));
    }
}
