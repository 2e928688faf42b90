//! Turns an accepted row into a pseudonymized record: tokens under the epoch key, identity dropped, date of birth → age at the event, unsafe free text withheld.
//!
//! Pure: writes JSON into a byte buffer. The JSON is written by hand (not
//! through a map) because this is the hot path of `divert pseudonymize`; a
//! test checks every line parses as a [`crate::record::PseudoRecord`].

use std::io::Write;

use crate::ingest::{age_at, Row, Value};
use crate::schema::{FieldType, Kind, Schema};
use crate::token::{Scratch, Token, Tokenizer};

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

    /// Append one JSON line (with its newline) for `row` to `out`.
    pub fn write(&mut self, row: &Row, out: &mut Vec<u8>) {
        let epoch = self.tokenizer.epoch();
        self.tokenizer.tokens(&row.identity, &mut self.scratch, &mut self.tokens);
        let rid = self.tokenizer.record_id(self.source, &self.kind.name, &row.record_id);

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
        for ((key, tok), count) in self.scheme_keys.iter().zip(&self.tokens).zip(&mut self.scheme_tokens) {
            if let Some(t) = tok {
                *count += 1;
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
        let age = match (row.birth_date, row.event_date(self.kind)) {
            (Some(dob), Some(at)) => Some(age_at(dob, at)),
            _ => None,
        };
        match age {
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
                     R-77,Zelda,Quixote-Brandt,1980-03-14,F,123456789,2019-03-13,social contact,Greenlight,Latino,\"told us her name was Zelda, lives on 5th\"\n";
        let mut reader = Reader::new(&schema, kind, Format::Csv, input.as_bytes()).unwrap();
        let mut row = crate::ingest::Row::new(&schema, kind);
        let mut issues = Vec::new();
        assert_eq!(reader.next_row(&mut row, &mut issues).unwrap(), Some(Outcome::Accepted), "{issues:?}");
        let mut p = Pseudonymizer::new(&schema, kind, "police", &tok);
        let mut out = Vec::new();
        p.write(&row, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        for secret in ["Zelda", "zelda", "Quixote", "quixote", "1980", "123456789", "R-77", "5th"] {
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
        // Every scheme whose fields the row has (no address, postal code, city, e-mail or phone here).
        let absent = ["address", "postal_code", "city", "email", "phone"];
        let fed = schema
            .schemes
            .iter()
            .filter(|s| s.parts.iter().all(|p| !absent.contains(&schema.identity[p.field].name.as_str())))
            .count();
        assert_eq!(rec.tokens.len(), fed, "every scheme with its fields has a token");
        assert_eq!(p.tokens_per_scheme().iter().sum::<u64>(), fed as u64);
        assert!(rec.tokens.values().all(|t| t.starts_with("1:") && t.len() == 34));
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
