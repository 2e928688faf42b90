//! Requests to the steward: the batch and epoch endpoints, and what every handler shares (reading a body, refusing, answering).
//!
//! Authorization happens before a handler runs, in `routes::route`, from
//! the certificate only, before a byte of the body is read. Error answers are
//! [`ErrorBody`] JSON that name what is wrong in words and never echo the
//! request (serde's messages quote values, so they are not passed on).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tracing::{error, info};

use super::epochs::{EpochMismatch, Epochs, Slot};
use super::persons::Linkable;
use super::store::{PutOutcome, Store, StoreError};
use super::{Refusal, Steward};
use crate::record::{check_parts, FieldRef, RecordParts};
use crate::schema::Schema;
use crate::spiffe::SpiffeId;
use crate::token;
use crate::wire::{binary, Batch, BatchAck, BatchFormat, EpochRefusal, EpochReport, ErrorBody};

/// Who is asking: the TCP peer and the SPIFFE ID of its verified certificate.
pub(crate) struct Peer {
    pub addr: SocketAddr,
    pub id: SpiffeId,
}

pub(crate) type Resp = Response<Full<Bytes>>;

/// Longest batch id accepted, in bytes.
pub const MAX_BATCH_ID_BYTES: usize = 128;

/// A request refused after the body was read: the status, the counter and the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub kind: Refusal,
    pub message: String,
}

impl Rejection {
    fn bad(message: impl Into<String>) -> Rejection {
        Rejection { status: StatusCode::BAD_REQUEST, kind: Refusal::BadRequest, message: message.into() }
    }

    fn forbidden(message: impl Into<String>) -> Rejection {
        Rejection { status: StatusCode::FORBIDDEN, kind: Refusal::Forbidden, message: message.into() }
    }
}

/// A batch the store has taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub batch_id: String,
    pub records: u64,
    pub outcome: PutOutcome,
    /// What linkage needs of the records the store took, made once while storing.
    pub parsed: Linkable,
    /// The linkage the records go to.
    pub slot: Slot,
    /// The key epoch of the records.
    pub epoch: u32,
    /// What the batch's records did to the versions held, per kind.
    pub versions: std::collections::BTreeMap<String, super::store::Versions>,
    /// The store wrote the batch with an audit mark (every stored batch but
    /// tombstones under a retired epoch, which store nothing).
    pub marked: bool,
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Resp {
    json_bytes_response(status, serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A response of JSON already serialized (a stored answer goes out byte for byte).
pub(crate) fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn error_response(status: StatusCode, message: &str) -> Resp {
    json_response(status, &ErrorBody { error: message.to_string() })
}

/// Refuse without reading the body: count, log, answer, and close the connection
/// afterwards (the unread body makes it unusable for another request).
pub(crate) fn refuse_unread(st: &Steward, peer: &Peer, kind: Refusal, status: StatusCode, message: &str) -> Resp {
    st.refuse(kind, peer.addr, Some(&peer.id), message);
    let mut resp = error_response(status, message);
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Read a request body of at most `max` bytes, whole, within the I/O
/// timeout. Refusals are answered (and counted) here: 413 past the limit
/// (reading stops there, whatever the headers said), 408 when the body
/// stops arriving or takes longer than `io_timeout` in all, 400 when the
/// stream breaks otherwise.
pub(crate) async fn read_body(
    st: &Steward,
    peer: &Peer,
    body: Incoming,
    max: u64,
    too_large: &str,
) -> Result<Bytes, Resp> {
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    let timed_out = || {
        let msg = format!("the body did not arrive within {} s", st.cfg.io_timeout.as_secs_f64());
        refuse_unread(st, peer, Refusal::BodyTimeout, StatusCode::REQUEST_TIMEOUT, &msg)
    };
    match tokio::time::timeout(st.cfg.io_timeout, limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(refuse_unread(st, peer, Refusal::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, too_large))
        }
        // The connection's own no-progress deadline (`TimeoutIo`) fires as a read error.
        Ok(Err(e)) if is_timeout(e.as_ref()) => Err(timed_out()),
        Ok(Err(_)) => Err(refuse_unread(
            st,
            peer,
            Refusal::BadRequest,
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
        Err(_) => Err(timed_out()),
    }
}

/// Whether an error, or any error it was caused by, is a timeout.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

pub(crate) async fn post_batch(st: &Arc<Steward>, peer: Arc<Peer>, req: Request<Incoming>) -> Resp {
    let max = st.cfg.max_body_bytes;
    let too_large = format!("the body is larger than the steward accepts ({max} bytes); send smaller batches");
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return refuse_unread(st, &peer, Refusal::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    let Some(format) = BatchFormat::from_content_type(req.headers().get(CONTENT_TYPE).map(|v| v.as_bytes())) else {
        let msg = format!(
            "a batch is sent as application/json or {}; this request's content type is neither",
            binary::CONTENT_TYPE
        );
        return refuse_unread(st, &peer, Refusal::BadRequest, StatusCode::UNSUPPORTED_MEDIA_TYPE, &msg);
    };
    let body = match read_body(st, &peer, req.into_body(), max, &too_large).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    // From here on the work runs to its end even if the peer goes away (hyper drops
    // this future when the connection closes): a batch stored is then also audited
    // and linked, and a replay of it, a duplicate, would do neither.
    let st = st.clone();
    match tokio::spawn(async move { take_batch(&st, &peer, body, format).await }).await {
        Ok(resp) => resp,
        Err(_) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "the steward could not store the batch; retry later")
        }
    }
}

/// Store, audit and link a batch body read in full; the answer to the source.
async fn take_batch(st: &Arc<Steward>, peer: &Peer, body: Bytes, format: BatchFormat) -> Resp {
    // Shared from admission to linkage: an epoch switch waits for this batch, or this batch for it.
    let _gate = st.epoch_gate.read().await;
    match store_batch_body(&st.store, &st.epochs, &st.schema, &peer.id.name, body, format).await {
        Ok(acc) => {
            let duplicate = acc.outcome == PutOutcome::Duplicate;
            let stored = match acc.outcome {
                PutOutcome::Stored(n) => n,
                PutOutcome::Duplicate => 0,
            };
            let counter = if duplicate { &st.batches_duplicate } else { &st.batches_stored };
            counter.fetch_add(1, Ordering::Relaxed);
            if !duplicate {
                let st2 = st.clone();
                let (parsed, slot) = (acc.parsed, acc.slot);
                // Linked before the acknowledgement, so a query after it sees the
                // batch; the work runs off the reactor.
                let _ = tokio::task::spawn_blocking(move || st2.link(slot, parsed)).await;
            }
            // Audited before the acknowledgement, once (see `receipts`): a stored batch
            // now; a replay only if its first audit did not finish.
            let mark = if duplicate {
                match st.store.unaudited_of(&peer.id.name, &acc.batch_id) {
                    Ok(m) => m,
                    Err(e) => {
                        error!(source = %peer.id.name, error = %e, "reading a batch's audit mark failed");
                        return error_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the steward could not record the batch; retry later",
                        );
                    }
                }
            } else {
                Some(super::store::Unaudited::of(&peer.id.name, &acc.batch_id, &acc.versions))
            };
            if let Some(mark) = mark {
                match st.audit_batch(mark, None, duplicate || acc.marked).await {
                    Ok(()) => {}
                    Err(e) => {
                        error!(source = %peer.id.name, error = %e, "auditing a batch failed");
                        return error_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the steward could not record the batch; retry later",
                        );
                    }
                }
            }
            let mut v = super::store::Versions::default();
            acc.versions.values().for_each(|k| v.add(k));
            info!(
                source = %peer.id.name,
                batch_id = %acc.batch_id,
                epoch = acc.epoch,
                records = acc.records,
                stored,
                duplicate,
                replaced = v.replaced,
                unchanged = v.unchanged,
                stale = v.stale,
                deleted = v.deleted,
                "batch received"
            );
            json_response(StatusCode::OK, &BatchAck { batch_id: acc.batch_id, stored, duplicate })
        }
        Err(BatchError::Rejected(r)) => {
            st.refuse(r.kind, peer.addr, Some(&peer.id), &r.message);
            error_response(r.status, &r.message)
        }
        Err(BatchError::Epoch(m)) => {
            let message = m.to_string();
            st.refuse(Refusal::Epoch, peer.addr, Some(&peer.id), &message);
            let body = EpochRefusal { error: message, epoch: m.epoch(), current_epoch: m.current() };
            json_response(StatusCode::CONFLICT, &body)
        }
        Err(e) => {
            error!(source = %peer.id.name, error = %e, "storing a batch failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "the steward could not store the batch; retry later")
        }
    }
}

/// `GET /v1/epochs` (sources): the steward's key epochs and every source's progress.
pub(crate) async fn get_epochs(st: &Arc<Steward>) -> Resp {
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || st2.epoch_status()).await {
        Ok(Ok(status)) => json_response(StatusCode::OK, &status),
        Ok(Err(e)) => {
            error!(error = %e, "reading the key epochs failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "the steward could not read its key epochs; retry later")
        }
        Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "the steward could not read its key epochs"),
    }
}

/// Largest epoch report accepted.
const MAX_REPORT_BYTES: u64 = 16 * 1024;

/// `POST /v1/epochs` (sources): a source reports its epoch; durable before
/// the answer (the steward's status). A report completing the pending epoch
/// may switch the linkage.
pub(crate) async fn post_epochs(st: &Arc<Steward>, peer: &Peer, req: Request<Incoming>) -> Resp {
    let too_large = format!("an epoch report is at most {MAX_REPORT_BYTES} bytes");
    let body = match read_body(st, peer, req.into_body(), MAX_REPORT_BYTES, &too_large).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let report: EpochReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            let msg = "the body is not an epoch report ({active, keys, rekey, complete})";
            st.refuse(Refusal::BadRequest, peer.addr, Some(&peer.id), msg);
            return error_response(StatusCode::BAD_REQUEST, msg);
        }
    };
    let now = crate::days::now_text();
    let (epochs, name, r2) = (st.epochs.clone(), peer.id.name.clone(), report.clone());
    match tokio::task::spawn_blocking(move || epochs.report(&name, &r2, &now)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(error = %e, "recording an epoch report failed");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the steward could not record the report; retry later",
            );
        }
        Err(e) => {
            error!(error = %e, "the task recording an epoch report failed");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the steward could not record the report; retry later",
            );
        }
    }
    if report.complete.is_some() && report.complete == st.epochs.pending() {
        info!(source = %peer.id.name, epoch = ?report.complete, "source reports the new key epoch complete");
        st.maybe_switch().await;
    }
    get_epochs(st).await
}

/// Why [`store_batch_body`] did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{}", .0.message)]
    Rejected(Rejection),
    #[error("{0}")]
    Epoch(EpochMismatch),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the task storing the batch {0}")]
    Internal(&'static str),
}

/// The whole non-network path of a batch: validate `body`, written as
/// `format`, as a batch from source `cert_name` (the checks of
/// [`check_parsed`], made on the decoded bytes of the binary form: a JSON
/// body is re-encoded first, unless a record has no binary form), store it
/// unless held, and make what linkage needs of it. No owned record per
/// record on the binary path. Returns once the batch is durable. Public for
/// benchmarks.
pub async fn store_batch_body(
    store: &Arc<Store>,
    epochs: &Arc<Epochs>,
    schema: &Arc<Schema>,
    cert_name: &str,
    body: Bytes,
    format: BatchFormat,
) -> Result<Accepted, BatchError> {
    let store2 = store.clone();
    let epochs = epochs.clone();
    let schema = schema.clone();
    let name = cert_name.to_string();
    let put = tokio::task::spawn_blocking(move || -> Result<Accepted, BatchError> {
        match format {
            BatchFormat::Binary => {
                let view = decode_binary(&body)?;
                check_view(&view, &name, &schema)?;
                put_view(&store2, &epochs, &schema, &name, &view, &body)
            }
            BatchFormat::Json => {
                let batch = parse_json(&body).map_err(BatchError::Rejected)?;
                // Stored in the binary form (see the store's docs), and checked and linked from it:
                // the same records, one path. A record without a binary form keeps the batch JSON.
                match binary::encode_batch(&batch) {
                    Ok(bin) => {
                        drop(batch);
                        let bin = Bytes::from(bin);
                        let view = binary::decode_view(&bin)
                            .map_err(|_| BatchError::Internal("could not re-read a batch it encoded"))?;
                        check_view(&view, &name, &schema)?;
                        put_view(&store2, &epochs, &schema, &name, &view, &bin)
                    }
                    Err(_) => {
                        let batch = check_parsed(batch, &name, &schema).map_err(BatchError::Rejected)?;
                        put_owned(&store2, &epochs, &schema, &name, batch, &body)
                    }
                }
            }
        }
    })
    .await;
    let accepted = match put {
        Ok(r) => r?,
        Err(e) => return Err(BatchError::Internal(if e.is_panic() { "panicked" } else { "was cancelled" })),
    };
    // `put_batch` returned once the batch (or, for a replay, its first copy) was durable.
    Ok(accepted)
}

/// The epoch a batch's records are under and whether it is only tombstones
/// under a retired epoch (nothing of that epoch is held any more: taken,
/// stored nowhere); else the linkage slot it goes to.
fn admit(
    epochs: &Epochs,
    name: &str,
    first: Option<u32>,
    all_deleted: bool,
) -> Result<(u32, Option<Slot>), BatchError> {
    // An empty batch carries no epoch: it is taken under the active one.
    let epoch = first.or(epochs.active()).unwrap_or(0);
    if first.is_some() && all_deleted && epochs.active().is_some_and(|a| epoch < a) {
        return Ok((epoch, None));
    }
    let (slot, started) = epochs.admit(epoch).map_err(BatchError::Epoch)?;
    if started {
        tracing::info!(source = %name, epoch, "first batch under a new key epoch: building its linkage beside the active one");
    }
    Ok((epoch, Some(slot)))
}

/// A batch of tombstones under a retired epoch ([`admit`]): taken, stored nowhere, linked nowhere.
fn taken_unstored(batch_id: String, records: u64, epoch: u32) -> Accepted {
    let (outcome, parsed, versions) = (PutOutcome::Stored(0), Linkable::default(), Default::default());
    Accepted { batch_id, records, outcome, parsed, slot: Slot::Active, epoch, versions, marked: false }
}

/// Store a checked binary batch (`body`, decoded as `view`) and make what linkage needs of it.
fn put_view(
    store: &Store,
    epochs: &Epochs,
    schema: &Schema,
    name: &str,
    view: &binary::BatchView<'_>,
    body: &Bytes,
) -> Result<Accepted, BatchError> {
    let records = view.records.len() as u64;
    let all_deleted = view.records.iter().all(|r| r.deleted);
    let batch_id = view.batch_id.to_string();
    let (epoch, slot) = admit(epochs, name, view.records.first().map(|r| r.epoch), all_deleted)?;
    let Some(slot) = slot else {
        return Ok(taken_unstored(batch_id, records, epoch));
    };
    let put = store.put_view(name, view.batch_id, epoch, view, body)?;
    // Linkage gets the versions the store took (and the tombstones that removed one).
    let parsed = Linkable::from_view(schema, view, &put.link);
    let outcome = put.outcome;
    let marked = outcome != PutOutcome::Duplicate;
    Ok(Accepted { batch_id, records, outcome, parsed, slot, epoch, versions: put.versions, marked })
}

/// Store a checked JSON batch that has no binary form (kept as JSON, see the store's docs).
fn put_owned(
    store: &Store,
    epochs: &Epochs,
    schema: &Schema,
    name: &str,
    batch: Batch,
    body: &[u8],
) -> Result<Accepted, BatchError> {
    let records = batch.records.len() as u64;
    let all_deleted = batch.records.iter().all(|r| r.deleted);
    let (epoch, slot) = admit(epochs, name, batch.records.first().map(|r| r.epoch), all_deleted)?;
    let Some(slot) = slot else {
        return Ok(taken_unstored(batch.batch_id, records, epoch));
    };
    let (put, parsed) = store.put_batch(name, &batch.batch_id, epoch, batch.records, body, BatchFormat::Json)?;
    let parsed = parsed.into_iter().zip(&put.link).filter(|(_, l)| **l).map(|(r, _)| r).collect();
    let parsed = Linkable::from_records(schema, parsed);
    let outcome = put.outcome;
    let marked = outcome != PutOutcome::Duplicate;
    Ok(Accepted { batch_id: batch.batch_id, records, outcome, parsed, slot, epoch, versions: put.versions, marked })
}

fn decode_binary(body: &[u8]) -> Result<binary::BatchView<'_>, BatchError> {
    binary::decode_view(body).map_err(|e| BatchError::Rejected(Rejection::bad(format!("the binary body: {e}"))))
}

/// Per position of the batch's string table: the schema's scheme of that name, if any.
pub(crate) fn scheme_positions(schema: &Schema, view: &binary::BatchView<'_>) -> Vec<Option<usize>> {
    view.table.iter().map(|s| schema.scheme_index(s)).collect()
}

/// [`check_parsed`] on a batch decoded from the binary form, without an
/// owned record: the same checks in the same order, refusing with the same
/// words. (A binary record's rid is 16 bytes and its tokens carry the
/// record's epoch by construction, so those two checks always pass.)
fn check_view(view: &binary::BatchView<'_>, cert_name: &str, schema: &Schema) -> Result<(), BatchError> {
    check_head(view.source, view.batch_id, cert_name).map_err(BatchError::Rejected)?;
    let schemes = scheme_positions(schema, view);
    let epoch = view.records.first().map(|r| r.epoch);
    for (i, r) in view.records.iter().enumerate() {
        let bad = |message: String| BatchError::Rejected(Rejection::bad(message));
        if Some(r.epoch) != epoch {
            return Err(bad(format!("record {i}: a batch holds records of one key epoch only")));
        }
        if r.source != cert_name {
            return Err(BatchError::Rejected(Rejection::forbidden(format!(
                "record {i} names another source than this certificate (source `{cert_name}`)"
            ))));
        }
        if r.kind.is_empty() {
            return Err(bad(format!("record {i}: kind is empty")));
        }
        let tokens = view.tokens(r);
        let unknown_scheme =
            tokens.iter().find(|t| schemes.get(t.scheme).copied().flatten().is_none()).map(|t| view.scheme(t));
        let fields = view.fields(r);
        let parts = RecordParts { kind: r.kind, deleted: r.deleted, has_tokens: !tokens.is_empty(), unknown_scheme };
        let refs = fields.iter().map(|(n, v)| (*n, field_ref(*v)));
        let has = |name: &str| fields.binary_search_by(|(n, _)| (*n).cmp(name)).is_ok();
        if let Err(p) = check_parts(schema, parts, refs, has) {
            return Err(BatchError::Rejected(schema_rejection(i, &p)));
        }
    }
    Ok(())
}

fn field_ref(v: binary::FieldValue<'_>) -> FieldRef<'_> {
    match v {
        binary::FieldValue::Null => FieldRef::Null,
        binary::FieldValue::Bool(b) => FieldRef::Bool(b),
        binary::FieldValue::Int(n) => FieldRef::Int(n),
        binary::FieldValue::Date(d) => FieldRef::Date(d),
        binary::FieldValue::Str(s) => FieldRef::Str(s),
    }
}

fn schema_rejection(i: usize, p: &crate::record::RecordProblem) -> Rejection {
    Rejection {
        status: StatusCode::BAD_REQUEST,
        kind: Refusal::Schema,
        message: format!("record {i}: {p}; the batch is refused whole (the source's schema must be the program's)"),
    }
}

/// The batch-level checks: the source is the certificate's, the batch id well formed.
fn check_head(source: &str, batch_id: &str, cert_name: &str) -> Result<(), Rejection> {
    if source != cert_name {
        return Err(Rejection::forbidden(format!(
            "the batch names another source than this certificate (source `{cert_name}`)"
        )));
    }
    let id = batch_id;
    if id.is_empty() || id.len() > MAX_BATCH_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::bad(format!(
            "batch_id must be 1 to {MAX_BATCH_ID_BYTES} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// A JSON batch body, parsed; the error says where it fails, never what it read.
fn parse_json(body: &[u8]) -> Result<Batch, Rejection> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax => "is not valid JSON",
            serde_json::error::Category::Eof => "ends before the JSON does",
            serde_json::error::Category::Data => {
                "does not have the shape of a batch ({source, batch_id, records: [{source, kind, line, epoch, rid, tokens, fields}]})"
            }
            serde_json::error::Category::Io => "could not be read",
        };
        Rejection::bad(format!("the body {what}: line {} column {}", e.line(), e.column()))
    })
}

/// The checks every batch passes, as owned records (a JSON batch with a
/// record that has no binary form; [`check_view`] makes them on the binary
/// form). Every record is checked against the program's `schema`
/// ([`PseudoRecord::check`](crate::record::PseudoRecord::check)): a
/// misconfigured or compromised source cannot make the steward store an
/// identity field, an undeclared field or a value of the wrong type. One bad
/// record refuses the whole batch (400, counted as `schema`), naming the
/// record's position and the field, never a value.
fn check_parsed(batch: Batch, cert_name: &str, schema: &Schema) -> Result<Batch, Rejection> {
    check_head(&batch.source, &batch.batch_id, cert_name)?;
    let epoch = batch.records.first().map(|r| r.epoch);
    for (i, r) in batch.records.iter().enumerate() {
        if Some(r.epoch) != epoch {
            return Err(Rejection::bad(format!("record {i}: a batch holds records of one key epoch only")));
        }
        if r.source != cert_name {
            return Err(Rejection::forbidden(format!(
                "record {i} names another source than this certificate (source `{cert_name}`)"
            )));
        }
        if !crate::hex::is_hex(&r.rid, 32) {
            return Err(Rejection::bad(format!("record {i}: rid is not 32 hex digits")));
        }
        if r.kind.is_empty() {
            return Err(Rejection::bad(format!("record {i}: kind is empty")));
        }
        for t in r.tokens.values() {
            match token::parse_token(t) {
                Some((epoch, _)) if epoch == r.epoch => {}
                Some(_) => {
                    return Err(Rejection::bad(format!("record {i}: a token's epoch differs from the record's")))
                }
                None => return Err(Rejection::bad(format!("record {i}: a token is not <epoch>:<32 hex digits>"))),
            }
        }
        if let Err(p) = r.check(schema) {
            return Err(schema_rejection(i, &p));
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PseudoRecord;

    fn record(source: &str) -> PseudoRecord {
        PseudoRecord {
            source: source.into(),
            kind: "arrest".into(),
            line: 2,
            epoch: 3,
            rid: "ab".repeat(16),
            seq: 0,
            deleted: false,
            tokens: [("names_dob".to_string(), format!("3:{}", "cd".repeat(16)))].into(),
            fields: [
                ("age".to_string(), serde_json::json!(30)),
                ("arrest_date".to_string(), serde_json::json!("2024-05-01")),
                ("warrant".to_string(), serde_json::json!(false)),
                ("violent".to_string(), serde_json::json!(false)),
                ("felony".to_string(), serde_json::json!(false)),
            ]
            .into(),
        }
    }

    fn check(body: &[u8], cert: &str) -> Result<Batch, Rejection> {
        check_parsed(parse_json(body)?, cert, &Schema::default_schema().unwrap())
    }

    fn body(source: &str, id: &str, records: Vec<PseudoRecord>) -> Vec<u8> {
        serde_json::to_vec(&Batch { source: source.into(), batch_id: id.into(), records }).unwrap()
    }

    #[test]
    fn accepts_a_good_batch() {
        let b = body("police", "p-1", vec![record("police"), record("police")]);
        let ok = check(&b, "police").unwrap();
        assert_eq!((ok.batch_id.as_str(), ok.records.len()), ("p-1", 2));
    }

    #[test]
    fn refuses_other_sources_and_bad_shapes_without_echoing() {
        let r = check(&body("jail", "p-1", vec![]), "police").unwrap_err();
        assert_eq!((r.status, r.kind), (StatusCode::FORBIDDEN, Refusal::Forbidden));
        assert!(!r.message.contains("jail"), "{}", r.message);
        let r = check(&body("police", "p-1", vec![record("police"), record("jail")]), "police").unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.message.contains("record 1"));
        for id in ["", "has space", &"x".repeat(129)] {
            assert_eq!(check(&body("police", id, vec![]), "police").unwrap_err().status, StatusCode::BAD_REQUEST);
        }
        let mut bad = record("police");
        bad.tokens.insert("x".into(), "4:".to_string() + &"cd".repeat(16));
        assert!(check(&body("police", "a", vec![bad]), "police").unwrap_err().message.contains("epoch"));
        let mut bad = record("police");
        bad.rid = "SECRET".into();
        let r = check(&body("police", "a", vec![bad]), "police").unwrap_err();
        assert!(!r.message.contains("SECRET"));
        for text in [
            r#"{"source":"police","batch_id":"a","records":[{"SECRET_FIELD":1}]}"#,
            r#"{"source":"police","batch_id":"a","records":"SECRET_VALUE"}"#,
            r#"{"source":"police","batch_id":"a","records":[SECRET"#,
            r#"SECRET"#,
        ] {
            let r = check(text.as_bytes(), "police").unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            assert!(!r.message.contains("SECRET"), "{}", r.message);
        }
    }

    #[test]
    fn refuses_records_outside_the_schema_naming_the_field_only() {
        for (key, value) in [("family_name", "Quixote"), ("dob", "1980-03-14"), ("ssn", "123-45-6789")] {
            let mut bad = record("police");
            bad.fields.insert(key.into(), serde_json::json!(value));
            let r = check(&body("police", "a", vec![record("police"), bad]), "police").unwrap_err();
            assert_eq!((r.status, r.kind), (StatusCode::BAD_REQUEST, Refusal::Schema), "{key}");
            assert!(r.message.starts_with("record 1: field `") && r.message.contains(key), "{}", r.message);
            assert!(!r.message.contains(value), "{}", r.message);
        }
        let mut bad = record("police");
        bad.kind = "unknown_kind".into();
        assert_eq!(check(&body("police", "a", vec![bad]), "police").unwrap_err().kind, Refusal::Schema);
    }

    #[test]
    fn binary_and_json_batches_are_checked_alike() {
        use serde_json::json;
        let schema = Schema::default_schema().unwrap();
        type Change = fn(&mut PseudoRecord);
        let changes: Vec<Change> = vec![
            |_| {},
            |r| r.kind = "unknown_kind".into(),
            |r| r.kind = String::new(),
            |r| r.source = "jail".into(),
            |r| {
                r.epoch = 4;
                r.tokens.values_mut().for_each(|t| *t = t.replacen("3:", "4:", 1));
            },
            |r| drop(r.fields.insert("family_name".into(), json!("Quixote"))),
            |r| drop(r.fields.insert("dob".into(), json!("1980-03-14"))),
            |r| drop(r.fields.insert("arrest_id".into(), json!("A-1"))),
            |r| drop(r.fields.insert("race_ethnicity".into(), json!("black"))),
            |r| drop(r.fields.insert("warrant".into(), json!("yes"))),
            |r| drop(r.fields.insert("warrant".into(), json!(null))),
            |r| drop(r.fields.remove("felony")),
            |r| drop(r.fields.insert("arrest_date".into(), json!("2024-02-30"))),
            |r| drop(r.fields.insert("arrest_date".into(), json!(5))),
            |r| drop(r.fields.insert("arrest_date".into(), json!("0000-01-01"))),
            |r| drop(r.fields.insert("age".into(), json!(121))),
            |r| drop(r.fields.insert("age".into(), json!(-1))),
            |r| drop(r.fields.insert("age".into(), json!("30"))),
            |r| drop(r.fields.insert("age".into(), json!(null))),
            |r| drop(r.fields.insert("sex".into(), json!("q"))),
            |r| drop(r.fields.insert("sex".into(), json!("f"))),
            |r| drop(r.fields.insert("sex".into(), json!("1999-01-01"))),
            |r| drop(r.tokens.insert("zzz".into(), format!("3:{}", "ab".repeat(16)))),
            |r| r.deleted = true,
            |r| (r.deleted, r.tokens, r.fields) = (true, Default::default(), Default::default()),
            |r| {
                (r.kind, r.fields) = ("charge".into(), Default::default());
                r.fields.insert("filing_date".into(), json!("2024-01-01"));
                r.fields.insert("level".into(), json!("2024-01-01"));
            },
            |r| {
                (r.kind, r.fields) = ("charge".into(), Default::default());
                r.fields.insert("filing_date".into(), json!("2024-01-01"));
                r.fields.insert("level".into(), json!("felony"));
            },
        ];
        let mut refused = 0;
        for (i, change) in changes.into_iter().enumerate() {
            let mut other = record("police");
            change(&mut other);
            let batch = Batch { source: "police".into(), batch_id: "a".into(), records: vec![record("police"), other] };
            let parsed = check_parsed(batch.clone(), "police", &schema).map(|_| ());
            let bin = binary::encode_batch(&batch).unwrap();
            let view = binary::decode_view(&bin).unwrap();
            let viewed = check_view(&view, "police", &schema).map_err(|e| match e {
                BatchError::Rejected(r) => r,
                other => panic!("{other}"),
            });
            assert_eq!(parsed, viewed, "change {i}");
            refused += usize::from(parsed.is_err());
        }
        assert_eq!(refused, 22);
    }

    /// Both paths of `store_batch_body` on one store: JSON with and without a
    /// binary form, and binary; stored in the form the store's docs say, linked alike.
    #[tokio::test]
    async fn json_and_binary_bodies_are_stored_and_made_linkable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        let epochs = Arc::new(Epochs::open(store.durable()).unwrap());
        let schema = Arc::new(Schema::default_schema().unwrap());
        let with_rid = |rid: &str| {
            let mut r = record("police");
            r.rid = rid.into();
            r
        };
        // An upper-case rid passes the checks but has no binary form: the batch stays JSON.
        let upper = body("police", "j-1", vec![with_rid(&"CD".repeat(16)), with_rid(&"ce".repeat(16))]);
        let json = body("police", "j-2", vec![with_rid(&"0e".repeat(16)), with_rid(&"0f".repeat(16))]);
        let b: Batch = serde_json::from_slice(&body("police", "b-1", vec![with_rid(&"1e".repeat(16))])).unwrap();
        let bin = binary::encode_batch(&b).unwrap();
        let cases = [(upper, BatchFormat::Json, 2), (json, BatchFormat::Json, 2), (bin, BatchFormat::Binary, 1)];
        for (body, format, n) in cases {
            let acc =
                store_batch_body(&store, &epochs, &schema, "police", Bytes::from(body.clone()), format).await.unwrap();
            assert_eq!(
                (acc.outcome, acc.records, acc.parsed.len(), acc.epoch),
                (PutOutcome::Stored(n), n, n as usize, 3)
            );
            let again = store_batch_body(&store, &epochs, &schema, "police", Bytes::from(body), format).await.unwrap();
            assert_eq!((again.outcome, again.parsed.len()), (PutOutcome::Duplicate, 0));
        }
        let formats: Vec<(String, BatchFormat)> =
            store.batches().map(|b| b.unwrap()).map(|b| (b.batch_id, b.header.format)).collect();
        assert_eq!(
            formats,
            [
                ("b-1".to_string(), BatchFormat::Binary),
                ("j-1".to_string(), BatchFormat::Json),
                ("j-2".to_string(), BatchFormat::Binary)
            ]
        );
        let persons = super::super::persons::Persons::new(schema.clone());
        let again = body("police", "j-3", vec![with_rid(&"CD".repeat(16)), with_rid(&"0e".repeat(16))]);
        let acc =
            store_batch_body(&store, &epochs, &schema, "police", Bytes::from(again), BatchFormat::Json).await.unwrap();
        // Both records are held already with the same content: nothing new to link.
        assert_eq!((acc.outcome, acc.parsed.len()), (PutOutcome::Stored(0), 0));
        persons.add_linkable(acc.parsed);
        assert_eq!(persons.records(), 0);
        let refused =
            store_batch_body(&store, &epochs, &schema, "jail", Bytes::from(b"{}".to_vec()), BatchFormat::Json).await;
        assert!(matches!(refused, Err(BatchError::Rejected(_))));
    }
}
