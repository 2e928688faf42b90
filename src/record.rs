//! The pseudonymized record: the only form of a record that leaves an agency (JSON lines on disk, batches on the wire).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A pseudonymized record. It carries no identity value: tokens are keyed
/// hashes, the date of birth has become `fields.age`, free text is gone
/// unless the schema marks it safe, and the agency's record id is a keyed
/// hash (`rid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudoRecord {
    /// The agency that holds the record.
    pub source: String,
    /// The record kind (a key of the schema's `kinds`).
    pub kind: String,
    /// The line of the record in the agency's input file.
    pub line: u64,
    /// The key epoch the tokens were made under.
    pub epoch: u32,
    /// Keyed hash of (source, kind, agency record id), 32 hex digits.
    pub rid: String,
    /// The source's version of the record: of two records with one `rid`,
    /// the steward keeps the higher `seq` (see [`record_seq`]); 0 from
    /// sources and stores older than versions.
    #[serde(default)]
    pub seq: u64,
    /// A tombstone: the record `rid` was removed at its source (sealed,
    /// expunged, absent from a whole-table export). A tombstone carries no
    /// tokens and no fields.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Scheme name → `<epoch>:<32 hex digits>`; a scheme whose fields the record lacks is absent.
    pub tokens: BTreeMap<String, String>,
    /// Released fields: `age`, released identity categories (`sex`), and the
    /// kind's fields (dates as `YYYY-MM-DD`, enums as their value, bools,
    /// integers, safe strings); `null` when missing.
    pub fields: BTreeMap<String, serde_json::Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The version a source gives the record on line `line` of the export whose
/// first outbox batch had sequence `file_base`: exports ingested later win,
/// and within one export a later line wins. The outbox sequence is per
/// source and never reused, so versions of one source never tie.
pub fn record_seq(file_base: u64, line: u64) -> u64 {
    file_base.saturating_mul(1 << 32) | line.min(u64::from(u32::MAX))
}

/// Why a record does not fit the program's schema. Names the kind and the
/// field, never a value; a name that is not a plain identifier is not
/// echoed either (a misconfigured source could have put a value there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    #[error("kind {0} is not a record kind of the program's schema")]
    UnknownKind(Shown),
    #[error("token scheme {0} is not a scheme of the program's schema")]
    UnknownScheme(Shown),
    #[error("field {0} is an identity field of the schema: identity values never leave an agency")]
    Identity(Shown),
    #[error("field {0} is the agency's record id: it leaves an agency only as the keyed hash `rid`")]
    RecordId(Shown),
    #[error("field {0} is free text the schema does not mark safe: it never leaves an agency")]
    Withheld(Shown),
    #[error("field {field} is not a released field of kind {kind}")]
    Unknown { kind: Shown, field: Shown },
    #[error("field {field} must be {expected}")]
    Type { field: Shown, expected: &'static str },
    #[error("field {0} is required by the schema but missing")]
    Missing(Shown),
    #[error("a tombstone (deleted) carries no tokens and no fields")]
    Tombstone,
}

/// A kind, field or scheme name as an error may show it: itself when it is
/// a plain identifier (ASCII letters, digits, `_`, `-`, at most 64 bytes),
/// else only its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    pub fn of(name: &str) -> Shown {
        let plain = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        Shown(if plain {
            format!("`{name}`")
        } else {
            format!("(a name of {} bytes that is not an identifier)", name.len())
        })
    }
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest released string value (a safe string field) accepted, in bytes.
pub const MAX_RELEASED_STRING_BYTES: usize = crate::ingest::MAX_FIELD_BYTES;

impl PseudoRecord {
    /// Check the record against the program's schema, as the steward does
    /// before storing it: a known kind; tokens of known schemes only; in
    /// `fields`, only what a source's pseudonymizer releases — `age`, the
    /// identity categories marked `release`, and the kind's released fields
    /// other than the record id — each of its declared type (a known enum
    /// value, a real date, an integer within bounds, a string not too long)
    /// or `null` when not required. Anything else, and above all an identity
    /// field, refuses the record. Token and `rid` syntax are checked by the
    /// caller (they depend on the batch's epoch).
    pub fn check(&self, schema: &crate::schema::Schema) -> Result<(), RecordProblem> {
        use serde_json::Value;
        let unknown_scheme = self.tokens.keys().find(|name| schema.scheme_index(name).is_none());
        let fields = self.fields.iter().map(|(name, value)| {
            let v = match value {
                Value::Null => FieldRef::Null,
                Value::Bool(b) => FieldRef::Bool(*b),
                Value::Number(n) => n.as_i64().map_or(FieldRef::OtherNumber, FieldRef::Int),
                Value::String(s) => FieldRef::Str(s),
                Value::Array(_) | Value::Object(_) => FieldRef::Composite,
            };
            (name.as_str(), v)
        });
        let parts = RecordParts {
            kind: &self.kind,
            deleted: self.deleted,
            has_tokens: !self.tokens.is_empty(),
            unknown_scheme: unknown_scheme.map(String::as_str),
        };
        check_parts(schema, parts, fields, |name| self.fields.contains_key(name))
    }
}

/// A field value as the schema check sees it, whichever form the record came in.
#[derive(Clone, Copy)]
pub enum FieldRef<'v> {
    Null,
    Bool(bool),
    /// A number that is a whole number of 64 bits.
    Int(i64),
    /// Any other number.
    OtherNumber,
    Str(&'v str),
    /// A day number (days since 1970-01-01, years 0000 to 9999): the string `YYYY-MM-DD`.
    Date(i32),
    /// An array or an object.
    Composite,
}

impl FieldRef<'_> {
    /// The string the value is, if it is one (a date written out in `buf`).
    fn text<'s>(&'s self, buf: &'s mut [u8; 10]) -> Option<&'s str> {
        match self {
            FieldRef::Str(s) => Some(s),
            FieldRef::Date(d) => {
                *buf = crate::days::iso_date_bytes(*d);
                std::str::from_utf8(buf).ok()
            }
            _ => None,
        }
    }
}

/// What [`check_parts`] needs of a record besides its fields.
pub struct RecordParts<'r> {
    pub kind: &'r str,
    pub deleted: bool,
    pub has_tokens: bool,
    /// The first token scheme (in name order) the schema does not know.
    pub unknown_scheme: Option<&'r str>,
}

/// The check of [`PseudoRecord::check`] on a record's parts: `fields` in
/// ascending name order, each once; `has_field` says whether a name is
/// among them. Both record forms (a JSON map, a binary batch) are checked by
/// this one function, so they are refused alike, with the same words.
pub fn check_parts<'v>(
    schema: &crate::schema::Schema,
    parts: RecordParts<'_>,
    fields: impl IntoIterator<Item = (&'v str, FieldRef<'v>)>,
    has_field: impl Fn(&str) -> bool,
) -> Result<(), RecordProblem> {
    use crate::schema::FieldType;
    let kind = schema.kind(parts.kind).ok_or_else(|| RecordProblem::UnknownKind(Shown::of(parts.kind)))?;
    let mut fields = fields.into_iter().peekable();
    if parts.deleted {
        return if !parts.has_tokens && fields.peek().is_none() { Ok(()) } else { Err(RecordProblem::Tombstone) };
    }
    if let Some(name) = parts.unknown_scheme {
        return Err(RecordProblem::UnknownScheme(Shown::of(name)));
    }
    for (name, value) in fields {
        let ty = |expected: &'static str| RecordProblem::Type { field: Shown::of(name), expected };
        if name == "age" {
            let max = i64::from(crate::ingest::MAX_AGE_YEARS);
            match value {
                FieldRef::Null => {}
                FieldRef::Int(a) if (0..=max).contains(&a) => {}
                _ => return Err(ty("null or a whole number of years from 0 to 120")),
            }
            continue;
        }
        if let Some(f) = schema.identity.iter().find(|f| f.name == name) {
            if !f.release {
                return Err(RecordProblem::Identity(Shown::of(name)));
            }
            let ok = match value {
                FieldRef::Null => true,
                FieldRef::Str(s) => f.norm == crate::normalize::NormKind::Sex && matches!(s, "m" | "f" | "x"),
                _ => false,
            };
            if !ok {
                return Err(ty("null or a normalized sex code (m, f, x)"));
            }
            continue;
        }
        let Some(i) = kind.field_index(name) else {
            return Err(RecordProblem::Unknown { kind: Shown::of(&kind.name), field: Shown::of(name) });
        };
        let field = &kind.fields[i];
        if i == kind.record_id {
            return Err(RecordProblem::RecordId(Shown::of(name)));
        }
        if !field.released() {
            return Err(RecordProblem::Withheld(Shown::of(name)));
        }
        if matches!(value, FieldRef::Null) {
            if field.required {
                return Err(RecordProblem::Missing(Shown::of(name)));
            }
            continue;
        }
        let mut buf = [0u8; 10];
        match (&field.ty, value) {
            (FieldType::String { .. }, FieldRef::Date(_)) => {}
            (FieldType::String { .. }, FieldRef::Str(s)) if s.len() <= MAX_RELEASED_STRING_BYTES => {}
            (FieldType::String { .. }, _) => return Err(ty("a string of at most 64 KiB")),
            (FieldType::Date, FieldRef::Date(_)) => {}
            (FieldType::Date, FieldRef::Str(s)) if is_iso_date(s) => {}
            (FieldType::Date, _) => return Err(ty("a date written YYYY-MM-DD")),
            (FieldType::Enum(e), v) if v.text(&mut buf).is_some_and(|s| e.values.iter().any(|x| x == s)) => {}
            (FieldType::Enum(_), _) => return Err(ty("one of the values the schema lists for it")),
            (FieldType::Bool, FieldRef::Bool(_)) => {}
            (FieldType::Bool, _) => return Err(ty("true or false")),
            (FieldType::Integer { min, max }, FieldRef::Int(v))
                if min.map_or(true, |m| v >= m) && max.map_or(true, |m| v <= m) => {}
            (FieldType::Integer { .. }, _) => return Err(ty("a whole number within the schema's bounds")),
        }
    }
    for (i, field) in kind.fields.iter().enumerate() {
        if i != kind.record_id && field.released() && field.required && !has_field(&field.name) {
            return Err(RecordProblem::Missing(Shown::of(&field.name)));
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` naming a real calendar day.
pub(crate) fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else { return false };
    let Ok(y) = i32::try_from(y) else { return false };
    (1..=12).contains(&m) && d >= 1 && crate::days::civil_from_days(crate::days::days_from_civil(y, m, d)) == (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use serde_json::json;

    fn arrest() -> PseudoRecord {
        PseudoRecord {
            source: "police".into(),
            kind: "arrest".into(),
            line: 2,
            epoch: 1,
            rid: "ab".repeat(16),
            seq: 0,
            deleted: false,
            tokens: [("names_dob".to_string(), format!("1:{}", "cd".repeat(16)))].into(),
            fields: [
                ("age".to_string(), json!(34)),
                ("sex".to_string(), json!("f")),
                ("arrest_date".to_string(), json!("2024-02-29")),
                ("warrant".to_string(), json!(false)),
                ("violent".to_string(), json!(false)),
                ("felony".to_string(), json!(true)),
            ]
            .into(),
        }
    }

    #[test]
    fn what_a_pseudonymizer_writes_passes() {
        let schema = Schema::default_schema().unwrap();
        arrest().check(&schema).unwrap();
        let mut r = arrest();
        r.fields.insert("age".into(), json!(null));
        r.fields.insert("sex".into(), json!(null));
        r.check(&schema).unwrap();
    }

    #[test]
    fn identity_and_undeclared_fields_are_refused_by_name_only() {
        let schema = Schema::default_schema().unwrap();
        let refused = |key: &str, value: serde_json::Value| {
            let mut r = arrest();
            r.fields.insert(key.to_string(), value);
            let e = r.check(&schema).unwrap_err();
            let msg = e.to_string();
            assert!(!msg.contains("Zelda") && !msg.contains("1980"), "{msg}");
            e
        };
        for f in ["family_name", "given_name", "dob", "state_id"] {
            assert!(matches!(refused(f, json!("Zelda 1980-03-14")), RecordProblem::Identity(_)), "{f}");
        }
        assert!(matches!(refused("arrest_id", json!("A-1")), RecordProblem::RecordId(_)));
        let e = refused("ssn", json!("123-45-6789"));
        assert_eq!(e.to_string(), "field `ssn` is not a released field of kind `arrest`");
        let e = refused("Zelda Quixote 1980-03-14", json!(1));
        assert!(e.to_string().contains("not an identifier"), "{e}");
        assert!(matches!(refused("age", json!(-3)), RecordProblem::Type { .. }));
        assert!(matches!(refused("age", json!("34")), RecordProblem::Type { .. }));
        assert!(matches!(refused("sex", json!("Female")), RecordProblem::Type { .. }));
        assert!(matches!(refused("warrant", json!("yes")), RecordProblem::Type { .. }));
        assert!(matches!(refused("arrest_date", json!("2023-02-29")), RecordProblem::Type { .. }));
        assert!(matches!(refused("arrest_date", json!("14/03/1980")), RecordProblem::Type { .. }));
        assert!(matches!(refused("felony", json!(null)), RecordProblem::Missing(_)));
    }

    #[test]
    fn unknown_kinds_schemes_and_missing_fields_are_refused() {
        let schema = Schema::default_schema().unwrap();
        let mut r = arrest();
        r.kind = "medical_history".into();
        assert!(matches!(r.check(&schema), Err(RecordProblem::UnknownKind(_))));
        let mut r = arrest();
        r.tokens.insert("ssn_token".into(), format!("1:{}", "ee".repeat(16)));
        assert!(matches!(r.check(&schema), Err(RecordProblem::UnknownScheme(_))));
        let mut r = arrest();
        r.fields.remove("violent");
        assert_eq!(r.check(&schema), Err(RecordProblem::Missing(Shown::of("violent"))));
        // An enum takes the schema's spelling only; free text not marked safe is refused.
        let mut r = arrest();
        r.kind = "referral".into();
        r.fields =
            [("referral_date".to_string(), json!("2024-01-02")), ("officer_notes".to_string(), json!("lives on 5th"))]
                .into();
        assert!(matches!(r.check(&schema), Err(RecordProblem::Withheld(_))), "{:?}", r.check(&schema));
    }
}
