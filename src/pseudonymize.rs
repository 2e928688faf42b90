//! Turns an accepted row into a pseudonymized record: tokens under the epoch key, identity dropped, date of birth → age at the event, unsafe free text withheld.
//!
//! Pure, in two forms. [`Pseudonymizer::write`] writes a JSON line into a
//! byte buffer, by hand (not through a map) because this is the hot path of
//! `divert pseudonymize`; a test checks every line parses as a
//! [`crate::record::PseudoRecord`]. [`Pseudonymizer::append`] adds the same
//! record to a batch in the binary form ([`crate::wire::binary`]), which a
//! source's outbox keeps; a test checks both forms give the same records.

use std::io::Write;

use crate::ingest::{age_at, Row, Value};
use crate::schema::{FieldType, Kind, Schema};
use crate::token::{Scratch, Token, Tokenizer};
use crate::wire::binary::{Cell, Encoder, RecordHead};

/// Where a released field's value comes from.
#[derive(Clone, Copy)]
enum Slot {
    Age,
    /// An identity field released as it is (its schema position).
    Identity(usize),
    /// A field of the kind (its position).
    Field(usize),
}

/// What [`Pseudonymizer::append`] needs of the binary form, worked out once.
struct BinaryPlan<'a> {
    /// A batch's string table before its first record: every name and enum value interned.
    template: Encoder<'a>,
    kind: u64,
    source: u64,
    /// The schema position of each scheme, in ascending name order (the batch's declared schemes).
    schemes: Vec<usize>,
    /// Where each field's value comes from, in ascending name order (the batch's declared fields).
    fields: Vec<Slot>,
    /// Per kind field, per enum value: its table position (its text when it spells a date).
    enums: Vec<Vec<Cell<'a>>>,
}

impl<'a> BinaryPlan<'a> {
    fn new(schema: &'a Schema, kind: &'a Kind, source: &'a str) -> BinaryPlan<'a> {
        let mut t = Encoder::new();
        let kind_at = t.intern(&kind.name);
        let source_at = t.intern(source);
        let mut schemes: Vec<(&str, usize)> = schema.schemes.iter().enumerate().map(|(i, s)| (&*s.name, i)).collect();
        schemes.sort();
        // One plan entry per declared scheme (names are distinct: the schema checks it).
        schemes.dedup_by(|a, b| a.0 == b.0);
        t.declare_schemes(schemes.iter().map(|&(name, _)| name));
        let schemes = schemes.into_iter().map(|(_, i)| i).collect();
        let mut fields: Vec<(&str, Slot)> = vec![("age", Slot::Age)];
        for (i, f) in schema.identity.iter().enumerate() {
            if f.release {
                fields.push((&f.name, Slot::Identity(i)));
            }
        }
        for (i, f) in kind.fields.iter().enumerate() {
            if i != kind.record_id && f.released() {
                fields.push((&f.name, Slot::Field(i)));
            }
        }
        fields.sort_by(|a, b| a.0.cmp(b.0));
        // Declared as the batch's fields: one slot per name, in the declared order.
        fields.dedup_by(|a, b| a.0 == b.0);
        t.declare_fields(fields.iter().map(|&(name, _)| name));
        let fields = fields.into_iter().map(|(_, slot)| slot).collect();
        let enums = kind
            .fields
            .iter()
            .map(|f| match &f.ty {
                FieldType::Enum(e) => e
                    .values
                    .iter()
                    .map(|v| if crate::record::is_iso_date(v) { Cell::Str(v) } else { Cell::Interned(t.intern(v)) })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        BinaryPlan { template: t, kind: kind_at, source: source_at, schemes, fields, enums }
    }
}

/// Days since 1970-01-01 of a date, its year held to 0000-9999 as the JSON form holds it.
fn day_number(d: time::Date) -> i32 {
    crate::days::days_from_civil(d.year().clamp(0, 9999), u32::from(d.month() as u8), u32::from(d.day()))
}

/// Pseudonymizes rows of one kind from one source.
pub struct Pseudonymizer<'a> {
    schema: &'a Schema,
    kind: &'a Kind,
    source: &'a str,
    tokenizer: &'a Tokenizer,
    scratch: Scratch,
    tokens: Vec<Option<Token>>,
    /// `"scheme":"<epoch>:` per scheme, pre-escaped.
    scheme_keys: Vec<Vec<u8>>,
    /// `,"field":` per field, pre-escaped.
    field_keys: Vec<Vec<u8>>,
    /// Each enum field's values as JSON strings, pre-escaped.
    enum_values: Vec<Vec<Vec<u8>>>,
    prefix: Vec<u8>,
    /// Rows written with a token of each scheme.
    scheme_tokens: Vec<u64>,
    /// The export's place in the source's order (see [`crate::record::record_seq`]).
    seq_base: u64,
    binary: BinaryPlan<'a>,
    /// The binary batch [`Pseudonymizer::append`] fills.
    batch: Encoder<'a>,
}

/// Append an unsigned integer in decimal (the hot path avoids `fmt`).
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// `"YYYY-MM-DD"` with quotes.
fn push_date(out: &mut Vec<u8>, d: time::Date) {
    let y = d.year().clamp(0, 9999) as u32;
    let (m, day) = (d.month() as u8, d.day());
    out.extend_from_slice(&[
        b'"',
        b'0' + (y / 1000) as u8,
        b'0' + (y / 100 % 10) as u8,
        b'0' + (y / 10 % 10) as u8,
        b'0' + (y % 10) as u8,
        b'-',
        b'0' + m / 10,
        b'0' + m % 10,
        b'-',
        b'0' + day / 10,
        b'0' + day % 10,
        b'"',
    ]);
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl<'a> Pseudonymizer<'a> {
    pub fn new(schema: &'a Schema, kind: &'a Kind, source: &'a str, tokenizer: &'a Tokenizer) -> Pseudonymizer<'a> {
        let prefix =
            format!("{{\"source\":{},\"kind\":{},\"line\":", json_str(source), json_str(&kind.name)).into_bytes();
        let binary = BinaryPlan::new(schema, kind, source);
        Pseudonymizer {
            schema,
            kind,
            source,
            tokenizer,
            scratch: Scratch::default(),
            tokens: Vec::with_capacity(schema.schemes.len()),
            scheme_keys: schema
                .schemes
                .iter()
                .map(|s| format!("{}:\"{}:", json_str(&s.name), tokenizer.epoch()).into_bytes())
                .collect(),
            field_keys: kind.fields.iter().map(|f| format!(",{}:", json_str(&f.name)).into_bytes()).collect(),
            enum_values: kind
                .fields
                .iter()
                .map(|f| match &f.ty {
                    FieldType::Enum(e) => e.values.iter().map(|v| json_str(v).into_bytes()).collect(),
                    _ => Vec::new(),
                })
                .collect(),
            prefix,
            scheme_tokens: vec![0; schema.schemes.len()],
            seq_base: 0,
            batch: binary.template.clone(),
            binary,
        }
    }

    /// Records written from now on get versions `record_seq(base, line)`: a
    /// source passes its export's first outbox sequence (0 offline).
    pub fn set_seq_base(&mut self, base: u64) {
        self.seq_base = base;
    }

    /// Per scheme (schema order), how many rows written so far carried its token.
    pub fn tokens_per_scheme(&self) -> &[u64] {
        &self.scheme_tokens
    }

    /// Add the record of `row` to the binary batch being filled (see [`Pseudonymizer::take_batch`]).
    pub fn append(&mut self, row: &Row) {
        let rid = self.tokenize(row);
        let plan = &self.binary;
        let head = RecordHead {
            kind: plan.kind,
            source: plan.source,
            line: row.line,
            epoch: self.tokenizer.epoch(),
            seq: crate::record::record_seq(self.seq_base, row.line),
            deleted: false,
        };
        let held = &self.tokens;
        let tokens = plan.schemes.iter().map(|&s| held.get(s).copied().flatten());
        let age = self.age(row).map_or(Cell::Null, |a| Cell::Int(i64::from(a)));
        let fields = plan.fields.iter().map(|&slot| {
            let cell = match slot {
                Slot::Age => age,
                Slot::Identity(i) => row.identity.get(i).map_or(Cell::Null, Cell::Str),
                Slot::Field(i) => match row.values.get(i).and_then(Option::as_ref) {
                    None => Cell::Null,
                    Some(Value::Str(s)) => Cell::Str(s),
                    Some(Value::Date(d)) => Cell::Date(day_number(*d)),
                    Some(Value::Enum(e)) => {
                        plan.enums.get(i).and_then(|v| v.get(usize::from(*e))).copied().unwrap_or(Cell::Null)
                    }
                    Some(Value::Bool(b)) => Cell::Bool(*b),
                    Some(Value::Int(n)) => Cell::Int(*n),
                },
            };
            Some(cell)
        });
        self.batch.push(head, &rid, tokens, fields);
    }

    /// The row's tokens into `self.tokens` (counted per scheme) and its rid.
    fn tokenize(&mut self, row: &Row) -> Token {
        self.tokenizer.tokens(&row.identity, self.source, &mut self.scratch, &mut self.tokens);
        for (tok, count) in self.tokens.iter().zip(&mut self.scheme_tokens) {
            *count += u64::from(tok.is_some());
        }
        self.tokenizer.record_id(self.source, &self.kind.name, &row.record_id)
    }

    /// Age at the event, when the row has both dates.
    fn age(&self, row: &Row) -> Option<i32> {
        match (row.birth_date, row.event_date(self.kind)) {
            (Some(dob), Some(at)) => Some(age_at(dob, at)),
            _ => None,
        }
    }

    /// Records appended since the last [`Pseudonymizer::take_batch`].
    pub fn pending(&self) -> u32 {
        self.batch.len() as u32
    }

    /// The records appended since the last take, as a records section (what
    /// a source's outbox keeps); the next batch starts empty.
    pub fn take_batch(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.batch, self.binary.template.clone()).finish_section()
    }

    /// Append one JSON line (with its newline) for `row` to `out`.
    pub fn write(&mut self, row: &Row, out: &mut Vec<u8>) {
        let epoch = self.tokenizer.epoch();
        let rid = self.tokenize(row);

        out.extend_from_slice(&self.prefix);
        push_u64(out, row.line);
        out.extend_from_slice(b",\"epoch\":");
        push_u64(out, u64::from(epoch));
        out.extend_from_slice(b",\"rid\":\"");
        crate::hex::encode_into(&rid, out);
        out.extend_from_slice(b"\",\"seq\":");
        push_u64(out, crate::record::record_seq(self.seq_base, row.line));
        out.extend_from_slice(b",\"tokens\":{");
        let mut first = true;
        for (key, tok) in self.scheme_keys.iter().zip(&self.tokens) {
            if let Some(t) = tok {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(key);
                crate::hex::encode_into(t, out);
                out.push(b'"');
            }
        }
        out.extend_from_slice(b"},\"fields\":{\"age\":");
        match self.age(row) {
            Some(a) => push_i64(out, i64::from(a)),
            None => out.extend_from_slice(b"null"),
        }
        for (i, f) in self.schema.identity.iter().enumerate() {
            if f.release {
                let _ = write!(out, ",{}:", json_str(&f.name));
                match row.identity.get(i) {
                    Some(v) => {
                        let _ = serde_json::to_writer(&mut *out, v);
                    }
                    None => out.extend_from_slice(b"null"),
                }
            }
        }
        for (i, f) in self.kind.fields.iter().enumerate() {
            if i == self.kind.record_id || !f.released() {
                continue;
            }
            out.extend_from_slice(&self.field_keys[i]);
            match (&row.values[i], &f.ty) {
                (None, _) => out.extend_from_slice(b"null"),
                (Some(Value::Str(s)), _) => {
                    let _ = serde_json::to_writer(&mut *out, s);
                }
                (Some(Value::Date(d)), _) => push_date(out, *d),
                (Some(Value::Enum(e)), _) => match self.enum_values[i].get(usize::from(*e)) {
                    Some(v) => out.extend_from_slice(v),
                    None => out.extend_from_slice(b"null"),
                },
                (Some(Value::Bool(b)), _) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                (Some(Value::Int(n)), _) => push_i64(out, *n),
            }
        }
        out.extend_from_slice(b"}}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Format, Outcome, Reader};
    use crate::keys::EpochKey;
    use crate::record::PseudoRecord;

    #[test]
    fn output_parses_and_carries_no_identity() {
        let schema = Schema::default_schema().unwrap();
        let kind = schema.kind("referral").unwrap();
        let key = EpochKey::from_bytes(1, &[5u8; 32]).unwrap();
        let tok = Tokenizer::new(&schema, &key).unwrap();
        let input = "referral_id,given_name,family_name,dob,sex,state_id,referral_date,referral_type,arm,race,officer_notes\n\
                     R-77,Zelda,Quixote-Brandt,1980-03-14,F,418257390,2019-03-13,social contact,Greenlight,Latino,\"told us her name was Zelda, lives on 5th\"\n";
        let mut reader = Reader::new(&schema, kind, Format::Csv, input.as_bytes()).unwrap();
        let mut row = crate::ingest::Row::new(&schema, kind);
        let mut issues = Vec::new();
        assert_eq!(reader.next_row(&mut row, &mut issues).unwrap(), Some(Outcome::Accepted), "{issues:?}");
        let mut p = Pseudonymizer::new(&schema, kind, "police", &tok);
        let mut out = Vec::new();
        p.write(&row, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        for secret in ["Zelda", "zelda", "Quixote", "quixote", "1980", "418257390", "R-77", "5th"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        let rec: PseudoRecord = serde_json::from_slice(&out).unwrap();
        assert_eq!((rec.source.as_str(), rec.kind.as_str(), rec.line, rec.epoch), ("police", "referral", 2, 1));
        assert_eq!(rec.fields["age"], 38);
        assert_eq!(rec.fields["sex"], "f");
        assert_eq!(rec.fields["arm"], "diversion");
        assert_eq!(rec.fields["referral_type"], "social_contact");
        assert_eq!(rec.fields["race_ethnicity"], "hispanic");
        assert_eq!(rec.fields["referral_date"], "2019-03-13");
        assert!(rec.fields["screening"].is_null());
        assert!(!rec.fields.contains_key("officer_notes"), "free text withheld");
        assert!(!rec.fields.contains_key("referral_id"), "record id only as rid");
        // Every scheme whose fields the row has (no address, postal code, city, e-mail, phone or agency number here).
        let absent = ["address", "postal_code", "city", "email", "phone", "agency_person_id"];
        let fed = schema
            .schemes
            .iter()
            .filter(|s| s.parts.iter().all(|p| !absent.contains(&schema.identity[p.field].name.as_str())))
            .count();
        assert_eq!(rec.tokens.len(), fed, "every scheme with its fields has a token");
        assert_eq!(p.tokens_per_scheme().iter().sum::<u64>(), fed as u64);
        assert!(rec.tokens.values().all(|t| t.starts_with("1:") && t.len() == 34));

        // The binary form: the same record, and no identity value in its bytes either.
        p.append(&row);
        assert_eq!(p.pending(), 1);
        let section = p.take_batch();
        assert_eq!(p.pending(), 0);
        for secret in ["Zelda", "zelda", "Quixote", "quixote", "1980", "418257390", "R-77", "5th"] {
            assert!(!section.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} leaked");
        }
        let view = crate::wire::binary::decode_section(&section).unwrap();
        assert_eq!(view.to_batch().records, vec![rec]);
    }

    /// Every kind of the synthetic program, every accepted row: the binary
    /// batch decodes to exactly the records the JSON lines parse to, batch
    /// after batch (the string table starts afresh each time).
    #[test]
    fn binary_and_json_forms_give_the_same_records() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(4, &[7u8; 32]).unwrap();
        let tok = Tokenizer::new(&schema, &key).unwrap();
        let params = crate::synth::params::Params::defaults().unwrap();
        let data = crate::synth::generate(&params, 60, 11);
        let mut kinds = 0;
        for &k in crate::synth::model::Kind::ALL {
            let kind = schema.kind(k.as_str()).unwrap();
            let mut csv = Vec::new();
            data.write_csv(k, &mut csv, |_, _| {}).unwrap();
            let mut reader = Reader::new(&schema, kind, Format::Csv, csv.as_slice()).unwrap();
            let mut row = crate::ingest::Row::new(&schema, kind);
            let mut issues = Vec::new();
            let mut p = Pseudonymizer::new(&schema, kind, "agency", &tok);
            p.set_seq_base(1 << 20);
            let (mut json, mut binary) = (Vec::new(), Vec::new());
            let mut lines = Vec::new();
            while let Some(outcome) = reader.next_row(&mut row, &mut issues).unwrap() {
                if outcome == Outcome::Accepted {
                    p.write(&row, &mut lines);
                    p.append(&row);
                    if p.pending() == 25 {
                        binary.push(p.take_batch());
                    }
                }
            }
            binary.push(p.take_batch());
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                json.push(serde_json::from_slice::<PseudoRecord>(line).unwrap());
            }
            let decoded: Vec<PseudoRecord> = binary
                .iter()
                .flat_map(|s| crate::wire::binary::decode_section(s).unwrap().to_batch().records)
                .collect();
            assert!(!json.is_empty(), "{}", kind.name);
            assert_eq!(decoded, json, "{}", kind.name);
            kinds += 1;
        }
        assert_eq!(kinds, 11);
    }
}

/// What one export gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub rows_read: u64,
    pub accepted: u64,
    pub quarantined: u64,
    /// Optional identity values that were unusable and left out of accepted rows.
    pub values_dropped: u64,
}

/// Read a whole export, write one JSON line per accepted row to `out`, and
/// hand every issue to `on_issue` (for the quarantine file).
pub fn pseudonymize_stream<R: std::io::Read, W: std::io::Write>(
    p: &mut Pseudonymizer<'_>,
    format: crate::ingest::Format,
    input: R,
    mut out: W,
    mut on_issue: impl FnMut(&crate::ingest::Issue) -> std::io::Result<()>,
) -> Result<Summary, StreamError> {
    use crate::ingest::{Action, Outcome, Reader};
    let mut reader = Reader::new(p.schema, p.kind, format, input)?;
    let mut row = Row::new(p.schema, p.kind);
    let mut issues = Vec::new();
    let mut buf = Vec::with_capacity(1 << 17);
    let mut s = Summary::default();
    while let Some(outcome) = reader.next_row(&mut row, &mut issues)? {
        s.rows_read += 1;
        for i in issues.drain(..) {
            if i.action == Action::ValueDropped {
                s.values_dropped += 1;
            }
            on_issue(&i).map_err(StreamError::Quarantine)?;
        }
        match outcome {
            Outcome::Accepted => {
                s.accepted += 1;
                p.write(&row, &mut buf);
                if buf.len() >= 1 << 16 {
                    out.write_all(&buf).map_err(StreamError::Output)?;
                    buf.clear();
                }
            }
            Outcome::Quarantined => s.quarantined += 1,
        }
    }
    out.write_all(&buf).map_err(StreamError::Output)?;
    out.flush().map_err(StreamError::Output)?;
    Ok(s)
}

/// Why [`pseudonymize_stream`] stopped: the export is refused, or writing
/// its output or its quarantine rows failed (a reader of stdout gone away:
/// the export itself was fine). Never a value of the export.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Input(#[from] crate::ingest::IngestError),
    #[error("writing the pseudonymized records: {0}")]
    Output(std::io::Error),
    #[error("writing the quarantine file: {0}")]
    Quarantine(std::io::Error),
}
