//! The compact binary form of a [`Batch`]: what sources send and the steward stores (`application/vnd.divert.batch`). Pure: bytes in, bytes out.
//!
//! JSON stays the documented form (the offline CLI, curl, older sources);
//! this form carries exactly the same records in about a quarter of the
//! bytes: tokens and rids as raw bytes, names and repeating values once per
//! batch in a string table, numbers as varints, dates as day numbers.
//! Decoding either form of one batch gives identical [`PseudoRecord`]s.
//!
//! # Format, version 2
//!
//! Integers are unsigned LEB128 varints (at most 10 bytes, no bits beyond
//! 64); *zigzag* integers map a signed `n` to `(n << 1) ^ (n >> 63)` first.
//! A *string* is a varint byte length and that many bytes of UTF-8.
//!
//! ```text
//! batch   = magic "DVB" 0x00 | version 0x02 | source: string | batch_id: string | tail
//! section = magic "DVR" 0x00 | version 0x02 | tail
//! tail    = table count: varint | table strings: string*
//!           | scheme count: varint | scheme: index*
//!           | field count: varint | field name: index*
//!           | record count: varint | record*
//! record  = flags: byte (bit 0: deleted; bit 1: shares the record before's
//!           kind, source and epoch, never on the first record; other bits 0)
//!           | kind: index | source: index | epoch: varint   (left out when bit 1 is set)
//!           | line: step | seq: step | rid: 16 bytes
//!           | token set: ceil(scheme count / 8) bytes | token: 16 bytes, one per bit set
//!           | field set: ceil(field count / 8) bytes | value, one per bit set
//! step    = zigzag varint of the change from the record before's number
//!           (from 0 for the first record), taken modulo 2^64
//! value   = 0x00 null | 0x01 false | 0x02 true | 0x03 integer: zigzag varint (i64)
//!         | 0x04 date: zigzag varint, days since 1970-01-01, written YYYY-MM-DD (years 0000-9999)
//!         | 0x05 string: index | 0x06 string: string (inline)
//! index   = varint position in the batch's string table
//! ```
//!
//! The *schemes* and the *field names* are the token schemes and fields
//! of the batch, each list in strictly ascending name order. Bit `i` of a
//! record's token set (bit `i % 8` of its byte `i / 8`) says the record has
//! a token of scheme `i`; its tokens follow in the schemes' order. The
//! field set and the values are read the same way against the field
//! names. Bits past a list's count are 0. A writer lists the schemes and
//! fields its records use ([`encode`] lists exactly those). Lines and
//! versions rise by one from record to record of an export, so each takes
//! a byte where it took three and five.
//!
//! Version 1 (written before this release, still read: a source's outbox
//! and the steward's store may hold it) has no lists; a record names each
//! token's scheme and each field, and spells its numbers out:
//!
//! ```text
//! tail    = table count: varint | table strings: string* | record count: varint | record*
//! record  = kind: index | source: index | line: varint | epoch: varint | seq: varint
//!           | rid: 16 bytes | flags: byte (bit 0: deleted; other bits 0)
//!           | token count: varint | (scheme: index | token: 16 bytes)*
//!           | field count: varint | (name: index | value)*
//! ```
//!
//! Tokens and fields of a version 1 record are in strictly ascending name order.
//!
//! A *records section* is a batch without its source and batch id: what a
//! source's outbox keeps (written once, at ingest, by
//! the pseudonymizer's `append`); [`batch_from_section`]
//! puts the header before it at send time. The string table may hold strings
//! no record uses (a writer interns its names up front).
//!
//! A record's `rid` is the 16 bytes of its 32 lower-case hex digits; a token
//! is `<record epoch>:<32 lower-case hex digits>`, of which only the 16
//! bytes travel (the epoch is the record's). Tokens and fields are listed in
//! strictly ascending name order (the order of `PseudoRecord`'s maps), each
//! name once. Nothing may follow the last record. A record whose rid,
//! tokens or values do not fit these forms (upper-case hex, a token of
//! another epoch, a fractional number, an array) has no binary form:
//! [`encode`] says so and the caller sends or keeps JSON; such a record
//! would not pass the steward's checks anyway.
//!
//! Decoding is total: any bytes either decode or give a [`DecodeError`]
//! naming the record's position and what is wrong, never a value. No count
//! read from the input allocates more than the remaining input could fill.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use super::Batch;
use crate::record::PseudoRecord;

/// The content type of a batch in this form.
pub const CONTENT_TYPE: &str = "application/vnd.divert.batch";
/// The first bytes of every batch in this form.
pub const MAGIC: [u8; 4] = *b"DVB\0";
/// The first bytes of a records section ([`Encoder::finish_section`]).
pub const SECTION_MAGIC: [u8; 4] = *b"DVR\0";
/// The format version this code writes.
pub const VERSION: u8 = 2;
/// The oldest version this code reads (see the module docs).
pub const OLDEST_VERSION: u8 = 1;

/// Strings of at most this many bytes go in the string table; longer ones inline.
const TABLE_STRING_MAX: usize = 64;
/// Fewest bytes a record of version 1 takes (indices, numbers and counts of one byte each, the rid, the flags).
const MIN_RECORD_BYTES_V1: usize = 5 + 16 + 1 + 2;
/// Fewest bytes a record of version 2 takes, its token and field sets left
/// out: flags, line and version of a byte each, the rid.
const MIN_RECORD_BYTES: usize = 3 + 16;
/// Fewest bytes a token takes.
const MIN_TOKEN_BYTES: usize = 1 + crate::token::TOKEN_LEN;
/// Fewest bytes a field takes.
const MIN_FIELD_BYTES: usize = 2;

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT: u8 = 3;
const TAG_DATE: u8 = 4;
const TAG_TABLE: u8 = 5;
const TAG_INLINE: u8 = 6;

/// Days of 0000-01-01 and 9999-12-31 (the years `YYYY` spells).
const MIN_DAY: i64 = -719_528;
const MAX_DAY: i64 = 2_932_896;

/// Why a record has no binary form. Names the part, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {record}: {what}; the batch has no binary form")]
pub struct EncodeError {
    pub record: usize,
    pub what: &'static str,
}

/// Why bytes are not a batch in this form. Names the record's position and the part, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the body does not start as a binary batch")]
    Magic,
    #[error("the binary batch is of format version {0}; this release reads versions {OLDEST_VERSION} to {VERSION}")]
    Version(u8),
    #[error("{}{what}", at(*.record))]
    Bad { record: Option<usize>, what: &'static str },
}

fn at(record: Option<usize>) -> String {
    record.map_or_else(String::new, |i| format!("record {i}: "))
}

/// Whether `bytes` begin as a batch in this form (of any version).
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

// ---------------------------------------------------------------- encoding

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The string table being built: each string once, in order of first use.
/// Strings the encoder may borrow for the whole batch are borrowed; others
/// (a record's own values) are copied, once per batch.
#[derive(Default, Clone)]
struct Table<'r> {
    index: std::collections::HashMap<Cow<'r, str>, u64>,
    strings: Vec<Cow<'r, str>>,
}

impl<'r> Table<'r> {
    fn add(&mut self, s: Cow<'r, str>) -> u64 {
        let i = self.strings.len() as u64;
        self.index.insert(s.clone(), i);
        self.strings.push(s);
        i
    }

    /// The position of `s`, added if new.
    fn intern(&mut self, s: &'r str) -> u64 {
        match self.index.get(s) {
            Some(&i) => i,
            None => self.add(Cow::Borrowed(s)),
        }
    }

    /// The position of `s`, copied in if new.
    fn intern_copy(&mut self, s: &str) -> u64 {
        match self.index.get(s) {
            Some(&i) => i,
            None => self.add(Cow::Owned(s.to_owned())),
        }
    }
}

/// The 16 bytes of 32 lower-case hex digits (the only spelling that decodes back to itself).
fn lower_hex16(s: &str) -> Option<[u8; 16]> {
    crate::hex::decode_lower_array(s)
}

/// The token's 16 bytes when it is exactly `<epoch>:<32 lower-case hex>`.
fn compact_token(s: &str, epoch: u32) -> Option<[u8; 16]> {
    let (e, h) = s.split_once(':')?;
    let canonical = e.parse::<u32>().ok() == Some(epoch) && (e == "0" || !e.starts_with(['0', '+']));
    if canonical {
        lower_hex16(h)
    } else {
        None
    }
}

/// Encode a batch. Fails (naming the record) when a record has no binary form; see the module docs.
pub fn encode_batch(batch: &Batch) -> Result<Vec<u8>, EncodeError> {
    encode(&batch.source, &batch.batch_id, &batch.records)
}

/// Encode the batch `(source, batch_id)` of `records`.
pub fn encode<'r>(
    source: &str,
    batch_id: &str,
    records: impl IntoIterator<Item = &'r PseudoRecord>,
) -> Result<Vec<u8>, EncodeError> {
    Ok(encoder_of(records)?.finish(source, batch_id))
}

/// The records section of `records` (see [`Encoder::finish_section`]).
pub fn encode_section<'r>(records: impl IntoIterator<Item = &'r PseudoRecord>) -> Result<Vec<u8>, EncodeError> {
    Ok(encoder_of(records)?.finish_section())
}

fn encoder_of<'r>(records: impl IntoIterator<Item = &'r PseudoRecord>) -> Result<Encoder<'r>, EncodeError> {
    let records: Vec<&'r PseudoRecord> = records.into_iter().collect();
    let mut enc = Encoder::default();
    enc.declare_schemes(records.iter().flat_map(|r| r.tokens.keys().map(String::as_str)));
    enc.declare_fields(records.iter().flat_map(|r| r.fields.keys().map(String::as_str)));
    for (i, r) in records.into_iter().enumerate() {
        let head =
            Head { kind: &r.kind, source: &r.source, line: r.line, epoch: r.epoch, seq: r.seq, deleted: r.deleted };
        let tokens = r.tokens.iter().map(|(k, v)| (k.as_str(), compact_token(v, r.epoch)));
        let fields = r.fields.iter().map(|(k, v)| (k.as_str(), Val::of(v)));
        enc.record(i, head, lower_hex16(&r.rid), tokens, fields)?;
    }
    Ok(enc)
}

/// The binary form of the batch `(source, batch_id)` whose records are the
/// JSON array `records` (as a source's outbox holds them), made without
/// building a [`PseudoRecord`] per record: the same bytes [`encode`] makes
/// of the parsed records. `None` when the text is not an array of records
/// or a record has no binary form (then parse and [`encode`], or send JSON).
pub fn encode_json_array(source: &str, batch_id: &str, records: &[u8]) -> Option<Vec<u8>> {
    let parsed: Vec<JsonRecord<'_>> = serde_json::from_slice(records).ok()?;
    let mut enc = Encoder::default();
    enc.declare_schemes(parsed.iter().flat_map(|r| r.tokens.keys().map(|k| &*k.0)));
    enc.declare_fields(parsed.iter().flat_map(|r| r.fields.keys().map(|k| &*k.0)));
    for (i, r) in parsed.iter().enumerate() {
        let head =
            Head { kind: &r.kind.0, source: &r.source.0, line: r.line, epoch: r.epoch, seq: r.seq, deleted: r.deleted };
        let tokens = r.tokens.iter().map(|(k, v)| (&*k.0, compact_token(&v.0, r.epoch)));
        let fields = r.fields.iter().map(|(k, v)| (&*k.0, v.val()));
        enc.record(i, head, lower_hex16(&r.rid.0), tokens, fields).ok()?;
    }
    Some(enc.finish(source, batch_id))
}

/// A field value as the binary form sees it.
enum Val<'v> {
    Null,
    Bool(bool),
    Int(i64),
    /// Days since 1970-01-01, already within the years the form spells.
    Date(i32),
    Str(&'v str),
    /// No binary form: why.
    Other(&'static str),
}

const NOT_I64: &str = "a number is not a whole number of 64 bits";
const NOT_SCALAR: &str = "a field value is an array or an object";

impl<'v> Val<'v> {
    fn of(v: &'v Value) -> Val<'v> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => n.as_i64().map_or(Val::Other(NOT_I64), Val::Int),
            Value::String(s) => Val::Str(s),
            Value::Array(_) | Value::Object(_) => Val::Other(NOT_SCALAR),
        }
    }

    fn from_field(v: FieldValue<'v>) -> Val<'v> {
        match v {
            FieldValue::Null => Val::Null,
            FieldValue::Bool(b) => Val::Bool(b),
            FieldValue::Int(n) => Val::Int(n),
            FieldValue::Date(d) => Val::Date(d),
            FieldValue::Str(s) => Val::Str(s),
        }
    }
}

/// The fixed part of a record.
struct Head<'r> {
    kind: &'r str,
    source: &'r str,
    line: u64,
    epoch: u32,
    seq: u64,
    deleted: bool,
}

/// A record's fixed part for [`Encoder::push`]: kind and source as positions in the batch's string table.
#[derive(Clone, Copy)]
pub struct RecordHead {
    pub kind: u64,
    pub source: u64,
    pub line: u64,
    pub epoch: u32,
    pub seq: u64,
    pub deleted: bool,
}

/// A field value for [`Encoder::push`].
#[derive(Clone, Copy)]
pub enum Cell<'v> {
    Null,
    Bool(bool),
    Int(i64),
    /// Days since 1970-01-01; held to the years 0000 to 9999.
    Date(i32),
    /// A string, copied into the table (once per batch) when short.
    Str(&'v str),
    /// A string already in the table ([`Encoder::intern`]) that does not spell a date.
    Interned(u64),
}

/// A batch being encoded: the string table and the records so far. A
/// writer that knows its strings up front interns them once ([`Encoder::intern`])
/// into a template it clones per batch, and [`Encoder::push`]es records by
/// table position; [`encode`] and [`encode_section`] take whole records.
#[derive(Default, Clone)]
pub struct Encoder<'r> {
    table: Table<'r>,
    /// The batch's token schemes: table positions, in ascending name order.
    schemes: Vec<u64>,
    /// The batch's field names, likewise.
    fields: Vec<u64>,
    body: Vec<u8>,
    count: u64,
    /// The last record's line and version, which the next one's are written from.
    last: Steps,
}

/// What a record is written after: the record before's line and version
/// (a record's own are written as the change from them), and its kind,
/// source and epoch (which a record that shares them does not repeat).
#[derive(Default, Clone, Copy)]
struct Steps {
    line: u64,
    seq: u64,
    /// Kind and source (table positions) and epoch; none before the first record.
    head: Option<(u64, u64, u32)>,
}

impl<'r> Encoder<'r> {
    pub fn new() -> Encoder<'r> {
        Encoder::default()
    }

    /// `s`'s position in the batch's string table (added if new). A string
    /// of the table need not be used by any record.
    pub fn intern(&mut self, s: &'r str) -> u64 {
        self.table.intern(s)
    }

    /// Records pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Append a record whose parts all have a binary form. `tokens` gives,
    /// for each declared scheme in order ([`Encoder::declare_schemes`]), the
    /// record's token of it if any; `fields` likewise for each declared field
    /// name ([`Encoder::declare_fields`]): its value, or `None` when the
    /// record has no such field. Items past the declared ones are not read.
    pub fn push<'v>(
        &mut self,
        head: RecordHead,
        rid: &[u8; 16],
        tokens: impl Iterator<Item = Option<[u8; 16]>>,
        fields: impl Iterator<Item = Option<Cell<'v>>>,
    ) {
        let body = &mut self.body;
        put_head(body, &mut self.last, &head, rid);
        let set = reserve_set(body, self.schemes.len());
        for (i, token) in tokens.take(self.schemes.len()).enumerate() {
            if let Some(token) = token {
                set_bit(body, set, i);
                body.extend_from_slice(&token);
            }
        }
        let set = reserve_set(body, self.fields.len());
        for (i, cell) in fields.take(self.fields.len()).enumerate() {
            let Some(cell) = cell else { continue };
            set_bit(body, set, i);
            let v = match cell {
                Cell::Null => Val::Null,
                Cell::Bool(b) => Val::Bool(b),
                Cell::Int(n) => Val::Int(n),
                Cell::Date(d) => Val::Date(d.clamp(MIN_DAY as i32, MAX_DAY as i32)),
                Cell::Str(s) => Val::Str(s),
                Cell::Interned(i) => {
                    body.push(TAG_TABLE);
                    put_varint(body, i);
                    continue;
                }
            };
            // Every value a cell makes has a binary form.
            let _ = put_value(body, &mut self.table, v);
        }
        self.count += 1;
    }

    /// Append record number `i`; tokens and fields in ascending name order,
    /// each once (a map's order), of the declared schemes and fields.
    fn record(
        &mut self,
        i: usize,
        h: Head<'r>,
        rid: Option<[u8; 16]>,
        tokens: impl Iterator<Item = (&'r str, Option<[u8; 16]>)>,
        fields: impl Iterator<Item = (&'r str, Val<'r>)>,
    ) -> Result<(), EncodeError> {
        let bad = |what| EncodeError { record: i, what };
        let rid = rid.ok_or(bad("rid is not 32 lower-case hex digits"))?;
        let body = &mut self.body;
        let table = &mut self.table;
        let head = RecordHead {
            kind: table.intern(h.kind),
            source: table.intern(h.source),
            line: h.line,
            epoch: h.epoch,
            seq: h.seq,
            deleted: h.deleted,
        };
        put_head(body, &mut self.last, &head, &rid);
        let set = reserve_set(body, self.schemes.len());
        let mut next = 0;
        for (scheme, token) in tokens {
            let t = token.ok_or(bad("a token is not <the record's epoch>:<32 lower-case hex digits>"))?;
            let i = declared_at(table, &self.schemes, &mut next, scheme)
                .ok_or(bad("a token's scheme is not among the batch's schemes, or out of order"))?;
            set_bit(body, set, i);
            body.extend_from_slice(&t);
        }
        let set = reserve_set(body, self.fields.len());
        let mut next = 0;
        for (name, value) in fields {
            let i = declared_at(table, &self.fields, &mut next, name)
                .ok_or(bad("a field is not among the batch's fields, or out of order"))?;
            set_bit(body, set, i);
            put_value(body, table, value).map_err(bad)?;
        }
        self.count += 1;
        Ok(())
    }

    /// Declare the batch's token schemes (sorted and each kept once here),
    /// before the first record: a record's tokens must be of these. A
    /// [`Encoder::push`]ed record gives its tokens in this order.
    pub fn declare_schemes(&mut self, names: impl IntoIterator<Item = &'r str>) {
        debug_assert!(self.count == 0, "schemes are declared before the first record");
        self.schemes = declare(&mut self.table, names);
    }

    /// Declare the batch's field names, as [`Encoder::declare_schemes`] does its schemes.
    pub fn declare_fields(&mut self, names: impl IntoIterator<Item = &'r str>) {
        debug_assert!(self.count == 0, "fields are declared before the first record");
        self.fields = declare(&mut self.table, names);
    }

    /// The table, the schemes and the records: what follows the header in both forms.
    fn put_tail(&self, out: &mut Vec<u8>) {
        put_varint(out, self.table.strings.len() as u64);
        for s in &self.table.strings {
            put_str(out, s);
        }
        for list in [&self.schemes, &self.fields] {
            put_varint(out, list.len() as u64);
            for &p in list {
                put_varint(out, p);
            }
        }
        put_varint(out, self.count);
        out.extend_from_slice(&self.body);
    }

    fn tail_bytes(&self) -> usize {
        self.table.strings.iter().map(|s| s.len() + 2).sum::<usize>()
            + 2 * (self.schemes.len() + self.fields.len())
            + self.body.len()
            + 20
    }

    /// The batch `(source, batch_id)` of the records pushed.
    pub fn finish(self, source: &str, batch_id: &str) -> Vec<u8> {
        let mut out = batch_header(VERSION, source, batch_id, self.tail_bytes());
        self.put_tail(&mut out);
        out
    }

    /// The records pushed as a *records section*: a batch without its source
    /// and batch id, which [`batch_from_section`] completes at send time
    /// (what a source's outbox keeps).
    pub fn finish_section(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.tail_bytes());
        out.extend_from_slice(&SECTION_MAGIC);
        out.push(VERSION);
        self.put_tail(&mut out);
        out
    }
}

/// Append a value; the reason when it has no binary form.
fn put_value(body: &mut Vec<u8>, table: &mut Table<'_>, value: Val<'_>) -> Result<(), &'static str> {
    match value {
        Val::Null => body.push(TAG_NULL),
        Val::Bool(false) => body.push(TAG_FALSE),
        Val::Bool(true) => body.push(TAG_TRUE),
        Val::Int(n) => {
            body.push(TAG_INT);
            put_varint(body, zigzag(n));
        }
        Val::Date(d) => {
            body.push(TAG_DATE);
            put_varint(body, zigzag(i64::from(d)));
        }
        Val::Str(s) if crate::record::is_iso_date(s) => {
            body.push(TAG_DATE);
            put_varint(body, zigzag(i64::from(date_days(s))));
        }
        Val::Str(s) if s.len() <= TABLE_STRING_MAX => {
            body.push(TAG_TABLE);
            let i = table.intern_copy(s);
            put_varint(body, i);
        }
        Val::Str(s) => {
            body.push(TAG_INLINE);
            put_str(body, s);
        }
        Val::Other(what) => return Err(what),
    }
    Ok(())
}

/// The batch `(source, batch_id)` whose records are the records section
/// `section` ([`Encoder::finish_section`]): a header put before the
/// section's table and records, which are not read.
/// The batch is of the section's version (an outbox written by an earlier
/// release holds version 1).
pub fn batch_from_section(source: &str, batch_id: &str, section: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (version, tail) = section_tail(section)?;
    let mut out = batch_header(version, source, batch_id, tail.len());
    out.extend_from_slice(tail);
    Ok(out)
}

/// A batch's header (magic, version, source, batch id), with room for `tail` more bytes.
fn batch_header(version: u8, source: &str, batch_id: &str, tail: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + source.len() + batch_id.len() + tail);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    put_str(&mut out, source);
    put_str(&mut out, batch_id);
    out
}

/// A record's fixed part: flags; kind, source and epoch unless they are the
/// record before's; line and version as steps; rid.
fn put_head(body: &mut Vec<u8>, last: &mut Steps, head: &RecordHead, rid: &[u8; 16]) {
    let this = (head.kind, head.source, head.epoch);
    let same = last.head == Some(this);
    body.push(u8::from(head.deleted) | u8::from(same) << 1);
    if !same {
        put_varint(body, head.kind);
        put_varint(body, head.source);
        put_varint(body, u64::from(head.epoch));
    }
    put_varint(body, step(last.line, head.line));
    put_varint(body, step(last.seq, head.seq));
    body.extend_from_slice(rid);
    *last = Steps { line: head.line, seq: head.seq, head: Some(this) };
}

/// Room for a set of `n` bits after `body`, all clear; where it starts.
fn reserve_set(body: &mut Vec<u8>, n: usize) -> usize {
    let at = body.len();
    body.resize(at + set_bytes(n), 0);
    at
}

/// The strings `names` sorted, each once, as table positions.
fn declare<'r>(table: &mut Table<'r>, names: impl IntoIterator<Item = &'r str>) -> Vec<u64> {
    let mut names: Vec<&'r str> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(|n| table.intern(n)).collect()
}

/// The position of `name` in the declared list `declared`, looking from
/// `*next` on (names come in ascending order); `*next` moves past it.
fn declared_at(table: &Table<'_>, declared: &[u64], next: &mut usize, name: &str) -> Option<usize> {
    let at = declared.get(*next..)?.iter().position(|&p| table.strings.get(p as usize).is_some_and(|s| s == name))?;
    *next += at + 1;
    Some(*next - 1)
}

/// How `n` is written after `last`: the change, modulo 2^64, zigzagged.
fn step(last: u64, n: u64) -> u64 {
    zigzag(n.wrapping_sub(last) as i64)
}

/// The number written as `step` after `last`.
fn unstep(last: u64, step: u64) -> u64 {
    last.wrapping_add(unzigzag(step) as u64)
}

/// Bytes of a record's set of `n` bits (the batch's schemes or fields).
fn set_bytes(n: usize) -> usize {
    n.div_ceil(8)
}

/// Whether `bytes` begin as a records section (of any version).
pub fn is_section(bytes: &[u8]) -> bool {
    bytes.starts_with(&SECTION_MAGIC)
}

/// A section's version and what follows it.
fn section_tail(section: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    if !is_section(section) {
        return Err(DecodeError::Magic);
    }
    match section.get(SECTION_MAGIC.len()) {
        Some(&v) if (OLDEST_VERSION..=VERSION).contains(&v) => Ok((v, &section[SECTION_MAGIC.len() + 1..])),
        Some(&v) => Err(DecodeError::Version(v)),
        None => Err(DecodeError::Bad { record: None, what: "the format version is missing" }),
    }
}

/// A record as JSON text holds it, its strings borrowed from the text
/// where they have no escapes. Accepts exactly what [`PseudoRecord`]'s
/// `Deserialize` accepts, with the same meaning.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord<'a> {
    #[serde(borrow)]
    source: JStr<'a>,
    #[serde(borrow)]
    kind: JStr<'a>,
    line: u64,
    epoch: u32,
    #[serde(borrow)]
    rid: JStr<'a>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    deleted: bool,
    #[serde(borrow)]
    tokens: BTreeMap<JStr<'a>, JStr<'a>>,
    #[serde(borrow)]
    fields: BTreeMap<JStr<'a>, JVal<'a>>,
}

/// A JSON string, borrowed unless it has escapes; ordered as `String`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct JStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for JStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = JStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<JStr<'a>, E> {
                Ok(JStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<JStr<'a>, E> {
                Ok(JStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<JStr<'a>, E> {
                Ok(JStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A JSON field value as [`Value`] would hold it, strings borrowed.
enum JVal<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(Cow<'a, str>),
    Other(&'static str),
}

impl JVal<'_> {
    fn val(&self) -> Val<'_> {
        match self {
            JVal::Null => Val::Null,
            JVal::Bool(b) => Val::Bool(*b),
            JVal::Int(n) => Val::Int(*n),
            JVal::Str(s) => Val::Str(s),
            JVal::Other(what) => Val::Other(what),
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for JVal<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IgnoredAny;
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = JVal<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<JVal<'a>, E> {
                Ok(JVal::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<JVal<'a>, E> {
                Ok(JVal::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<JVal<'a>, E> {
                Ok(JVal::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<JVal<'a>, E> {
                Ok(i64::try_from(v).map_or(JVal::Other(NOT_I64), JVal::Int))
            }
            fn visit_f64<E>(self, _: f64) -> Result<JVal<'a>, E> {
                Ok(JVal::Other(NOT_I64))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<JVal<'a>, E> {
                Ok(JVal::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<JVal<'a>, E> {
                Ok(JVal::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<JVal<'a>, E> {
                Ok(JVal::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JVal<'a>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(JVal::Other(NOT_SCALAR))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JVal<'a>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JVal::Other(NOT_SCALAR))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` already checked to be a real day.
fn date_days(s: &str) -> i32 {
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    crate::days::days_from_civil(num(0..4) as i32, num(5..7), num(8..10))
}

// ---------------------------------------------------------------- decoding

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    record: Option<usize>,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &'static str) -> DecodeError {
        DecodeError::Bad { record: self.record, what }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| self.bad(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn array16(&mut self, what: &'static str) -> Result<[u8; 16], DecodeError> {
        let s = self.bytes(16, what)?;
        <[u8; 16]>::try_from(s).map_err(|_| self.bad(what))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut n = 0u64;
        for i in 0..10u32 {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(self.bad("a number is larger than 64 bits"));
            }
            n |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.bad("a number is larger than 64 bits"))
    }

    /// A count of items of at least `min_each` bytes each: never more than the rest could hold.
    fn count(&mut self, min_each: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.varint(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() / min_each.max(1) => Ok(n),
            _ => Err(self.bad(what)),
        }
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let n = self.varint(what)?;
        let n = usize::try_from(n).map_err(|_| self.bad(what))?;
        let s = self.bytes(n, what)?;
        std::str::from_utf8(s).map_err(|_| self.bad("a string is not UTF-8"))
    }

    fn index<'s>(&mut self, table: &[&'s str], what: &'static str) -> Result<&'s str, DecodeError> {
        self.index_at(table, what).map(|(_, s)| s)
    }

    /// A string table index and the string it names.
    fn index_at<'s>(&mut self, table: &[&'s str], what: &'static str) -> Result<(usize, &'s str), DecodeError> {
        let i = self.varint(what)?;
        usize::try_from(i).ok().and_then(|i| Some((i, *table.get(i)?))).ok_or_else(|| self.bad(what))
    }
}

/// Decode a batch in this form. Total: see the module docs.
pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    decode_view(bytes).map(|v| v.to_batch())
}

/// A field value of a [`BatchView`], borrowed from the body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// Days since 1970-01-01, within the years 0000 to 9999 (written `YYYY-MM-DD` in JSON).
    Date(i32),
    Str(&'a str),
}

impl FieldValue<'_> {
    /// The value as a record's JSON map holds it.
    pub fn to_json(self) -> Value {
        match self {
            FieldValue::Null => Value::Null,
            FieldValue::Bool(b) => Value::Bool(b),
            FieldValue::Int(n) => Value::from(n),
            FieldValue::Date(d) => Value::String(date_text(d).as_str().to_string()),
            FieldValue::Str(s) => Value::String(s.to_string()),
        }
    }
}

/// `YYYY-MM-DD` of a day number within the years 0000 to 9999, without allocating.
pub struct DateText([u8; 10]);

impl DateText {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and dashes are ever written.
        std::str::from_utf8(&self.0).unwrap_or("0000-00-00")
    }
}

/// The text of day `d` (see [`DateText`]).
pub fn date_text(d: i32) -> DateText {
    DateText(crate::days::iso_date_bytes(d))
}

/// One record of a [`BatchView`]: the fixed part, borrowed or copied; its
/// tokens and fields are ranges of the view's shared lists ([`BatchView::tokens`],
/// [`BatchView::fields`]). No `Debug`: it holds tokens and values.
#[derive(Clone)]
pub struct RecordView<'a> {
    pub kind: &'a str,
    pub source: &'a str,
    pub line: u64,
    pub epoch: u32,
    pub seq: u64,
    /// The rid's 16 bytes (the record's `rid` is their lower-case hex).
    pub rid: [u8; 16],
    pub deleted: bool,
    tokens: std::ops::Range<usize>,
    fields: std::ops::Range<usize>,
}

/// A token of a [`BatchView`]: its scheme's position in the batch's string table and its 16 bytes.
#[derive(Clone, Copy)]
pub struct TokenView {
    pub scheme: usize,
    pub token: crate::token::Token,
}

/// A batch in this form, decoded without owning anything per record: every
/// string is borrowed from the body (the string table once per batch),
/// tokens and rids are their 16 bytes, and the records' tokens and fields
/// lie in two lists for the whole batch. What [`decode`] accepts, exactly;
/// [`BatchView::to_batch`] gives the same [`Batch`].
pub struct BatchView<'a> {
    pub source: &'a str,
    pub batch_id: &'a str,
    /// The batch's string table: a token's `scheme` indexes it.
    pub table: Vec<&'a str>,
    pub records: Vec<RecordView<'a>>,
    tokens: Vec<TokenView>,
    fields: Vec<(&'a str, FieldValue<'a>)>,
}

impl<'a> BatchView<'a> {
    /// The record's tokens, in ascending scheme name order.
    pub fn tokens(&self, r: &RecordView<'a>) -> &[TokenView] {
        self.tokens.get(r.tokens.clone()).unwrap_or_default()
    }

    /// The record's fields (name, value), in ascending name order.
    pub fn fields(&self, r: &RecordView<'a>) -> &[(&'a str, FieldValue<'a>)] {
        self.fields.get(r.fields.clone()).unwrap_or_default()
    }

    /// The scheme name of a token of this batch.
    pub fn scheme(&self, t: &TokenView) -> &'a str {
        self.table.get(t.scheme).copied().unwrap_or_default()
    }

    /// A record as an owned [`PseudoRecord`] (tokens as `<epoch>:<hex>` text).
    pub fn to_record(&self, r: &RecordView<'a>) -> PseudoRecord {
        let prefix = if r.tokens.is_empty() { String::new() } else { format!("{}:", r.epoch) };
        let tokens = self
            .tokens(r)
            .iter()
            .map(|t| {
                let mut text = String::with_capacity(prefix.len() + 2 * t.token.len());
                text.push_str(&prefix);
                crate::hex::push_hex(&t.token, &mut text);
                (self.scheme(t).to_string(), text)
            })
            .collect();
        PseudoRecord {
            source: r.source.to_string(),
            kind: r.kind.to_string(),
            line: r.line,
            epoch: r.epoch,
            rid: crate::hex::encode(&r.rid),
            seq: r.seq,
            deleted: r.deleted,
            tokens,
            fields: self.fields(r).iter().map(|(k, v)| (k.to_string(), v.to_json())).collect(),
        }
    }

    /// The whole batch, owned: what [`decode`] returns.
    pub fn to_batch(&self) -> Batch {
        Batch {
            source: self.source.to_string(),
            batch_id: self.batch_id.to_string(),
            records: self.records.iter().map(|r| self.to_record(r)).collect(),
        }
    }

    /// The binary form of the batch of only the records `keep` names (by
    /// position): the bytes [`encode`] makes of those records.
    pub fn encode_kept(&self, keep: &[bool]) -> Vec<u8> {
        self.kept(keep).finish(self.source, self.batch_id)
    }

    /// [`BatchView::encode_kept`] as a records section: the bytes [`encode_section`] makes of those records.
    pub fn encode_kept_section(&self, keep: &[bool]) -> Vec<u8> {
        self.kept(keep).finish_section()
    }

    fn kept(&self, keep: &[bool]) -> Encoder<'a> {
        let mut enc = Encoder::default();
        let kept = || self.records.iter().zip(keep).filter(|(_, k)| **k).map(|(r, _)| r);
        enc.declare_schemes(kept().flat_map(|r| self.tokens(r).iter().map(|t| self.scheme(t))));
        enc.declare_fields(kept().flat_map(|r| self.fields(r).iter().map(|(name, _)| *name)));
        for (i, r) in kept().enumerate() {
            let head =
                Head { kind: r.kind, source: r.source, line: r.line, epoch: r.epoch, seq: r.seq, deleted: r.deleted };
            let tokens = self.tokens(r).iter().map(|t| (self.scheme(t), Some(t.token)));
            let fields = self.fields(r).iter().map(|(k, v)| (*k, Val::from_field(*v)));
            // A view's records all have a binary form: nothing here can fail.
            let _ = enc.record(i, head, Some(r.rid), tokens, fields);
        }
        enc
    }
}

/// Decode a batch in this form, borrowing from `bytes`. Total: see the module docs.
pub fn decode_view(bytes: &[u8]) -> Result<BatchView<'_>, DecodeError> {
    if !is_binary(bytes) {
        return Err(DecodeError::Magic);
    }
    let mut r = Reader { buf: bytes, pos: MAGIC.len(), record: None };
    let version = r.byte("the format version is missing")?;
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(DecodeError::Version(version));
    }
    let source = r.str("the batch's source is cut short")?;
    let batch_id = r.str("the batch id is cut short")?;
    decode_tail(r, version, source, batch_id)
}

/// Decode a records section ([`Encoder::finish_section`]), borrowing from
/// `bytes`: a view whose source and batch id are empty. Total, as [`decode_view`].
pub fn decode_section(bytes: &[u8]) -> Result<BatchView<'_>, DecodeError> {
    let (version, tail) = section_tail(bytes)?;
    decode_tail(Reader { buf: tail, pos: 0, record: None }, version, "", "")
}

/// The string table and the records, to the end of the input.
fn decode_tail<'a>(
    mut r: Reader<'a>,
    version: u8,
    source: &'a str,
    batch_id: &'a str,
) -> Result<BatchView<'a>, DecodeError> {
    let n = r.count(1, "the string table's count exceeds the body")?;
    let mut table: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n {
        table.push(r.str("a string of the table is cut short")?);
    }
    let mut v2 = if version == OLDEST_VERSION {
        None
    } else {
        let schemes = declared(&mut r, &table, List::Schemes)?;
        let fields = declared(&mut r, &table, List::Fields)?;
        Some(V2 { schemes, fields, last: Steps::default() })
    };
    let min_record = match &v2 {
        None => MIN_RECORD_BYTES_V1,
        Some(v2) => MIN_RECORD_BYTES + set_bytes(v2.schemes.len()) + set_bytes(v2.fields.len()),
    };
    let n = r.count(min_record, "the record count exceeds what the body can hold")?;
    let mut view = BatchView {
        source,
        batch_id,
        table: Vec::new(),
        records: Vec::with_capacity(n),
        tokens: Vec::new(),
        fields: Vec::new(),
    };
    for i in 0..n {
        r.record = Some(i);
        let rec = match &mut v2 {
            None => record_v1(&mut r, &table, &mut view.tokens, &mut view.fields)?,
            Some(v2) => v2.record(&mut r, &table, &mut view.tokens, &mut view.fields)?,
        };
        view.records.push(rec);
    }
    r.record = None;
    if r.remaining() != 0 {
        return Err(r.bad("bytes follow the last record"));
    }
    view.table = table;
    Ok(view)
}

/// A declared list of a version 2 batch: table positions of strictly ascending names.
fn declared(r: &mut Reader<'_>, table: &[&str], list: List) -> Result<Vec<usize>, DecodeError> {
    let [count, index, order, ..] = list.words();
    let n = r.count(1, count)?;
    let mut list = Vec::with_capacity(n);
    let mut last: Option<&str> = None;
    for _ in 0..n {
        let (at, name) = r.index_at(table, index)?;
        if last.is_some_and(|l| l >= name) {
            return Err(r.bad(order));
        }
        last = Some(name);
        list.push(at);
    }
    Ok(list)
}

/// A version 2 batch's declared schemes and fields (table positions) and
/// what the record before leaves for the next.
struct V2 {
    schemes: Vec<usize>,
    fields: Vec<usize>,
    last: Steps,
}

impl V2 {
    fn record<'a>(
        &mut self,
        r: &mut Reader<'a>,
        table: &[&'a str],
        tokens: &mut Vec<TokenView>,
        fields: &mut Vec<(&'a str, FieldValue<'a>)>,
    ) -> Result<RecordView<'a>, DecodeError> {
        let flags = r.byte("the flags are cut short")?;
        if flags > 0b11 {
            return Err(r.bad("the flags have unknown bits set"));
        }
        let (kind, source, epoch) = if flags & 0b10 != 0 {
            self.last.head.ok_or_else(|| r.bad("the first record repeats the kind of a record before it"))?
        } else {
            let (kind, _) = r.index_at(table, "the kind's index is outside the string table")?;
            let (source, _) = r.index_at(table, "the source's index is outside the string table")?;
            let epoch = r.varint("the epoch is cut short")?;
            let epoch = u32::try_from(epoch).map_err(|_| r.bad("the epoch is larger than 32 bits"))?;
            (kind as u64, source as u64, epoch)
        };
        let line = unstep(self.last.line, r.varint("the line is cut short")?);
        let seq = unstep(self.last.seq, r.varint("the version is cut short")?);
        let rid = r.array16("the rid is cut short")?;
        self.last = Steps { line, seq, head: Some((kind, source, epoch)) };
        let first_token = tokens.len();
        let set = read_set(r, self.schemes.len(), List::Schemes)?;
        for (i, &scheme) in self.schemes.iter().enumerate() {
            if has_bit(set, i) {
                tokens.push(TokenView { scheme, token: r.array16("a token is cut short")? });
            }
        }
        let first_field = fields.len();
        let set = read_set(r, self.fields.len(), List::Fields)?;
        for (i, &name) in self.fields.iter().enumerate() {
            if has_bit(set, i) {
                fields.push((table[name], value(r, table)?));
            }
        }
        Ok(RecordView {
            // Positions read from the table above: always in it.
            kind: table.get(kind as usize).copied().unwrap_or_default(),
            source: table.get(source as usize).copied().unwrap_or_default(),
            line,
            epoch,
            seq,
            rid,
            deleted: flags & 1 != 0,
            tokens: first_token..tokens.len(),
            fields: first_field..fields.len(),
        })
    }
}

/// The two lists a version 2 batch declares, and a record's set over each.
#[derive(Clone, Copy)]
enum List {
    Schemes,
    Fields,
}

impl List {
    /// What is wrong, by part: the count, an index, the order, a set cut short, a bit past the count.
    fn words(self) -> [&'static str; 5] {
        match self {
            List::Schemes => [
                "the scheme count exceeds the body",
                "a scheme's index is outside the string table",
                "the schemes are not in ascending order, each once",
                "the token set is cut short",
                "the token set has bits past the batch's schemes",
            ],
            List::Fields => [
                "the field count exceeds the body",
                "a field name's index is outside the string table",
                "the field names are not in ascending order, each once",
                "the field set is cut short",
                "the field set has bits past the batch's fields",
            ],
        }
    }
}

/// Set bit `i` of the set that starts at `body[at]`.
fn set_bit(body: &mut [u8], at: usize, i: usize) {
    body[at + i / 8] |= 1 << (i % 8);
}

/// Whether bit `i` of `set` is set.
fn has_bit(set: &[u8], i: usize) -> bool {
    set[i / 8] & (1 << (i % 8)) != 0
}

/// A record's set over the declared `list` of `n` names; refused when a bit past `n` is set.
fn read_set<'a>(r: &mut Reader<'a>, n: usize, list: List) -> Result<&'a [u8], DecodeError> {
    let [.., cut, past] = list.words();
    let set = r.bytes(set_bytes(n), cut)?;
    let used = n % 8;
    if used != 0 && set.last().is_some_and(|&b| b >> used != 0) {
        return Err(r.bad(past));
    }
    Ok(set)
}

/// A field value: its type tag and what follows it.
fn value<'a>(r: &mut Reader<'a>, table: &[&'a str]) -> Result<FieldValue<'a>, DecodeError> {
    Ok(match r.byte("a field value is cut short")? {
        TAG_NULL => FieldValue::Null,
        TAG_FALSE => FieldValue::Bool(false),
        TAG_TRUE => FieldValue::Bool(true),
        TAG_INT => FieldValue::Int(unzigzag(r.varint("an integer is cut short")?)),
        TAG_DATE => {
            let d = unzigzag(r.varint("a date is cut short")?);
            if !(MIN_DAY..=MAX_DAY).contains(&d) {
                return Err(r.bad("a date is outside the years 0000 to 9999"));
            }
            FieldValue::Date(d as i32)
        }
        TAG_TABLE => FieldValue::Str(r.index(table, "a string value's index is outside the string table")?),
        TAG_INLINE => FieldValue::Str(r.str("a string value is cut short")?),
        _ => return Err(r.bad("a field value has an unknown type tag")),
    })
}

/// A record of a version 1 batch.
fn record_v1<'a>(
    r: &mut Reader<'a>,
    table: &[&'a str],
    tokens: &mut Vec<TokenView>,
    fields: &mut Vec<(&'a str, FieldValue<'a>)>,
) -> Result<RecordView<'a>, DecodeError> {
    let kind = r.index(table, "the kind's index is outside the string table")?;
    let source = r.index(table, "the source's index is outside the string table")?;
    let line = r.varint("the line is cut short")?;
    let epoch = r.varint("the epoch is cut short")?;
    let epoch = u32::try_from(epoch).map_err(|_| r.bad("the epoch is larger than 32 bits"))?;
    let seq = r.varint("the version is cut short")?;
    let rid = r.array16("the rid is cut short")?;
    let deleted = match r.byte("the flags are cut short")? {
        0 => false,
        1 => true,
        _ => return Err(r.bad("the flags have unknown bits set")),
    };
    let n = r.count(MIN_TOKEN_BYTES, "the token count exceeds the body")?;
    let first_token = tokens.len();
    let mut last: Option<&str> = None;
    for _ in 0..n {
        let (scheme, name) = r.index_at(table, "a token's scheme index is outside the string table")?;
        if last.is_some_and(|l| l >= name) {
            return Err(r.bad("token schemes are not in ascending order, each once"));
        }
        last = Some(name);
        let token = r.array16("a token is cut short")?;
        tokens.push(TokenView { scheme, token });
    }
    let n = r.count(MIN_FIELD_BYTES, "the field count exceeds the body")?;
    let first_field = fields.len();
    let mut last: Option<&str> = None;
    for _ in 0..n {
        let name = r.index(table, "a field's name index is outside the string table")?;
        if last.is_some_and(|l| l >= name) {
            return Err(r.bad("fields are not in ascending name order, each once"));
        }
        last = Some(name);
        fields.push((name, value(r, table)?));
    }
    Ok(RecordView {
        kind,
        source,
        line,
        epoch,
        seq,
        rid,
        deleted,
        tokens: first_token..tokens.len(),
        fields: first_field..fields.len(),
    })
}

/// Two records of one export (the tests' `two_of_an_export`: a record with
/// two tokens and three fields, then a tombstone) as version 1 wrote them:
/// bytes kept from that release, for the tests of the upgrade path.
#[cfg(test)]
pub(crate) const V1_BATCH: &str = "445642000106706f6c69636503622d31080661727265737406706f6c6963650a66616d696c795f646f62096e616d65735f646f62036167650b6172726573745f64617465037365780166020001070387808080500f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f000202e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e103cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd0304034405048cb502060507000109038980808050a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0010000";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn arrest(line: u64) -> PseudoRecord {
        PseudoRecord {
            source: "police".into(),
            kind: "arrest".into(),
            line,
            epoch: 3,
            rid: format!("{:032x}", line * 0x9e37_79b9),
            seq: crate::record::record_seq(7, line),
            deleted: false,
            tokens: [
                ("names_dob".to_string(), format!("3:{}", "cd".repeat(16))),
                ("family_dob".to_string(), format!("3:{}", "0f".repeat(16))),
            ]
            .into(),
            fields: [
                ("age".to_string(), json!(34)),
                ("sex".to_string(), json!("f")),
                ("arrest_date".to_string(), json!("2024-02-29")),
                ("charge".to_string(), json!("x".repeat(200))),
                ("warrant".to_string(), json!(false)),
                ("violent".to_string(), json!(null)),
                ("felony".to_string(), json!(true)),
                ("priors".to_string(), json!(-4)),
            ]
            .into(),
        }
    }

    fn batch(records: Vec<PseudoRecord>) -> Batch {
        Batch { source: "police".into(), batch_id: "abc-7".into(), records }
    }

    #[test]
    fn json_and_binary_forms_of_a_batch_decode_to_the_same_records() {
        let mut tomb = arrest(9);
        tomb.deleted = true;
        tomb.tokens.clear();
        tomb.fields.clear();
        let b = batch(vec![arrest(2), arrest(3), tomb]);
        let json = serde_json::to_vec(&b).unwrap();
        let bin = encode_batch(&b).unwrap();
        assert_eq!(decode(&bin).unwrap(), serde_json::from_slice::<Batch>(&json).unwrap());
        // Three 200-byte strings inline; the rest shrinks to a fraction.
        assert!(bin.len() - 600 < (json.len() - 600) / 3, "{} binary bytes, {} JSON", bin.len(), json.len());
        assert_eq!(decode(&encode_batch(&batch(vec![])).unwrap()).unwrap(), batch(vec![]));
    }

    #[test]
    fn records_without_a_binary_form_are_named_not_shown() {
        type Change = fn(&mut PseudoRecord);
        let cases: Vec<(Change, &str)> = vec![
            (|r| r.rid = "AB".repeat(16), "rid"),
            (|r| r.rid = "SECRET".into(), "rid"),
            (|r| drop(r.tokens.insert("x".into(), format!("4:{}", "ab".repeat(16)))), "token"),
            (|r| drop(r.tokens.insert("x".into(), format!("03:{}", "ab".repeat(16)))), "token"),
            (|r| drop(r.tokens.insert("x".into(), format!("3:{}", "AB".repeat(16)))), "token"),
            (|r| drop(r.fields.insert("x".into(), json!(1.5))), "number"),
            (|r| drop(r.fields.insert("x".into(), json!(u64::MAX))), "number"),
            (|r| drop(r.fields.insert("x".into(), json!(["SECRET"]))), "array"),
        ];
        for (change, what) in cases {
            let mut r = arrest(2);
            change(&mut r);
            let e = encode_batch(&batch(vec![arrest(1), r])).unwrap_err();
            assert_eq!(e.record, 1);
            let msg = e.to_string();
            assert!(msg.contains(what) && !msg.contains("SECRET"), "{msg}");
        }
    }

    #[test]
    fn damaged_bodies_give_errors_that_name_no_value() {
        let good = encode_batch(&batch(vec![arrest(2), arrest(3)])).unwrap();
        assert_eq!(decode(b"{\"source\":1}"), Err(DecodeError::Magic));
        let mut later = good.clone();
        later[4] = VERSION + 1;
        assert_eq!(decode(&later), Err(DecodeError::Version(VERSION + 1)));
        later[4] = 0;
        assert_eq!(decode(&later), Err(DecodeError::Version(0)));
        // Every truncation fails, none panics.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "{n}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).unwrap_err().to_string().contains("follow"));
        // A count far beyond the body is refused before anything is allocated for it.
        let mut huge = MAGIC.to_vec();
        huge.push(VERSION);
        put_str(&mut huge, "police");
        put_str(&mut huge, "b");
        put_varint(&mut huge, u64::MAX);
        assert!(decode(&huge).unwrap_err().to_string().contains("table"));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[VERSION, 0, 0, 0]);
        put_varint(&mut huge, 1 << 40);
        assert!(decode(&huge).unwrap_err().to_string().contains("scheme count"));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[VERSION, 0, 0, 0, 0, 0]);
        put_varint(&mut huge, 1 << 40);
        assert!(decode(&huge).unwrap_err().to_string().contains("record count"));
        // An 11-byte varint.
        let mut long = MAGIC.to_vec();
        long.push(VERSION);
        long.extend_from_slice(&[0xff; 10]);
        long.push(0);
        assert!(decode(&long).unwrap_err().to_string().contains("64 bits"));
    }

    #[test]
    fn out_of_order_or_repeated_names_and_bad_dates_are_refused() {
        let mut b = batch(vec![arrest(2)]);
        b.records[0].tokens.clear();
        b.records[0].fields = [("a".to_string(), json!(1)), ("b".to_string(), json!(2))].into();
        let good = encode_batch(&b).unwrap();
        // The table is [a, b, arrest, police] (declared names first); after
        // it, no schemes and the two fields at positions 0 and 1.
        let list = good.windows(7).rposition(|w| w == b"\x06police").unwrap() + 7;
        assert_eq!(good[list..list + 4], [0, 2, 0, 1]);
        let mut swapped = good.clone();
        swapped[list + 2..list + 4].copy_from_slice(&[1, 0]);
        assert!(decode(&swapped).unwrap_err().to_string().contains("field names are not in ascending order"));
        let mut same = good.clone();
        same[list + 3] = 0;
        assert!(decode(&same).unwrap_err().to_string().contains("each once"));
        // The record ends with its field set (both) and the two values.
        let tail = good.len() - 5;
        assert_eq!(good[tail..], [0b11, TAG_INT, 2, TAG_INT, 4]);
        let mut past = good.clone();
        past[tail] = 0b111;
        assert!(decode(&past).unwrap_err().to_string().starts_with("record 0: the field set has bits past"));
        let mut date = good.clone();
        date[tail + 1] = TAG_DATE;
        date[tail + 2] = 0x7f; // zigzag -64: 1969-10-29, fine
        assert_eq!(decode(&date).unwrap().records[0].fields["a"], json!("1969-10-29"));
        let mut far = good[..tail + 1].to_vec();
        far.push(TAG_DATE);
        put_varint(&mut far, zigzag(MAX_DAY + 1));
        far.extend_from_slice(&good[tail + 3..]);
        assert!(decode(&far).unwrap_err().to_string().contains("0000 to 9999"));
        assert_eq!(
            (MIN_DAY, MAX_DAY),
            (i64::from(crate::days::days_from_civil(0, 1, 1)), i64::from(crate::days::days_from_civil(9999, 12, 31)))
        );
        // Only a record after another may say it shares the other's kind, source and epoch.
        let first = list + 4;
        assert_eq!(good[first..first + 2], [1, 0], "one record, flags 0");
        let mut orphan = good.clone();
        orphan[first + 1] = 0b10;
        assert!(decode(&orphan).unwrap_err().to_string().contains("first record repeats"));
    }

    /// Two records of one export as this release writes them and as version 1 did.
    fn two_of_an_export() -> Batch {
        let a = PseudoRecord {
            source: "police".into(),
            kind: "arrest".into(),
            line: 7,
            epoch: 3,
            rid: "0f".repeat(16),
            seq: crate::record::record_seq(5, 7),
            deleted: false,
            tokens: [
                ("names_dob".to_string(), format!("3:{}", "cd".repeat(16))),
                ("family_dob".to_string(), format!("3:{}", "e1".repeat(16))),
            ]
            .into(),
            fields: [
                ("age".to_string(), json!(34)),
                ("arrest_date".to_string(), json!("2024-02-29")),
                ("sex".to_string(), json!("f")),
            ]
            .into(),
        };
        let mut t = a.clone();
        (t.line, t.seq, t.deleted, t.rid) = (9, crate::record::record_seq(5, 9), true, "a0".repeat(16));
        t.tokens.clear();
        t.fields.clear();
        Batch { source: "police".into(), batch_id: "b-1".into(), records: vec![a, t] }
    }

    /// Its first record without the `family_dob` token, as version 1 wrote a records section.
    const V1_SECTION: &str = "4456520001070661727265737406706f6c696365096e616d65735f646f62036167650b6172726573745f64617465037365780166010001070387808080500f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f000102cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd0303034404048cb502050506";

    #[test]
    fn batches_and_outbox_sections_of_version_1_still_decode() {
        let want = two_of_an_export();
        let v1 = crate::hex::decode(V1_BATCH).unwrap();
        assert_eq!(decode(&v1).unwrap(), want);
        // Re-encoded, it is version 2. The batch's lists of schemes and
        // fields cost 3 + 4 bytes and the first record's version 1 more
        // (zigzagged from 0); its token and field sets save 2 + 3 bytes. The
        // second record's version, 2 after the first, takes 1 byte instead
        // of 5, and it does not repeat the kind, source and epoch (3).
        let v2 = encode_batch(&want).unwrap();
        assert_eq!(v2[MAGIC.len()], VERSION);
        assert_eq!(decode(&v2).unwrap(), want);
        assert_eq!(v1.len() - v2.len(), 4, "{} → {} bytes", v1.len(), v2.len());
        // A version 1 section from an outbox goes out as a version 1 batch.
        let section = crate::hex::decode(V1_SECTION).unwrap();
        let mut first = want.records[0].clone();
        first.tokens.remove("family_dob");
        assert_eq!(decode_section(&section).unwrap().to_batch().records, vec![first.clone()]);
        let sent = batch_from_section("police", "b-1", &section).unwrap();
        assert_eq!(sent[MAGIC.len()], OLDEST_VERSION);
        assert_eq!(decode(&sent).unwrap().records, vec![first]);
    }

    #[test]
    fn a_token_set_or_scheme_list_out_of_form_is_refused() {
        let b = two_of_an_export();
        let good = encode_batch(&b).unwrap();
        // The table ends with the source and the value "f"; the schemes
        // follow: two, family_dob and names_dob, declared first (positions 0 and 1).
        let schemes = good.windows(9).position(|w| w == b"\x06police\x01f").unwrap() + 9;
        assert_eq!(good[schemes..schemes + 3], [2, 0, 1]);
        let mut swapped = good.clone();
        swapped[schemes + 1..schemes + 3].copy_from_slice(&[1, 0]);
        assert!(decode(&swapped).unwrap_err().to_string().contains("schemes are not in ascending order"));
        // The first record's token set follows its 16-byte rid.
        let rid = good.windows(16).position(|w| w == [0x0f; 16]).unwrap();
        let set = rid + 16;
        assert_eq!(good[set], 0b11);
        let mut past = good.clone();
        past[set] = 0b111;
        assert!(decode(&past).unwrap_err().to_string().contains("past the batch's schemes"));
        let mut fewer = good.clone();
        fewer[set] = 0b10;
        assert!(decode(&fewer).is_err(), "a token left over is read as the next part and fails");
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["age", "sex", "arrest_date", "names_dob", "ssn"]).prop_map(String::from),
            ".{0,12}",
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (MIN_DAY..=MAX_DAY).prop_map(|d| {
                let (y, m, day) = crate::days::civil_from_days(d as i32);
                Value::String(format!("{y:04}-{m:02}-{day:02}"))
            }),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}".prop_map(Value::String),
            ".{0,80}".prop_map(Value::String),
        ]
    }

    prop_compose! {
        fn record()(
            source in prop::sample::select(vec!["police", "jail", "é"]),
            kind in name(),
            line in any::<u64>(),
            epoch in any::<u32>(),
            rid in any::<[u8; 16]>(),
            seq in any::<u64>(),
            deleted in any::<bool>(),
            tokens in prop::collection::btree_map(name(), any::<[u8; 16]>(), 0..4),
            fields in prop::collection::btree_map(name(), value(), 0..8),
        ) -> PseudoRecord {
            PseudoRecord {
                source: source.to_string(),
                kind,
                line,
                epoch,
                rid: crate::hex::encode(&rid),
                seq,
                deleted,
                tokens: tokens.into_iter().map(|(k, t)| (k, crate::token::format_token(epoch, &t))).collect(),
                fields,
            }
        }
    }

    /// What the general path makes of a JSON array of records: parse, then encode.
    fn parsed_then_encoded(text: &[u8]) -> Option<Vec<u8>> {
        let records: Vec<PseudoRecord> = serde_json::from_slice(text).ok()?;
        encode("police", "b-1", &records).ok()
    }

    #[test]
    fn json_text_is_encoded_as_its_parsed_records_are_or_not_at_all() {
        let rid = "ab".repeat(16);
        let t = format!("1:{}", "cd".repeat(16));
        let rec = |fields: &str| {
            format!(
                r#"{{"source":"police","kind":"arrest","line":2,"epoch":1,"rid":"{rid}","tokens":{{"names_dob":"{t}"}},"fields":{{{fields}}}}}"#
            )
        };
        let cases = [
            rec(r#""age":30,"sex":null,"felony":true,"arrest_date":"2024-02-29""#),
            rec(r#""note":"a \"quoted\" word\n","a\u0041":"\u00e9""#),
            rec(r#""b":1,"a":2,"b":3"#),
            rec(r#""n":-9223372036854775808,"m":9223372036854775807"#),
            rec(r#""n":9223372036854775808"#),
            rec(r#""n":-0"#),
            rec(r#""n":1.0"#),
            rec(r#""n":1e2"#),
            rec(r#""n":[1,2]"#),
            rec(r#""n":{"x":[{}]}"#),
            rec(r#""n":"2023-02-29""#),
            rec("").replace(r#""line":2"#, r#""line":2.5"#),
            rec("").replace(r#""line":2"#, r#""line":2,"extra":1"#),
            rec("").replace(r#""line":2"#, r#""line":2,"seq":9,"deleted":true"#),
            rec("").replace(r#""kind":"arrest""#, r#""kind":"ar\u0072est""#),
            rec("").replace("names_dob", r"names\u005fdob"),
            rec("").replace(&rid, &rid.to_uppercase()),
            rec("").replace(&t, &t.replace("1:", "01:")),
            rec("").replace(r#""tokens":{"#, r#""tokens":{"x":1,"#),
        ];
        let mut encoded = 0;
        for case in &cases {
            let text = format!("[{case},{}]", rec(r#""age":1"#));
            let want = parsed_then_encoded(text.as_bytes());
            encoded += usize::from(want.is_some());
            assert_eq!(encode_json_array("police", "b-1", text.as_bytes()), want, "{case}");
        }
        assert_eq!(encoded, 8);
        assert_eq!(encode_json_array("police", "b-1", b"[]"), parsed_then_encoded(b"[]"));
        assert_eq!(encode_json_array("police", "b-1", b"[1"), None);
    }

    proptest! {
        #[test]
        fn json_text_and_parsed_records_give_the_same_bytes(records in prop::collection::vec(record(), 0..6)) {
            let text = serde_json::to_vec(&records).unwrap();
            prop_assert_eq!(encode_json_array("police", "b-1", &text), parsed_then_encoded(&text));
        }

        #[test]
        fn encode_then_decode_gives_the_records_back_and_so_does_json(
            id in "[!-~]{1,20}",
            records in prop::collection::vec(record(), 0..12),
        ) {
            let b = Batch { source: "police".into(), batch_id: id, records };
            let bin = encode_batch(&b).unwrap();
            let back = decode(&bin).unwrap();
            prop_assert_eq!(&back, &b);
            let json: Batch = serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap();
            prop_assert_eq!(&back, &json);
            // One encoding per batch: encoding what was decoded gives the same bytes.
            prop_assert_eq!(encode_batch(&back).unwrap(), bin);
        }

        #[test]
        fn a_view_re_encodes_the_records_it_keeps_as_encode_does(
            records in prop::collection::vec(record(), 0..8),
            keep in prop::collection::vec(any::<bool>(), 8),
        ) {
            let b = Batch { source: "police".into(), batch_id: "b-1".into(), records };
            let bin = encode_batch(&b).unwrap();
            let view = decode_view(&bin).unwrap();
            prop_assert_eq!(&view.encode_kept(&vec![true; b.records.len()]), &bin);
            let keep = &keep[..b.records.len()];
            let kept = b.records.iter().zip(keep).filter(|(_, k)| **k).map(|(r, _)| r);
            prop_assert_eq!(view.encode_kept(keep), encode("police", "b-1", kept).unwrap());
        }

        #[test]
        fn date_text_is_the_formatted_date(d in MIN_DAY..=MAX_DAY) {
            let (y, m, day) = crate::days::civil_from_days(d as i32);
            let text = date_text(d as i32);
            prop_assert_eq!(text.as_str(), format!("{y:04}-{m:02}-{day:02}"));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut with_magic = MAGIC.to_vec();
            with_magic.push(VERSION);
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&bytes);
            let _ = decode(&with_magic);
        }

        #[test]
        fn a_damaged_batch_decodes_or_fails_without_panicking(
            records in prop::collection::vec(record(), 1..4),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let b = Batch { source: "police".into(), batch_id: "b-1".into(), records };
            let mut bin = encode_batch(&b).unwrap();
            for (at, byte) in flips {
                let i = at.index(bin.len());
                bin[i] = byte;
            }
            if let Ok(back) = decode(&bin) {
                // Whatever decodes has a binary form, which decodes to it again.
                prop_assert_eq!(decode(&encode_batch(&back).unwrap()).unwrap(), back);
            }
        }
    }
}
