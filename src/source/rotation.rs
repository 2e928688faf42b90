//! Linkage-key rotation at a source: the task that fetches new epochs from
//! the custodian, re-pseudonymizes what the source holds, switches, reports
//! to the steward, and retires the old key once the steward has switched.
//!
//! The stages, as one source sees them (every step is durable before the next):
//!
//! 1. **add** — a key file for epoch `N+1` appears in the keys directory:
//!    written by `divert keys rotate` at the custodian, fetched from the
//!    custodian (`GET /v1/keys` over mutual TLS) at the others, or put there
//!    by an admin. Key files are written whole (temporary file, fsync, rename).
//! 2. **re-pseudonymize** — every raw row held is tokenized under `N+1` and
//!    queued (see [`super::rekey`]); new files keep being ingested under `N`.
//! 3. **activate** — under the ingest lock, a last pass, then the store
//!    records `N+1` as active and the outbox sequence at that moment; new
//!    files are pseudonymized under `N+1` from here on.
//! 4. **complete** — once every outbox batch below that sequence is
//!    acknowledged, the source reports `N+1` complete (`POST /v1/epochs`).
//! 5. **retire** — when the steward reports `N+1` active (it switches once
//!    every source is complete), the source deletes the key files below `N+1`.
//!
//! A crash at any point restarts the same stage: the store says which.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};

use crate::config::Custody;
use crate::keys;
use crate::token::Tokenizer;
use crate::wire::{EpochReport, EpochStatus, KeySet, RekeyProgress, EPOCHS_PATH, KEYS_PATH};

use super::file::FileError;
use super::push::{connect_to, Peer};
use super::{rekey, store, Keying, Source};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// What `status` shows of the rotation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct View {
    /// The epoch being re-pseudonymized toward, while that runs.
    pub rekey: Option<RekeyProgress>,
    /// The steward's last answer, and when it came.
    pub steward: Option<EpochStatus>,
    pub steward_at: Option<String>,
    /// The last error of the rotation task, if the last round failed.
    pub error: Option<String>,
    /// Rows kept from earlier ingests that no longer pass the schema, so were not
    /// sent under the new epoch (a schema changed since they were ingested).
    pub rows_not_resent: u64,
}

/// The epoch the store pseudonymizes under. A store that never recorded one
/// takes the highest key in `dir` if it holds no file yet, else the lowest
/// (so what it holds is re-pseudonymized toward the highest).
pub fn active_epoch(st: &store::Store, dir: &Path) -> anyhow::Result<u32> {
    let tree = st.tree();
    if let Some(v) = tree.get(store::META_ACTIVE_EPOCH)? {
        if let Ok(b) = <[u8; 4]>::try_from(v.as_ref()) {
            return Ok(u32::from_be_bytes(b));
        }
    }
    let epochs = keys::epochs_in(dir)?;
    let empty = store::files(tree)?.is_empty();
    let epoch = match (empty, epochs.first(), epochs.last()) {
        (true, _, Some(&hi)) => hi,
        (false, Some(&lo), _) => lo,
        _ => return Err(keys::KeyError::NoKey { dir: dir.to_path_buf() }.into()),
    };
    st.put_u64_bytes(store::META_ACTIVE_EPOCH, &epoch.to_be_bytes())?;
    Ok(epoch)
}

/// The rotation task: one round at start, then every `epoch_poll` (or when woken), until shutdown.
pub async fn task(src: Arc<Source>) {
    let shutdown = src.ctx.shutdown.clone();
    let mut last_error: Option<String> = None;
    loop {
        let result = round(&src).await;
        let error = result.err().map(|e| format!("{e:#}"));
        if error != last_error {
            match &error {
                Some(e) => tracing::warn!(error = %e, "key rotation: a round failed; retrying"),
                None if last_error.is_some() => tracing::info!("key rotation: rounds succeed again"),
                None => {}
            }
            last_error = error.clone();
        }
        src.view().error = error;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = src.wake.notified() => {}
            _ = tokio::time::sleep(src.cfg.epoch_poll) => {}
        }
    }
}

impl Source {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.rotation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the rotation task now (a refused epoch, a new key file).
    pub fn wake_rotation(&self) {
        self.wake.notify_one();
    }

    /// What `status` shows under `key`: epoch, fingerprint, keys held, rotation progress.
    pub fn key_view(&self) -> serde_json::Value {
        let k = self.keying();
        let held = keys::epochs_in(&self.cfg.keys).unwrap_or_default();
        let v = self.view().clone();
        serde_json::json!({
            "epoch": k.epoch,
            "fingerprint": k.fingerprint,
            "epochs_held": held,
            "rekey": v.rekey,
            "steward_epoch": v.steward.as_ref().and_then(|s| s.active),
            "steward_pending": v.steward.as_ref().and_then(|s| s.pending),
            "error": v.error,
            "rows_not_resent": v.rows_not_resent,
        })
    }

    /// For `divert keys status`: this source's view and the steward's (asked now, or the last answer).
    pub async fn key_status(&self) -> serde_json::Value {
        let mut out = self.key_view();
        let steward = match self.steward_request(Method::GET, EPOCHS_PATH, None).await {
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<EpochStatus>(&body).ok(),
            _ => None,
        };
        let v = self.view().clone();
        let (steward, fresh) = match steward {
            Some(s) => (Some(s), true),
            None => (v.steward, false),
        };
        out["steward"] = serde_json::json!({ "status": steward, "fresh": fresh, "as_of": v.steward_at });
        out["source"] = self.name.clone().into();
        out
    }

    async fn steward_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let want = Peer::Steward;
        request(self, &self.cfg.steward_addr, &self.cfg.steward_host, want, method, path, body).await
    }
}

/// One request on a new mutual-TLS connection, the server's identity checked.
async fn request(
    src: &Source,
    addr: &str,
    host: &str,
    want: Peer<'_>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut sender = connect_to(src, addr, host, want).await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("building a request")?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
        .with_context(|| format!("{addr}{path}"))?;
    let status = resp.status();
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect())
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: the answer did not arrive in time"))?
        .map_err(|e| anyhow::anyhow!("{addr}: reading the answer: {e}"))?
        .to_bytes();
    Ok((status, answer))
}

fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<crate::wire::ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// One round: fetch, re-pseudonymize and switch, report, retire.
async fn round(src: &Arc<Source>) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = fetch(src).await {
        errors.push(format!("fetching keys from the custodian: {e:#}"));
    }
    let held = keys::epochs_in(&src.cfg.keys)?;
    let active = src.keying().epoch;
    if let Some(&target) = held.last().filter(|&&t| t > active) {
        // A failure here is reported to the steward too (below), so `keys status` shows it everywhere.
        if let Err(e) = rekey_to(src, target).await {
            errors.push(format!("re-pseudonymizing under epoch {target}: {e:#}"));
        }
    }
    let problem = (!errors.is_empty()).then(|| errors.join("; "));
    match report(src, problem).await {
        Ok(status) => retire(src, &status)?,
        Err(e) => errors.push(format!("reporting to the steward: {e:#}")),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

/// Ask the custodian for its keys; store any epoch above ours that we lack.
async fn fetch(src: &Arc<Source>) -> anyhow::Result<()> {
    let Custody::Fetch { name, addr, host } = &src.cfg.custody else {
        return Ok(());
    };
    let (status, body) = request(src, addr, host, Peer::Custodian(name), Method::GET, KEYS_PATH, None).await?;
    if status != StatusCode::OK {
        anyhow::bail!("the custodian answered {status}: {}", error_text(&body));
    }
    let set: KeySet =
        serde_json::from_slice(&body).map_err(|_| anyhow::anyhow!("the custodian's answer is not a key set"))?;
    drop(body);
    let dir = &src.cfg.keys;
    let held = keys::epochs_in(dir)?;
    let active = src.keying().epoch;
    for entry in &set.epochs {
        if entry.epoch <= active || held.contains(&entry.epoch) {
            continue;
        }
        let bytes = zeroize::Zeroizing::new(
            crate::hex::decode(&entry.key_hex)
                .ok_or_else(|| anyhow::anyhow!("the custodian sent a key that is not hex"))?,
        );
        let (d, epoch) = (dir.clone(), entry.epoch);
        // A key file is written and fsynced: off the async workers.
        let key = tokio::task::spawn_blocking(move || keys::store_epoch(&d, epoch, &bytes)).await??;
        tracing::info!(epoch = key.epoch(), fingerprint = %key.fingerprint(), "fetched a new linkage key epoch from the custodian");
    }
    Ok(())
}

/// Re-pseudonymize everything held under `target`, then switch to it.
async fn rekey_to(src: &Arc<Source>, target: u32) -> anyhow::Result<()> {
    let key = keys::load(&src.cfg.keys, target)?;
    let tokenizer = Arc::new(Tokenizer::new(&src.schema, &key)?);
    let fingerprint = key.fingerprint();
    drop(key);
    let st = src.store.clone();
    let (total, done) = tokio::task::spawn_blocking(move || -> Result<(u64, u64), FileError> {
        rekey::begin(&st, target)?;
        rekey::progress(&st)
    })
    .await??;
    if done == 0 {
        tracing::info!(
            from = src.keying().epoch,
            to = target,
            records = total,
            "re-pseudonymizing held records under a new key epoch"
        );
    } else {
        tracing::info!(to = target, records = total, done, "resuming re-pseudonymization");
    }
    src.view().rekey = Some(RekeyProgress { target, records_done: done, records_total: total });
    // File by file, each under the ingest lock, so ingest goes on between files.
    let files = store::files(src.store.tree())?;
    for (id, _) in files {
        if src.ctx.shutdown.is_cancelled() {
            return Ok(());
        }
        let state = src.state.clone().lock_owned().await;
        let (s, tok) = (src.clone(), tokenizer.clone());
        let r = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let Some(rec) = s.store.file(&id).map_err(|e| FileError::Failed(e.to_string()))? else {
                return Ok(rekey::FilePass::default());
            };
            let add = |b: &[(u64, u32)]| s.outbox.add(b.iter().copied());
            s.guarded(&mut state, |state| rekey::file(&s.env(&tok, &add), state, &id, &rec))
        })
        .await?;
        match r {
            Ok(pass) => {
                let mut v = src.view();
                v.rows_not_resent += pass.dropped;
                if let Some(p) = v.rekey.as_mut() {
                    p.records_done = (p.records_done + pass.rows + pass.dropped).min(p.records_total.max(1));
                }
            }
            Err(FileError::Stopped) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    // The last pass and the switch, with ingest held off.
    let state = src.state.clone().lock_owned().await;
    let (s, tok) = (src.clone(), tokenizer.clone());
    let switched = tokio::task::spawn_blocking(move || -> Result<Option<u64>, FileError> {
        let mut state = state;
        s.guarded(&mut state, |state| {
            let mut rows = 0;
            for (id, rec) in store::files(s.store.tree()).map_err(|e| FileError::Failed(e.to_string()))? {
                let add = |b: &[(u64, u32)]| s.outbox.add(b.iter().copied());
                match rekey::file(&s.env(&tok, &add), state, &id, &rec) {
                    Ok(p) => {
                        rows += p.rows;
                        s.view().rows_not_resent += p.dropped;
                    }
                    Err(FileError::Stopped) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            rekey::switch(&s.store, state, target)?;
            // Swapped while the ingest lock is held: the next file is pseudonymized under the new epoch.
            *s.keying.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(Keying { tokenizer: tok, epoch: target, fingerprint });
            Ok(Some(rows))
        })
    })
    .await??;
    if switched.is_some() {
        let total = src.view().rekey.take().map_or(0, |p| p.records_total);
        tracing::info!(
            epoch = target,
            records = total,
            "switched to the new key epoch: new records are pseudonymized under it; complete once the steward has acknowledged the re-pseudonymized records"
        );
    }
    Ok(())
}

/// Report to the steward; returns its view.
async fn report(src: &Arc<Source>, problem: Option<String>) -> anyhow::Result<EpochStatus> {
    let keying = src.keying();
    let switch_seq = src.store.get_u64(store::META_SWITCH_SEQ)?;
    // From the store, not the pusher's queue: a batch written but not handed to the
    // pusher (a failed flush) still counts as not acknowledged.
    let drained = store::first_outbox_seq(src.store.tree())?.map_or(true, |m| m >= switch_seq);
    let (rekey, not_resent) = {
        let v = src.view();
        (v.rekey.clone(), v.rows_not_resent)
    };
    let mut notes: Vec<String> = problem.into_iter().collect();
    if not_resent > 0 {
        notes.push(format!(
            "{not_resent} rows kept from earlier ingests no longer pass the schema and were not sent under epoch {}",
            keying.epoch
        ));
    }
    let report = EpochReport {
        active: keying.epoch,
        keys: keys::epochs_in(&src.cfg.keys)?,
        rekey,
        complete: drained.then_some(keying.epoch),
        fingerprint: keying.fingerprint.clone(),
        error: (!notes.is_empty()).then(|| notes.join("; ")),
    };
    let body = serde_json::to_vec(&report)?;
    let (status, answer) = src.steward_request(Method::POST, EPOCHS_PATH, Some(body)).await?;
    if status != StatusCode::OK {
        anyhow::bail!("the steward answered {status}: {}", error_text(&answer));
    }
    let view: EpochStatus =
        serde_json::from_slice(&answer).map_err(|_| anyhow::anyhow!("the steward's answer is not an epoch status"))?;
    let mut v = src.view();
    v.steward = Some(view.clone());
    v.steward_at = Some(crate::days::now_text());
    Ok(view)
}

/// Once the steward links our epoch (or a later one), delete older key files.
fn retire(src: &Arc<Source>, steward: &EpochStatus) -> anyhow::Result<()> {
    let active = src.keying().epoch;
    if steward.active.map_or(true, |a| a < active) {
        return Ok(());
    }
    for e in keys::epochs_in(&src.cfg.keys)? {
        if e < active {
            keys::remove_epoch(&src.cfg.keys, e)?;
            tracing::info!(epoch = e, active, "the steward links the new epoch: retired the old linkage key");
        }
    }
    Ok(())
}
