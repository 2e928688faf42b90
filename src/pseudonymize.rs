//! Turns an accepted row into a pseudonymized record: tokens under the epoch key, identity dropped, date of birth → age at the event, unsafe free text withheld.
//!
//! Pure: writes JSON into a byte buffer. The JSON is written by hand (not
//! through a map) because this is the hot path of `divert pseudonymize`; a
//! test checks every line parses as a [`crate::record::PseudoRecord`].

use std::io::Write;

use crate::ingest::{age_at, Row, Value};
use crate::keys::hex;
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
    /// Scheme names and field names pre-escaped as JSON keys.
    scheme_keys: Vec<String>,
    field_keys: Vec<String>,
    prefix: Vec<u8>,
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
            scheme_keys: schema.schemes.iter().map(|s| json_str(&s.name)).collect(),
            field_keys: kind.fields.iter().map(|f| json_str(&f.name)).collect(),
            prefix,
        }
    }

    /// Append one JSON line (with its newline) for `row` to `out`.
    pub fn write(&mut self, row: &Row, out: &mut Vec<u8>) {
        let epoch = self.tokenizer.epoch();
        self.tokenizer.tokens(&row.identity, &mut self.scratch, &mut self.tokens);
        let rid = self.tokenizer.record_id(self.source, &self.kind.name, &row.record_id);

        out.extend_from_slice(&self.prefix);
        // Writing into a Vec cannot fail; `write!` results are ignored for that reason.
        let _ = write!(out, "{},\"epoch\":{epoch},\"rid\":\"{}\",\"tokens\":{{", row.line, hex(&rid));
        let mut first = true;
        for (key, tok) in self.scheme_keys.iter().zip(&self.tokens) {
            if let Some(t) = tok {
                if !first {
                    out.push(b',');
                }
                first = false;
                let _ = write!(out, "{key}:\"{epoch}:{}\"", hex(t));
            }
        }
        out.extend_from_slice(b"},\"fields\":{\"age\":");
        let age = match (row.birth_date, row.event_date(self.kind)) {
            (Some(dob), Some(at)) => Some(age_at(dob, at)),
            _ => None,
        };
        match age {
            Some(a) => {
                let _ = write!(out, "{a}");
            }
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
            out.push(b',');
            out.extend_from_slice(self.field_keys[i].as_bytes());
            out.push(b':');
            match (&row.values[i], &f.ty) {
                (None, _) => out.extend_from_slice(b"null"),
                (Some(Value::Str(s)), _) => {
                    let _ = serde_json::to_writer(&mut *out, s);
                }
                (Some(Value::Date(d)), _) => {
                    let _ = write!(out, "\"{:04}-{:02}-{:02}\"", d.year(), d.month() as u8, d.day());
                }
                (Some(Value::Enum(e)), FieldType::Enum(et)) => {
                    let v = et.values.get(usize::from(*e)).map_or("", String::as_str);
                    let _ = serde_json::to_writer(&mut *out, v);
                }
                (Some(Value::Enum(_)), _) => out.extend_from_slice(b"null"),
                (Some(Value::Bool(b)), _) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                (Some(Value::Int(n)), _) => {
                    let _ = write!(out, "{n}");
                }
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
        assert_eq!(rec.tokens.len(), schema.schemes.len(), "every scheme has its fields");
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
) -> Result<Summary, crate::ingest::IngestError> {
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
            on_issue(&i)?;
        }
        match outcome {
            Outcome::Accepted => {
                s.accepted += 1;
                p.write(&row, &mut buf);
                if buf.len() >= 1 << 16 {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            Outcome::Quarantined => s.quarantined += 1,
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(s)
}
