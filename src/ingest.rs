//! Validated ingest of agency exports (CSV and JSON lines): header mapping, typed field checks, identity normalization, quarantine reasons that never carry a value.
//!
//! Reads from any `io::Read`; writes nothing. A row either becomes a [`Row`]
//! or a list of [`Issue`]s (line, field, reason). A problem with the file as
//! a whole (no header, a required column missing, an unbalanced quote) is an
//! [`IngestError`] and nothing of the file is accepted.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use time::Date;

use crate::identity::Identity;
use crate::normalize::{self, NormError, NormKind};
use crate::schema::{header_key, FieldType, Kind, Schema};

/// Longest field accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Longest JSON line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Oldest age at an event considered plausible.
pub const MAX_AGE_YEARS: i32 = 120;

/// The format of an export file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    /// From the file name: `.csv`/`.txt` → CSV, `.jsonl`/`.ndjson`/`.json` → JSON lines.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" | "txt" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// A whole-file problem: the file is refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The message holds the cause; it is not also chained as a source, so
    /// `{:#}` does not print it twice.
    #[error("reading the export: {0}")]
    Io(io::Error),
    #[error("the file is empty: expected a header line naming the columns")]
    Empty,
    #[error("the header line is not valid UTF-8")]
    HeaderNotUtf8,
    #[error("the header lacks required column{}: {}; a {kind} export must carry them (other accepted names are in the schema's `columns`)", if .missing.len() > 1 { "s" } else { "" }, .missing.join(", "))]
    MissingColumns { kind: String, missing: Vec<String> },
    #[error("header columns `{a}` and `{b}` both map to field `{field}`; keep one")]
    DuplicateColumn { a: String, b: String, field: String },
    #[error("line {line}: a quoted field runs over {lines} lines and the row has {got} fields where the header has {want}: probably an unbalanced quote; fix the export")]
    UnbalancedQuote { line: u64, lines: u64, got: usize, want: usize },
    #[error("line {line}: longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong { line: u64 },
    #[error("line {line}: {message}")]
    Csv { line: u64, message: String },
}

impl From<io::Error> for IngestError {
    fn from(e: io::Error) -> IngestError {
        IngestError::Io(e)
    }
}

/// A typed, validated value of a non-identity field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Only for strings marked safe in the schema; other free text is never kept.
    Str(String),
    Date(Date),
    /// Index into the enum's declared values.
    Enum(u16),
    Bool(bool),
    Int(i64),
}

/// Why a row, or one of its values, was set aside. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub line: u64,
    /// The schema field, or `-` for the row as a whole.
    pub field: String,
    pub reason: String,
    pub action: Action,
}

/// What was done about an [`Issue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The row was not accepted.
    RowQuarantined,
    /// An optional identity value was unusable; the row was kept without it.
    ValueDropped,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::RowQuarantined => "row quarantined",
            Action::ValueDropped => "value dropped",
        }
    }
}

/// One accepted row. Reused between rows: [`Reader::next_row`] overwrites it.
/// Its `Debug` shows no identity value: not the birth date, not the record id.
pub struct Row {
    /// 1-based line of the input where the record starts (a CSV header is line 1).
    pub line: u64,
    pub identity: Identity,
    /// The date of birth, parsed, when the schema has one and the row carries it.
    pub birth_date: Option<Date>,
    /// The agency's record id (never sent as is: see `token::Tokenizer::record_id`).
    pub record_id: String,
    /// One slot per field of the kind, `None` when missing or not kept.
    pub values: Vec<Option<Value>>,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("line", &self.line)
            .field("identity", &self.identity)
            .field("birth_date", &self.birth_date.map(|_| "redacted"))
            .field("record_id", &(!self.record_id.is_empty()).then_some("redacted"))
            .field("values", &self.values)
            .finish()
    }
}

impl Row {
    pub fn new(schema: &Schema, kind: &Kind) -> Row {
        Row {
            line: 0,
            identity: Identity::with_fields(schema.identity.len()),
            birth_date: None,
            record_id: String::new(),
            values: vec![None; kind.fields.len()],
        }
    }

    /// Empty the row for the next one (identity values are wiped).
    fn reset(&mut self) {
        self.identity.clear();
        self.birth_date = None;
        self.record_id.clear();
        self.values.iter_mut().for_each(|v| *v = None);
    }

    /// The event date of the row (required by the schema, so present on every accepted row).
    pub fn event_date(&self, kind: &Kind) -> Option<Date> {
        match self.values.get(kind.event_date) {
            Some(Some(Value::Date(d))) => Some(*d),
            _ => None,
        }
    }
}

/// The outcome of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Quarantined,
}

/// Where each schema field is found in the input.
struct Mapping {
    /// Per identity field: where its value comes from.
    identity: Vec<Feed>,
    fields: Vec<Option<usize>>,
}

/// Where a row's value of an identity field comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Feed {
    /// No column: the field is missing from every row.
    Absent,
    /// One column (CSV) or JSON key.
    Column(usize),
    /// Several columns whose values are joined (see `IdentityField::join`).
    Joined(Vec<usize>),
    /// A column holding the whole name, of which this field takes its part
    /// (`family`: the family name, else the given name; see `IdentityField::full_name`).
    Part { column: usize, family: bool },
    /// A date's year piece alone (a `birth_year` column, no month or day and
    /// no column of the whole date): the date known only by its year.
    Year(usize),
}

impl Feed {
    fn fed(&self) -> bool {
        *self != Feed::Absent
    }
}

enum Input<R: Read> {
    Csv { reader: csv::Reader<LineEnds<R>>, record: csv::ByteRecord, width: usize },
    Json { reader: BufReader<R>, buf: Vec<u8>, line: u64, keys: Vec<String> },
}

/// Reads one export of one kind, row by row.
pub struct Reader<'s, R: Read> {
    schema: &'s Schema,
    kind: &'s Kind,
    input: Input<R>,
    mapping: Mapping,
    ignored: Vec<String>,
    /// Per-row scratch: JSON values by key.
    json_fields: Vec<Option<String>>,
}

impl<'s, R: Read> Reader<'s, R> {
    /// Start reading; for CSV this reads and checks the header.
    pub fn new(schema: &'s Schema, kind: &'s Kind, format: Format, input: R) -> Result<Reader<'s, R>, IngestError> {
        match format {
            Format::Csv => Self::new_csv(schema, kind, input),
            Format::JsonLines => Ok(Self::new_json(schema, kind, input)),
        }
    }

    fn new_csv(schema: &'s Schema, kind: &'s Kind, input: R) -> Result<Reader<'s, R>, IngestError> {
        // The csv crate strips a UTF-8 byte-order mark and accepts CRLF.
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(LineEnds::new(input));
        let mut header = csv::ByteRecord::new();
        let got = reader.read_byte_record(&mut header).map_err(|e| csv_error(&e, 1))?;
        if !got || (header.len() == 1 && header.get(0).is_some_and(|f| f.iter().all(u8::is_ascii_whitespace))) {
            return Err(IngestError::Empty);
        }
        let mut names = Vec::with_capacity(header.len());
        for f in header.iter() {
            let s = std::str::from_utf8(f).map_err(|_| IngestError::HeaderNotUtf8)?;
            names.push(s.trim().trim_start_matches('\u{feff}').to_lowercase());
        }
        let (mapping, ignored) = map_columns(schema, kind, &names)?;
        let width = names.len();
        Ok(Reader {
            schema,
            kind,
            input: Input::Csv { reader, record: csv::ByteRecord::new(), width },
            mapping,
            ignored,
            json_fields: Vec::new(),
        })
    }

    fn new_json(schema: &'s Schema, kind: &'s Kind, input: R) -> Reader<'s, R> {
        // JSON lines have no header: every key a schema field may carry is a "column".
        let mut keys = Vec::new();
        let mut identity = Vec::new();
        for f in &schema.identity {
            identity.push(Feed::Column(keys.len()));
            keys.push(f.name.clone());
        }
        let mut fields = Vec::new();
        for f in &kind.fields {
            fields.push(Some(keys.len()));
            keys.push(f.name.clone());
        }
        let n = keys.len();
        Reader {
            schema,
            kind,
            input: Input::Json { reader: BufReader::new(input), buf: Vec::new(), line: 0, keys },
            mapping: Mapping { identity, fields },
            ignored: Vec::new(),
            json_fields: vec![None; n],
        }
    }

    /// Header columns that map to no schema field (CSV only); they are not read.
    pub fn ignored_columns(&self) -> &[String] {
        &self.ignored
    }

    /// What the header leaves out of linkage (CSV only; JSON lines have no header).
    pub fn coverage(&self) -> Option<Coverage> {
        match self.input {
            Input::Csv { .. } => Some(coverage(self.schema, &self.mapping.identity, &self.ignored)),
            Input::Json { .. } => None,
        }
    }

    /// Read the next row into `row`. `Ok(None)` at the end of input.
    /// Issues about the row (or dropped values) are appended to `issues`.
    pub fn next_row(&mut self, row: &mut Row, issues: &mut Vec<Issue>) -> Result<Option<Outcome>, IngestError> {
        row.reset();
        let first_issue = issues.len();
        let schema = self.schema;
        let kind = self.kind;
        match &mut self.input {
            Input::Csv { reader, record, width } => {
                let line = loop {
                    let start = reader.position().line();
                    if !reader.read_byte_record(record).map_err(|e| csv_error(&e, start))? {
                        return Ok(None);
                    }
                    let blank =
                        record.len() == 1 && record.get(0).is_some_and(|f| f.iter().all(u8::is_ascii_whitespace));
                    if !blank {
                        break record_start_line(reader, record);
                    }
                };
                row.line = line;
                if record.len() != *width {
                    let spans = newlines_in(record) + 1;
                    if spans > 1 {
                        return Err(IngestError::UnbalancedQuote {
                            line,
                            lines: spans,
                            got: record.len(),
                            want: *width,
                        });
                    }
                    issues.push(Issue {
                        line,
                        field: "-".into(),
                        reason: format!("{} fields where the header has {}", record.len(), width),
                        action: Action::RowQuarantined,
                    });
                    return Ok(Some(Outcome::Quarantined));
                }
                let get = |col: Option<usize>| Cell::of_bytes(col.and_then(|c| record.get(c)));
                validate_row(schema, kind, &self.mapping, get, row, issues);
            }
            Input::Json { reader, buf, line, keys } => {
                let json_fields = &mut self.json_fields;
                loop {
                    buf.clear();
                    *line += 1;
                    let n = reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', buf)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    if buf.len() > MAX_LINE_BYTES {
                        return Err(IngestError::LineTooLong { line: *line });
                    }
                    if !buf.iter().all(u8::is_ascii_whitespace) {
                        break;
                    }
                }
                row.line = *line;
                match parse_json_object(buf, keys, json_fields) {
                    Ok(()) => {
                        let get = |col: Option<usize>| {
                            Cell::of_str(col.and_then(|c| json_fields.get(c)).and_then(|v| v.as_deref()))
                        };
                        validate_row(schema, kind, &self.mapping, get, row, issues);
                    }
                    Err(reason) => {
                        issues.push(Issue { line: *line, field: "-".into(), reason, action: Action::RowQuarantined })
                    }
                }
            }
        }
        let quarantined = issues[first_issue..].iter().any(|i| i.action == Action::RowQuarantined);
        Ok(Some(if quarantined { Outcome::Quarantined } else { Outcome::Accepted }))
    }
}

/// The line a record starts on. The csv crate's own record position counts
/// blank lines skipped before the record as part of it, so count back from
/// where the record ended instead: the end line, less the newlines inside
/// quoted fields, less the record's own terminator when it had one.
fn record_start_line<R: Read>(reader: &csv::Reader<LineEnds<R>>, record: &csv::ByteRecord) -> u64 {
    let end = reader.position();
    let src = reader.get_ref();
    // A record that ends at the end of input had no terminator if the input
    // does not end in a newline, or if that newline is inside its last field.
    let at_end = src.eof && end.byte() == src.total;
    let last_field_ends_nl = record.iter().next_back().is_some_and(|f| f.last() == Some(&b'\n'));
    let unterminated = at_end && (src.last != Some(b'\n') || last_field_ends_nl);
    end.line().saturating_sub(newlines_in(record)).saturating_sub(u64::from(!unterminated)).max(1)
}

fn newlines_in(record: &csv::ByteRecord) -> u64 {
    record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64
}

/// Turns CRLF and lone CR line ends into LF on the way to the csv parser, so
/// line numbers are counted the same way for every export (the csv crate
/// counts a CRLF's LF with the following record), and counts the bytes.
pub struct LineEnds<R> {
    inner: R,
    pending_cr: bool,
    /// Bytes handed out so far (after translation).
    total: u64,
    /// The last byte handed out.
    last: Option<u8>,
    eof: bool,
}

impl<R: Read> LineEnds<R> {
    pub fn new(inner: R) -> LineEnds<R> {
        LineEnds { inner, pending_cr: false, total: 0, last: None, eof: false }
    }
}

impl<R: Read> Read for LineEnds<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut raw = [0u8; 8192];
        loop {
            // A pending CR may turn into one more output byte: leave room for it.
            let room = (out.len() - usize::from(self.pending_cr)).min(raw.len());
            if room == 0 {
                out[0] = b'\n';
                self.pending_cr = false;
                self.total += 1;
                self.last = Some(b'\n');
                return Ok(1);
            }
            let n = self.inner.read(&mut raw[..room])?;
            if n == 0 {
                if self.pending_cr {
                    self.pending_cr = false;
                    out[0] = b'\n';
                    self.total += 1;
                    self.last = Some(b'\n');
                    return Ok(1);
                }
                self.eof = true;
                return Ok(0);
            }
            // Most exports end lines with LF alone: a chunk with no CR (and none
            // pending) is handed out as it is, found by one vectorized search.
            if !self.pending_cr && !raw[..n].contains(&b'\r') {
                out[..n].copy_from_slice(&raw[..n]);
                self.total += n as u64;
                self.last = Some(raw[n - 1]);
                return Ok(n);
            }
            let mut w = 0;
            for &b in &raw[..n] {
                if self.pending_cr {
                    self.pending_cr = false;
                    out[w] = b'\n';
                    w += 1;
                    if b == b'\n' {
                        continue;
                    }
                }
                if b == b'\r' {
                    self.pending_cr = true;
                    continue;
                }
                out[w] = b;
                w += 1;
            }
            if w > 0 {
                self.total += w as u64;
                self.last = Some(out[w - 1]);
                return Ok(w);
            }
        }
    }
}

fn csv_error(e: &csv::Error, line: u64) -> IngestError {
    match e.kind() {
        csv::ErrorKind::Io(_) => IngestError::Io(io::Error::other(e.to_string())),
        // Other csv errors do not quote field contents, but say only where.
        _ => IngestError::Csv { line: e.position().map_or(line, |p| p.line()), message: "malformed CSV".into() },
    }
}

/// Map header names to schema fields; refuse missing required columns (all
/// named at once) and two columns claiming one field.
fn map_columns(schema: &Schema, kind: &Kind, names: &[String]) -> Result<(Mapping, Vec<String>), IngestError> {
    // Matched by letters and digits alone: `Date of Birth` is `date_of_birth`.
    let keys: Vec<String> = names.iter().map(|n| header_key(n)).collect();
    let find = |field: &str, columns: &[String]| -> Result<Option<usize>, IngestError> {
        let wanted: Vec<String> = columns.iter().map(|c| header_key(c)).collect();
        let hits: Vec<usize> =
            keys.iter().enumerate().filter(|(_, k)| !k.is_empty() && wanted.contains(k)).map(|(i, _)| i).collect();
        match hits.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            [a, b, ..] => Err(IngestError::DuplicateColumn {
                a: names[*a].clone(),
                b: names[*b].clone(),
                field: field.to_string(),
            }),
        }
    };
    let mut missing = Vec::new();
    let mut identity = Vec::new();
    for f in &schema.identity {
        // Joined when the header has every piece (a street number and a
        // street say more than the street alone), else the one column.
        let pieces = f.join.iter().map(|p| find(&f.name, p)).collect::<Result<Vec<_>, _>>()?;
        let year_piece = match pieces.as_slice() {
            [Some(year), rest @ ..]
                if f.norm == NormKind::Date && !rest.is_empty() && rest.iter().all(Option::is_none) =>
            {
                Some(*year)
            }
            _ => None,
        };
        let mut feed = match pieces.into_iter().collect::<Option<Vec<usize>>>() {
            Some(cols) if !cols.is_empty() => Feed::Joined(cols),
            _ => find(&f.name, &f.columns)?.map_or(Feed::Absent, Feed::Column),
        };
        // Only the year of a split date, and no whole date: the year alone.
        if let (Feed::Absent, Some(year)) = (&feed, year_piece) {
            feed = Feed::Year(year);
        }
        // No column of its own: its part of a whole-name column, if there is one.
        if feed == Feed::Absent {
            if let Some(column) = find(&f.name, &f.full_name)? {
                feed = Feed::Part { column, family: f.norm == NormKind::FamilyName };
            }
        }
        if feed == Feed::Absent && f.required {
            missing.push(f.name.clone());
        }
        identity.push(feed);
    }
    let mut fields = Vec::new();
    for f in &kind.fields {
        let col = find(&f.name, &f.columns)?;
        if col.is_none() && f.required {
            missing.push(f.name.clone());
        }
        fields.push(col);
    }
    if !missing.is_empty() {
        return Err(IngestError::MissingColumns { kind: kind.name.clone(), missing });
    }
    let joined = identity.iter().flat_map(|f| match f {
        Feed::Absent => Vec::new(),
        Feed::Column(c) | Feed::Part { column: c, .. } | Feed::Year(c) => vec![*c],
        Feed::Joined(cols) => cols.clone(),
    });
    let used: Vec<usize> = joined.chain(fields.iter().flatten().copied()).collect();
    let ignored = names.iter().enumerate().filter(|(i, _)| !used.contains(i)).map(|(_, n)| n.clone()).collect();
    Ok((Mapping { identity, fields }, ignored))
}

/// What an export's header leaves out of linkage. Names only columns and
/// schema keys, never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Token schemes that no row of the export can have: (scheme, identity fields without a column).
    pub schemes_unfed: Vec<(String, Vec<String>)>,
    /// Header columns that look like identity (a name, birth date, sex, id,
    /// address, postal code, place) but map to no field: they are ignored.
    pub unmapped_identity_columns: Vec<String>,
    /// Identity fields with no column of their own whose `join` pieces the
    /// header has only some of: (field, the pieces it lacks, each by its
    /// first header name). The pieces it has are ignored.
    pub partial_joins: Vec<(String, Vec<String>)>,
    /// Dates read from their year piece alone (a `birth_year` column, no
    /// month, day or whole date). Only the schemes that use just the year
    /// get tokens from them.
    pub year_only: Vec<String>,
}

/// Header words that suggest a column identifies a person.
/// Compared with a column's [`header_key`], so `Soc Sec No` and `ID #` are caught.
const IDENTITY_HINTS: &[&str] = &[
    "name", "birth", "dob", "sex", "gender", "ssn", "socsec", "idnum", "licen", "address", "street", "zip", "postcode",
    "postal", "city", "suburb", "town", "county", "phone", "mail",
];

/// Schemes the mapped identity fields cannot feed, and ignored columns that look like identity.
fn coverage(schema: &Schema, identity: &[Feed], ignored: &[String]) -> Coverage {
    let mut schemes_unfed = Vec::new();
    for s in &schema.schemes {
        let mut lacking: Vec<String> = s
            .parts
            .iter()
            .filter_map(|p| {
                let name = &schema.identity[p.field].name;
                match identity.get(p.field) {
                    // A date read from its year alone feeds only its year.
                    Some(Feed::Year(_)) => {
                        (p.transform != crate::schema::Transform::Year).then(|| format!("{name}'s month and day"))
                    }
                    feed => (!feed.is_some_and(Feed::fed)).then(|| name.clone()),
                }
            })
            .collect();
        lacking.dedup();
        if !lacking.is_empty() {
            schemes_unfed.push((s.name.clone(), lacking));
        }
    }
    let unmapped_identity_columns =
        ignored.iter().filter(|c| IDENTITY_HINTS.iter().any(|h| header_key(c).contains(h))).cloned().collect();
    let mut partial_joins = Vec::new();
    for (f, feed) in schema.identity.iter().zip(identity) {
        let has = |piece: &Vec<String>| piece.iter().any(|c| ignored.iter().any(|i| header_key(i) == header_key(c)));
        if !feed.fed() && f.join.iter().any(has) {
            let lacking = f.join.iter().filter(|p| !has(p)).filter_map(|p| p.first().cloned()).collect();
            partial_joins.push((f.name.clone(), lacking));
        }
    }
    let year_only = schema
        .identity
        .iter()
        .zip(identity)
        .filter(|(_, feed)| matches!(feed, Feed::Year(_)))
        .map(|(f, _)| f.name.clone())
        .collect();
    Coverage { schemes_unfed, unmapped_identity_columns, partial_joins, year_only }
}

/// The coverage of a CSV header line (as `divert config check --header` reads it).
pub fn header_coverage(schema: &Schema, kind: &Kind, header: &[String]) -> Result<Coverage, IngestError> {
    let names: Vec<String> = header.iter().map(|h| h.trim().trim_start_matches('\u{feff}').to_lowercase()).collect();
    let (mapping, ignored) = map_columns(schema, kind, &names)?;
    Ok(coverage(schema, &mapping.identity, &ignored))
}

/// Parse one JSON line into string slots per key. Returns a reason (never a value) on failure.
fn parse_json_object(buf: &[u8], keys: &[String], out: &mut [Option<String>]) -> Result<(), String> {
    out.iter_mut().for_each(|v| *v = None);
    let value: serde_json::Value = serde_json::from_slice(buf).map_err(|e| match e.classify() {
        serde_json::error::Category::Io | serde_json::error::Category::Eof => "not a complete JSON value".to_string(),
        _ => format!("not valid JSON (error at column {})", e.column()),
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    let mut by_key: HashMap<String, &serde_json::Value> = HashMap::with_capacity(map.len());
    for (k, v) in &map {
        by_key.insert(k.trim().to_lowercase(), v);
    }
    for (slot, key) in out.iter_mut().zip(keys) {
        let Some(v) = by_key.get(key.as_str()) else { continue };
        *slot = match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => return Err(format!("field {key}: not a scalar value")),
        };
    }
    Ok(())
}

/// One cell of input as the validator sees it.
enum Cell<'a> {
    Absent,
    Text(&'a str),
    NotUtf8,
    TooLong,
}

impl<'a> Cell<'a> {
    /// A CSV field (or a kept raw field) as a cell.
    fn of_bytes(bytes: Option<&'a [u8]>) -> Cell<'a> {
        match bytes {
            None => Cell::Absent,
            Some(b) if b.len() > MAX_FIELD_BYTES => Cell::TooLong,
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => Cell::Text(s),
                Err(_) => Cell::NotUtf8,
            },
        }
    }

    /// A JSON value (already text) as a cell.
    fn of_str(text: Option<&'a str>) -> Cell<'a> {
        match text {
            None => Cell::Absent,
            Some(s) if s.len() > MAX_FIELD_BYTES => Cell::TooLong,
            Some(s) => Cell::Text(s),
        }
    }
}

/// The pieces of a joined identity value, the empty ones left out, joined
/// by `sep` into `buf`: a cell of the whole (`Absent` when every piece is
/// empty; the first bad piece when one is not text).
fn join_cells<'b, 'c>(
    pieces: impl Iterator<Item = Cell<'c>> + Clone,
    sep: char,
    buf: &'b mut zeroize::Zeroizing<String>,
) -> Cell<'b> {
    use zeroize::Zeroize;
    buf.zeroize();
    // Room for the whole before the first piece: the value is never moved.
    let room = pieces.clone().map(|c| if let Cell::Text(s) = c { s.len() + sep.len_utf8() } else { 0 }).sum::<usize>();
    buf.reserve(room);
    for cell in pieces {
        match cell {
            Cell::Absent => {}
            Cell::Text(s) => {
                let s = s.trim();
                if !s.is_empty() {
                    if !buf.is_empty() {
                        buf.push(sep);
                    }
                    buf.push_str(s);
                }
            }
            Cell::NotUtf8 => return Cell::NotUtf8,
            Cell::TooLong => return Cell::TooLong,
        }
    }
    if buf.is_empty() {
        Cell::Absent
    } else if buf.len() > MAX_FIELD_BYTES {
        Cell::TooLong
    } else {
        Cell::Text(buf.as_str())
    }
}

fn validate_row<'c>(
    schema: &Schema,
    kind: &Kind,
    mapping: &Mapping,
    get: impl Fn(Option<usize>) -> Cell<'c>,
    row: &mut Row,
    issues: &mut Vec<Issue>,
) {
    let line = row.line;
    let quarantine = |field: &str, reason: String, issues: &mut Vec<Issue>| {
        issues.push(Issue { line, field: field.to_string(), reason, action: Action::RowQuarantined });
    };

    // Identity fields: normalize; a required one that fails quarantines the row,
    // an optional one that is present but unusable is dropped with a note.
    // A joined value is put together here, and wiped when the row is done.
    let mut joined = zeroize::Zeroizing::new(String::new());
    for (i, f) in schema.identity.iter().enumerate() {
        let cell = match &mapping.identity[i] {
            Feed::Absent => Cell::Absent,
            Feed::Column(c) | Feed::Year(c) => get(Some(*c)),
            Feed::Joined(cols) => join_cells(cols.iter().map(|&c| get(Some(c))), f.join_separator(), &mut joined),
            Feed::Part { column, family } => match get(Some(*column)) {
                Cell::Text(whole) => {
                    let (given, family_part) = normalize::split_full_name(whole);
                    Cell::Text(if *family { family_part } else { given })
                }
                other => other,
            },
        };
        let text = match cell {
            Cell::Absent => "",
            Cell::Text(s) => s,
            Cell::NotUtf8 => {
                quarantine(&f.name, "not valid UTF-8".into(), issues);
                continue;
            }
            Cell::TooLong => {
                quarantine(&f.name, format!("longer than {MAX_FIELD_BYTES} bytes"), issues);
                continue;
            }
        };
        let result = normalize::normalize(f.norm, text, row.identity.slot(i));
        match result {
            Ok(()) => row.identity.set_present(i, true),
            Err(NormError::Empty) if !f.required => {}
            Err(NormError::Empty) => quarantine(&f.name, "missing".into(), issues),
            Err(e) if f.required => quarantine(&f.name, e.to_string(), issues),
            Err(e) => {
                issues.push(Issue { line, field: f.name.clone(), reason: e.to_string(), action: Action::ValueDropped })
            }
        }
    }
    if let Some(b) = schema.birth_date_field() {
        row.birth_date = row.identity.get(b).and_then(|s| normalize::parse_date(s).ok());
    }

    for (i, f) in kind.fields.iter().enumerate() {
        let text = match get(mapping.fields[i]) {
            Cell::Absent => "",
            Cell::Text(s) => s.trim(),
            Cell::NotUtf8 => {
                quarantine(&f.name, "not valid UTF-8".into(), issues);
                continue;
            }
            Cell::TooLong => {
                quarantine(&f.name, format!("longer than {MAX_FIELD_BYTES} bytes"), issues);
                continue;
            }
        };
        if text.is_empty() {
            if f.required {
                quarantine(&f.name, "missing".into(), issues);
            }
            continue;
        }
        if i == kind.record_id {
            row.record_id.push_str(text);
        }
        match parse_value(&f.ty, text) {
            Ok(v) => row.values[i] = v,
            Err(reason) => quarantine(&f.name, reason, issues),
        }
    }

    // Age at the event must be plausible: a date of birth after the event,
    // or more than 120 years before it, is a recording error (a birth date
    // known only by its year: a year after the event's, or more than 120
    // before it). Unless the schema requires it, an implausible birth date is
    // dropped, not the row.
    let birth = schema.birth_date_field().and_then(|b| {
        let year_only = row.identity.get(b).and_then(normalize::year_only);
        Some((b, row.birth_date.map(Ok).or(year_only.map(Err))?))
    });
    if let (Some((b, dob)), Some(event)) = (birth, row.event_date(kind)) {
        let f = &schema.identity[b];
        let (after, years) = match dob {
            Ok(dob) => (dob > event, age_at(dob, event)),
            Err(year) => (year > event.year(), event.year() - year - 1),
        };
        let reason = if after {
            Some(format!("after the event date ({})", kind.fields[kind.event_date].name))
        } else if years > MAX_AGE_YEARS {
            Some(format!("implausible: more than {MAX_AGE_YEARS} years before the event"))
        } else {
            None
        };
        if let Some(reason) = reason {
            if f.required {
                quarantine(&f.name, reason, issues);
            } else {
                issues.push(Issue { line, field: f.name.clone(), reason, action: Action::ValueDropped });
                row.identity.set_present(b, false);
                row.birth_date = None;
            }
        }
    }
}

/// Whole years from `dob` to `at` (0 if `at` is before `dob`).
pub fn age_at(dob: Date, at: Date) -> i32 {
    let mut years = at.year() - dob.year();
    if (at.month() as u8, at.day()) < (dob.month() as u8, dob.day()) {
        years -= 1;
    }
    years.max(0)
}

/// Parse a non-identity value by its declared type. The reason never includes the value.
fn parse_value(ty: &FieldType, text: &str) -> Result<Option<Value>, String> {
    match ty {
        FieldType::String { safe } => Ok(safe.then(|| Value::Str(text.to_string()))),
        FieldType::Date => {
            let d = normalize::parse_date(text).map_err(|e| e.to_string())?;
            if d.year() < 1900 || d.year() > 2099 {
                return Err("implausible date (before 1900 or after 2099)".into());
            }
            Ok(Some(Value::Date(d)))
        }
        FieldType::Enum(e) => match e.resolve(text) {
            Some(i) => Ok(Some(Value::Enum(i))),
            None => Err(format!("not one of {}", e.values.join(", "))),
        },
        FieldType::Bool => {
            parse_bool(text).map(|b| Some(Value::Bool(b))).ok_or_else(|| "not a yes/no value".to_string())
        }
        FieldType::Integer { min, max } => {
            let n: i64 = text.parse().map_err(|_| "not a whole number".to_string())?;
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(format!(
                    "out of range ({}..{})",
                    min.map_or(String::new(), |m| m.to_string()),
                    max.map_or(String::new(), |m| m.to_string())
                ));
            }
            Ok(Some(Value::Int(n)))
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    const TRUE: [&str; 5] = ["true", "yes", "y", "1", "t"];
    const FALSE: [&str; 5] = ["false", "no", "n", "0", "f"];
    if TRUE.iter().any(|t| text.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|t| text.eq_ignore_ascii_case(t)) {
        Some(false)
    } else {
        None
    }
}

/// Validates rows kept in a source's raw store (see `source::raw`), the way
/// [`Reader`] validated them at ingest: for CSV the fields of the kept
/// columns, for JSON lines the line. Re-pseudonymization after a key
/// rotation reads accepted rows back through this.
pub struct RawRowParser<'s> {
    schema: &'s Schema,
    kind: &'s Kind,
    mapping: Mapping,
    json: Option<Vec<String>>,
    json_fields: Vec<Option<String>>,
}

impl<'s> RawRowParser<'s> {
    /// A parser for rows of `kind` kept from an export of `format` whose kept columns are `columns` (CSV).
    pub fn new(
        schema: &'s Schema,
        kind: &'s Kind,
        format: Format,
        columns: &[String],
    ) -> Result<RawRowParser<'s>, IngestError> {
        match format {
            Format::Csv => {
                let (mapping, _) = map_columns(schema, kind, columns)?;
                Ok(RawRowParser { schema, kind, mapping, json: None, json_fields: Vec::new() })
            }
            Format::JsonLines => {
                let Reader { mapping, input, json_fields, .. } = Reader::new_json(schema, kind, std::io::empty());
                let keys = match input {
                    Input::Json { keys, .. } => keys,
                    Input::Csv { .. } => Vec::new(),
                };
                Ok(RawRowParser { schema, kind, mapping, json: Some(keys), json_fields })
            }
        }
    }

    /// Validate one kept row into `row` (its line set to `line`).
    pub fn parse(&mut self, line: u64, fields: &[&[u8]], row: &mut Row, issues: &mut Vec<Issue>) -> Outcome {
        row.reset();
        row.line = line;
        let first_issue = issues.len();
        match &self.json {
            None => {
                let get = |col: Option<usize>| Cell::of_bytes(col.and_then(|c| fields.get(c)).copied());
                validate_row(self.schema, self.kind, &self.mapping, get, row, issues);
            }
            Some(keys) => {
                let text = fields.first().copied().unwrap_or_default();
                match parse_json_object(text, keys, &mut self.json_fields) {
                    Ok(()) => {
                        let json_fields = &self.json_fields;
                        let get = |col: Option<usize>| {
                            Cell::of_str(col.and_then(|c| json_fields.get(c)).and_then(|v| v.as_deref()))
                        };
                        validate_row(self.schema, self.kind, &self.mapping, get, row, issues);
                    }
                    Err(reason) => {
                        issues.push(Issue { line, field: "-".into(), reason, action: Action::RowQuarantined })
                    }
                }
            }
        }
        if issues[first_issue..].iter().any(|i| i.action == Action::RowQuarantined) {
            Outcome::Quarantined
        } else {
            Outcome::Accepted
        }
    }
}

/// `FILE.quarantine.csv` beside `FILE`: where the bad rows of a file handed over are reported.
pub fn quarantine_path(input: &std::path::Path) -> std::path::PathBuf {
    let mut name = input.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".quarantine.csv");
    input.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::default_schema().unwrap()
    }

    /// Run a whole input; returns (accepted lines, issues) or the file error.
    fn run(kind: &str, format: Format, input: &[u8]) -> Result<(Vec<u64>, Vec<Issue>), IngestError> {
        let schema = schema();
        let kind = schema.kind(kind).unwrap();
        let mut r = Reader::new(&schema, kind, format, input)?;
        let mut row = Row::new(&schema, kind);
        let mut issues = Vec::new();
        let mut accepted = Vec::new();
        while let Some(o) = r.next_row(&mut row, &mut issues)? {
            if o == Outcome::Accepted {
                accepted.push(row.line);
            }
        }
        Ok((accepted, issues))
    }

    const ARREST_HEADER: &str = "Arrest_ID,LAST_NAME,first_name,DOB,sex,arrest_date,warrant,violent,felony\n";

    #[test]
    fn csv_with_bom_crlf_quotes_and_aliases() {
        let input = format!(
            "\u{feff}{}A1,\"O'Brien, Jr.\",Bill,3/14/1980,M,2019-03-04T10:22:00,Y,n,0\r\nA2,Smith,\"Ann\nMarie\",1990-01-02,f,1/5/2020 10:22,no,no,yes\r\n",
            ARREST_HEADER.replace('\n', "\r\n")
        );
        let (accepted, issues) = run("arrest", Format::Csv, input.as_bytes()).unwrap();
        assert_eq!(accepted, vec![2, 3], "{issues:?}");
        assert!(issues.is_empty());
    }

    #[test]
    fn bad_rows_are_quarantined_with_line_field_reason_never_value() {
        let input = format!(
            "{ARREST_HEADER}A1,Smith,Ann,13/45/1980,M,2019-03-04,y,n,n\nA2,Smith,Ann,1980-01-01,M,2019-03-04,maybe,n,n\nA3,Smith,Ann,1980-01-01,M\nA4,,Ann,1980-01-01,M,2019-03-04,y,n,n\nA5,Secretname,Ann,2020-01-01,M,2019-03-04,y,n,n\nA6,Smith,Ann,1980-01-01,Q,2019-03-04,y,n,n\n"
        );
        let (accepted, issues) = run("arrest", Format::Csv, input.as_bytes()).unwrap();
        // Identity fields are optional in the shipped schema: an unusable one is dropped, the row kept.
        assert_eq!(accepted, vec![2, 5, 6, 7], "{issues:?}");
        let find = |line: u64| issues.iter().find(|i| i.line == line).unwrap();
        assert_eq!((find(2).field.as_str(), find(2).action), ("dob", Action::ValueDropped));
        assert_eq!((find(3).field.as_str(), find(3).action), ("warrant", Action::RowQuarantined));
        assert_eq!(find(4).field, "-");
        assert!(issues.iter().all(|i| i.line != 5), "a missing optional value is no issue: {issues:?}");
        assert!(find(6).reason.contains("after the event date"));
        assert_eq!((find(6).field.as_str(), find(6).action), ("dob", Action::ValueDropped));
        assert_eq!(find(7).action, Action::ValueDropped);
        for i in &issues {
            for secret in ["Secretname", "13/45/1980", "maybe", "Smith", "Q"] {
                assert!(!i.reason.contains(secret) && !i.field.contains(secret), "{i:?}");
            }
        }
    }

    /// The normalized identity values of every row of a CSV arrest export,
    /// by field name (missing fields left out), and the issues.
    fn identities(schema: &Schema, input: &str) -> (Vec<Vec<(String, String)>>, Vec<Issue>) {
        let kind = schema.kind("arrest").unwrap();
        let mut r = Reader::new(schema, kind, Format::Csv, input.as_bytes()).unwrap();
        let mut row = Row::new(schema, kind);
        let (mut out, mut issues) = (Vec::new(), Vec::new());
        while let Some(o) = r.next_row(&mut row, &mut issues).unwrap() {
            assert_eq!(o, Outcome::Accepted, "{issues:?}");
            let values = schema.identity.iter().enumerate();
            out.push(values.filter_map(|(i, f)| Some((f.name.clone(), row.identity.get(i)?.to_string()))).collect());
        }
        (out, issues)
    }

    #[test]
    fn a_birth_date_split_over_three_columns_is_read_as_one() {
        let schema = schema();
        let one = "arrest_id,given_name,family_name,dob,arrest_date,warrant,violent,felony\n\
                   A1,Ann,Lee,1980-03-04,2019-03-04,y,n,n\nA2,Bo,Ng,,2019-03-04,y,n,n\n";
        let split = "arrest_id,given_name,family_name,BY,bm,bd,arrest_date,warrant,violent,felony\n\
                     A1,Ann,Lee,1980,3,04,2019-03-04,y,n,n\nA2,Bo,Ng,,,,2019-03-04,y,n,n\n";
        let (a, _) = identities(&schema, one);
        let (b, issues) = identities(&schema, split);
        assert_eq!(a, b, "the same values, read from one column or three");
        assert!(a[0].contains(&("dob".to_string(), "1980-03-04".to_string())), "{a:?}");
        assert!(issues.is_empty(), "every piece empty: the date is missing, no issue: {issues:?}");
        // A piece missing from one row: that row's date is dropped, the row kept, no value in the issue.
        let (rows, issues) = identities(&schema, &split.replace("A1,Ann,Lee,1980,3,04", "A1,Ann,Lee,1980,3,"));
        assert!(rows[0].iter().all(|(f, _)| f != "dob"), "{rows:?}");
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!((issues[0].line, issues[0].field.as_str(), issues[0].action), (2, "dob", Action::ValueDropped));
        assert!(!issues[0].reason.contains("1980"), "{issues:?}");
        // The pieces' columns are read, so the raw store keeps them.
        let kind = schema.kind("arrest").unwrap();
        let r = Reader::new(&schema, kind, Format::Csv, split.as_bytes()).unwrap();
        assert!(r.ignored_columns().is_empty(), "{:?}", r.ignored_columns());
        let c = r.coverage().unwrap();
        assert!(c.schemes_unfed.iter().all(|(_, lack)| !lack.contains(&"dob".to_string())), "{c:?}");
    }

    #[test]
    fn a_birth_date_known_only_by_its_year_is_kept_as_its_year() {
        let schema = schema();
        let kind = schema.kind("arrest").unwrap();
        // A `birth_year` column with no month, day or whole date: the year alone.
        let years = "arrest_id,given_name,family_name,birth_year,arrest_date,warrant,violent,felony\n\
                     A1,Ann,Lee,1980,2019-03-04,y,n,n\nA2,Bo,Ng,2020,2019-03-04,y,n,n\n\
                     A3,Cy,Oh,1890,2019-03-04,y,n,n\nA4,Di,Xu,1899,2019-03-04,y,n,n\n\
                     A5,Ed,Yi,1905,2030-03-04,y,n,n\nA6,Fa,Wu,1910,2030-03-04,y,n,n\n";
        let (rows, issues) = identities(&schema, years);
        assert!(rows[0].contains(&("dob".to_string(), "1980".to_string())), "{rows:?}");
        // A year after the event's, or surely more than 120 years before it, is dropped.
        let dropped: Vec<(u64, &str)> = issues.iter().map(|i| (i.line, i.reason.as_str())).collect();
        assert_eq!(dropped.len(), 4, "{issues:?}");
        assert!(dropped[3].0 == 6 && dropped[3].1.starts_with("implausible: more than 120 years"), "{dropped:?}");
        assert!(rows[5].contains(&("dob".to_string(), "1910".to_string())), "at most 119 years: kept {rows:?}");
        assert!(dropped[0].0 == 3 && dropped[0].1.starts_with("after the event date"), "{dropped:?}");
        assert!(dropped[1].0 == 4 && dropped[1].1.starts_with("implausible date"), "{dropped:?}");
        assert!(dropped[2].0 == 5 && dropped[2].1.starts_with("implausible date"), "{dropped:?}");
        assert!(issues.iter().all(|i| i.action == Action::ValueDropped && !i.reason.contains("18")), "{issues:?}");
        let r = Reader::new(&schema, kind, Format::Csv, years.as_bytes()).unwrap();
        assert!(r.ignored_columns().is_empty(), "{:?}", r.ignored_columns());
        let c = r.coverage().unwrap();
        assert_eq!(c.year_only, vec!["dob".to_string()]);
        assert!(c.partial_joins.is_empty(), "{c:?}");
        let unfed = |scheme: &str| c.schemes_unfed.iter().find(|(s, _)| s == scheme).map(|(_, lack)| lack.clone());
        assert_eq!(unfed("names_birth_year"), None, "{c:?}");
        assert_eq!(unfed("names_dob"), Some(vec!["dob's month and day".to_string()]), "{c:?}");
        // Three pieces, month and day empty in a row: that row's date is its year.
        let split =
            "arrest_id,given_name,family_name,birth_year,birth_month,birth_day,arrest_date,warrant,violent,felony\n\
                     A1,Ann,Lee,1980,,,2019-03-04,y,n,n\n";
        let (rows, issues) = identities(&schema, split);
        assert!(rows[0].contains(&("dob".to_string(), "1980".to_string())) && issues.is_empty(), "{rows:?} {issues:?}");
        // A whole-date column is read rather than a lone year beside it.
        let both = "arrest_id,given_name,family_name,dob,birth_year,arrest_date,warrant,violent,felony\n\
                    A1,Ann,Lee,1980-03-04,1980,2019-03-04,y,n,n\n";
        let (rows, _) = identities(&schema, both);
        assert!(rows[0].contains(&("dob".to_string(), "1980-03-04".to_string())), "{rows:?}");
    }

    #[test]
    fn a_whole_name_column_feeds_the_given_and_the_family_name() {
        let schema = schema();
        let rows = "A1,Ann,Lee,1980-03-04,2019-03-04,y,n,n\nA2,Maria,de la Cruz,1971-05-06,2019-03-04,y,n,n\n\
                    A3,John,Doe,1975-01-02,2019-03-04,y,n,n\n";
        let (apart, _) = identities(
            &schema,
            &format!("arrest_id,given_name,family_name,dob,arrest_date,warrant,violent,felony\n{rows}"),
        );
        let whole = |header: &str, a: &str, b: &str, c: &str| {
            format!(
                "arrest_id,{header},dob,arrest_date,warrant,violent,felony\n\
                 A1,{a},1980-03-04,2019-03-04,y,n,n\nA2,{b},1971-05-06,2019-03-04,y,n,n\n\
                 A3,{c},1975-01-02,2019-03-04,y,n,n\n"
            )
        };
        for (header, a, b, c) in [
            ("name", "\"LEE, ANN\"", "\"DE LA CRUZ, MARIA\"", "\"DOE JR, JOHN Q\""),
            ("Defendant_Name", "Ann Lee", "Maria de la Cruz", "\"John Q. Doe, Jr.\""),
            ("full_name", "Mrs. Ann B. Lee", "Maria De La Cruz", "Johnny Doe"),
        ] {
            let (got, issues) = identities(&schema, &whole(header, a, b, c));
            assert_eq!(got, apart, "{header}: {a} / {b} / {c}");
            assert!(issues.is_empty(), "{issues:?}");
            // The column is read (kept in the raw store), and the name schemes are fed.
            let kind = schema.kind("arrest").unwrap();
            let input = whole(header, a, b, c);
            let r = Reader::new(&schema, kind, Format::Csv, input.as_bytes()).unwrap();
            assert!(r.ignored_columns().is_empty(), "{:?}", r.ignored_columns());
            let cov = r.coverage().unwrap();
            assert!(cov.schemes_unfed.iter().all(|(_, lack)| !lack.iter().any(|f| f.ends_with("_name"))), "{cov:?}");
            assert!(cov.unmapped_identity_columns.is_empty(), "{cov:?}");
        }
        // A column of the field's own comes first: the whole name then feeds only the other field.
        let (got, _) = identities(
            &schema,
            &whole("given_name,name", "Ann,\"Lee, Zed\"", "Maria,Maria de la Cruz", "John,John Doe"),
        );
        assert_eq!(got, apart);
        // One word is a family name; a whole name nobody wrote is nothing, not an issue.
        let (got, issues) = identities(&schema, &whole("name", "Lee", "\"\"", "Doe"));
        assert!(got[0].contains(&("family_name".to_string(), "lee".to_string())), "{got:?}");
        assert!(
            got[0].iter().all(|(f, _)| f != "given_name") && got[1].iter().all(|(f, _)| !f.ends_with("_name")),
            "{got:?}"
        );
        assert!(issues.is_empty(), "{issues:?}");
        // Only a name field reads a whole name, and its headers are no other field's.
        let text = crate::schema::DEFAULT_SCHEMA.replacen(
            "normalize = \"date\"\n",
            "normalize = \"date\"\nfull_name = [\"whole_name\"]\n",
            1,
        );
        let problems = Schema::from_toml(&text).unwrap_err();
        assert!(problems.iter().any(|p| p.key == "identity.dob.full_name"), "{problems:?}");
        let text =
            crate::schema::DEFAULT_SCHEMA.replacen("full_name = [\"name\",", "full_name = [\"surname\", \"name\",", 1);
        let problems = Schema::from_toml(&text).unwrap_err();
        assert!(
            problems.iter().any(|p| p.key == "identity.given_name.full_name" && p.message.contains("family_name")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_join_takes_precedence_over_its_own_column_and_its_names_are_checked() {
        let text = crate::schema::DEFAULT_SCHEMA.replacen(
            "normalize = \"address\"\n",
            "normalize = \"address\"\njoin = [[\"street_number\"], [\"street\"]]\n",
            1,
        );
        let schema = Schema::from_toml(&text).unwrap();
        let header = "arrest_id,given_name,street_number,street,arrest_date,warrant,violent,felony\n";
        let (both, _) = identities(&schema, &format!("{header}A1,Ann,12,Main Street,2019-03-04,y,n,n\n"));
        let (alone, _) = identities(
            &schema,
            "arrest_id,given_name,street,arrest_date,warrant,violent,felony\nA1,Ann,12 Main Street,2019-03-04,y,n,n\n",
        );
        assert_eq!(both, alone, "number and street joined by a space equal the two in one column");
        // A piece naming another field's column, or one named in two pieces, is refused.
        for join in ["[[\"street_number\"], [\"zip\"]]", "[[\"street\"], [\"street\"]]", "[[\"street\"]]"] {
            let text = crate::schema::DEFAULT_SCHEMA.replacen(
                "normalize = \"address\"\n",
                &format!("normalize = \"address\"\njoin = {join}\n"),
                1,
            );
            let problems = Schema::from_toml(&text).unwrap_err();
            assert!(problems.iter().any(|p| p.key.starts_with("identity.address.join")), "{join}: {problems:?}");
        }
    }

    #[test]
    fn a_row_debug_shows_no_birth_date_and_no_record_id() {
        let schema = schema();
        let kind = schema.kind("arrest").unwrap();
        let input = format!("{ARREST_HEADER}A7731,Smith,Ann,1980-03-14,M,2019-03-04,y,n,n\n");
        let mut r = Reader::new(&schema, kind, Format::Csv, input.as_bytes()).unwrap();
        let mut row = Row::new(&schema, kind);
        assert_eq!(r.next_row(&mut row, &mut Vec::new()).unwrap(), Some(Outcome::Accepted));
        assert!(row.birth_date.is_some() && row.record_id == "A7731");
        let shown = format!("{row:?}");
        for secret in ["A7731", "1980", "Smith", "Ann", "3652"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("redacted") && shown.contains("2019"), "{shown}");
    }

    #[test]
    fn a_required_identity_field_still_quarantines() {
        let text = crate::schema::DEFAULT_SCHEMA.replacen(
            "normalize = \"date\"\n",
            "normalize = \"date\"\nrequired = true\n",
            1,
        );
        let schema = Schema::from_toml(&text).unwrap();
        let kind = schema.kind("arrest").unwrap();
        let input = format!("{ARREST_HEADER}A1,Smith,Ann,13/45/1980,M,2019-03-04,y,n,n\nA2,Smith,Ann,2020-01-01,M,2019-03-04,y,n,n\nA3,Smith,Ann,,M,2019-03-04,y,n,n\n");
        let mut r = Reader::new(&schema, kind, Format::Csv, input.as_bytes()).unwrap();
        let mut row = Row::new(&schema, kind);
        let mut issues = Vec::new();
        while r.next_row(&mut row, &mut issues).unwrap().is_some() {}
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(issues.iter().all(|i| i.field == "dob" && i.action == Action::RowQuarantined), "{issues:?}");
    }

    #[test]
    fn headers_spelled_with_spaces_case_or_punctuation_map_to_their_fields() {
        let schema = schema();
        let kind = schema.kind("arrest").unwrap();
        let input = "Arrest ID,Last Name,FirstName,Date of Birth,Sex,Arrest-Date,WARRANT,violent,Felony,Soc. Sec. ID\n\
                     A1,Smith,Bo,1980-03-14,F,2019-03-04,y,n,n,1234567\n";
        let mut r = Reader::new(&schema, kind, Format::Csv, input.as_bytes()).unwrap();
        assert!(r.ignored_columns().is_empty(), "{:?}", r.ignored_columns());
        let mut row = Row::new(&schema, kind);
        let mut issues = Vec::new();
        assert_eq!(r.next_row(&mut row, &mut issues).unwrap(), Some(Outcome::Accepted), "{issues:?}");
        let field = |name: &str| schema.identity.iter().position(|f| f.name == name).unwrap();
        assert_eq!(row.identity.get(field("family_name")), Some("smith"));
        assert_eq!(row.identity.get(field("given_name")), Some("bo"));
        assert_eq!(row.identity.get(field("state_id")), Some("1234567"));
        assert!(row.birth_date.is_some());
        // RLdata500's header (R's RecordLinkage): names in `fname_c1` and `lname_c1`, the birth date in three.
        let header: Vec<String> =
            ["", "fname_c1", "lname_c1", "by", "bm", "bd"].iter().map(|s| s.to_string()).collect();
        let contact = schema.kind("contact").unwrap();
        let c = header_coverage(&schema, contact, &header);
        assert!(c.is_err(), "a contact needs its id and date: {c:?}");
        let with_event: Vec<String> =
            header.iter().cloned().chain(["contact_id".into(), "contact_date".into()]).collect();
        let c = header_coverage(&schema, contact, &with_event).unwrap();
        assert!(!c.schemes_unfed.iter().any(|(s, _)| s == "names_dob"), "{c:?}");
        assert!(c.unmapped_identity_columns.is_empty() && c.partial_joins.is_empty(), "{c:?}");
        // Two spellings of one header are one column given twice.
        let dup = "arrest_id,Arrest ID,last_name,first_name,dob,sex,arrest_date,warrant,violent,felony\n";
        assert!(matches!(run("arrest", Format::Csv, dup.as_bytes()), Err(IngestError::DuplicateColumn { .. })));
        // A header column of no letter or digit matches nothing: not a field whose name has the empty key
        // (a schema may not name one), and not the other such columns (no duplicate).
        let blank = format!("--,{},?\n", ARREST_HEADER.trim_end());
        let r = Reader::new(&schema, kind, Format::Csv, blank.as_bytes()).unwrap();
        assert_eq!(r.ignored_columns(), ["--".to_string(), "?".to_string()]);
    }

    #[test]
    fn header_coverage_names_unfed_schemes_and_unmapped_identity_columns() {
        let schema = schema();
        let kind = schema.kind("arrest").unwrap();
        let header: Vec<String> = [
            "arrest_id",
            "first_name",
            "surname",
            "Birth_Day",
            "arrest_date",
            "warrant",
            "violent",
            "felony",
            "notes",
            "Soc Sec No",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = header_coverage(&schema, kind, &header).unwrap();
        assert_eq!(c.unmapped_identity_columns, vec!["birth_day".to_string(), "soc sec no".to_string()]);
        let lacking = vec!["birth_year".to_string(), "birth_month".to_string()];
        assert_eq!(c.partial_joins, vec![("dob".to_string(), lacking)]);
        let unfed: Vec<&str> = c.schemes_unfed.iter().map(|(s, _)| s.as_str()).collect();
        assert!(unfed.contains(&"names_dob") && unfed.contains(&"state_id"), "{unfed:?}");
        assert!(c.schemes_unfed.iter().all(|(_, lack)| !lack.contains(&"given_name".to_string())));
    }

    #[test]
    fn missing_required_columns_refuse_the_file_naming_them() {
        let err = run("arrest", Format::Csv, b"arrest_id,given_name,arrest_date\nA1,Ann,2019-01-01\n").unwrap_err();
        let msg = err.to_string();
        for col in ["warrant", "violent", "felony"] {
            assert!(msg.contains(col), "{msg}");
        }
        for col in ["family_name", "dob", "sex"] {
            assert!(!msg.contains(col), "identity fields are optional: {msg}");
        }
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        assert!(matches!(run("arrest", Format::Csv, b""), Err(IngestError::Empty)));
        assert!(matches!(run("arrest", Format::Csv, b"\xff\xfe,a\n"), Err(IngestError::HeaderNotUtf8)));
        let unbalanced = format!("{ARREST_HEADER}A1,\"Smith,Ann,1980-01-01,M,2019-03-04,y,n,n\nA2,Lee,Bo,1980-01-01,M,2019-03-04,y,n,n\nA3,Lee,Bo,1980-01-01,M,2019-03-04,y,n,n\n");
        assert!(matches!(
            run("arrest", Format::Csv, unbalanced.as_bytes()),
            Err(IngestError::UnbalancedQuote { line: 2, .. })
        ));
        let dup = "arrest_id,family_name,last_name,given_name,dob,arrest_date,warrant,violent,felony\n";
        assert!(matches!(run("arrest", Format::Csv, dup.as_bytes()), Err(IngestError::DuplicateColumn { .. })));
        let huge = format!("{ARREST_HEADER}A1,{},Ann,1980-01-01,M,2019-03-04,y,n,n\n", "x".repeat(MAX_FIELD_BYTES + 1));
        let (acc, issues) = run("arrest", Format::Csv, huge.as_bytes()).unwrap();
        assert!(acc.is_empty() && issues[0].reason.contains("longer than"));
        let bad_utf8 = [ARREST_HEADER.as_bytes(), b"A1,Sm\xffth,Ann,1980-01-01,M,2019-03-04,y,n,n\n"].concat();
        let (acc, issues) = run("arrest", Format::Csv, &bad_utf8).unwrap();
        assert!(acc.is_empty() && issues[0].reason == "not valid UTF-8");
    }

    #[test]
    fn json_lines() {
        let input = br#"{"arrest_id":"A1","family_name":"Lee","given_name":"Bo","dob":"1980-01-01","arrest_date":"2019-03-04","warrant":true,"violent":false,"felony":"no"}

{"arrest_id":"A2","family_name":"Lee"}
not json
[1,2]
{"arrest_id":"A3","family_name":"Lee","given_name":"Bo","dob":"1980-01-01","arrest_date":"2019-03-04","warrant":true,"violent":false,"felony":{"x":1}}
"#;
        let (accepted, issues) = run("arrest", Format::JsonLines, input).unwrap();
        assert_eq!(accepted, vec![1]);
        let lines: Vec<u64> = issues.iter().map(|i| i.line).collect();
        assert!(lines.contains(&3) && lines.contains(&4) && lines.contains(&5) && lines.contains(&6), "{issues:?}");
    }

    #[test]
    fn line_numbers_count_physical_lines_whatever_the_line_ends() {
        for nl in ["\n", "\r\n", "\r"] {
            let rows = [
                ARREST_HEADER.trim_end(),
                "",
                "A1,Lee,Bo,1980-01-01,M,2019-03-04,y,n,n",
                "   ",
                "A2,\"Lee",
                "Jr\",Bo,1980-01-01,M,2019-03-04,y,n,n",
                "A3,Lee,Bo,1980-01-01,M,2019-03-04,y,n,n",
            ];
            let text = rows.join(nl);
            for input in [text.clone(), format!("{text}{nl}")] {
                let (accepted, issues) = run("arrest", Format::Csv, input.as_bytes()).unwrap();
                assert_eq!(accepted, vec![3, 5, 7], "line end {nl:?}: {issues:?}");
            }
        }
    }

    #[test]
    fn ages() {
        let d = |y, m, dd| Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), dd).unwrap();
        assert_eq!(age_at(d(1980, 3, 14), d(2019, 3, 13)), 38);
        assert_eq!(age_at(d(1980, 3, 14), d(2019, 3, 14)), 39);
        assert_eq!(age_at(d(2000, 2, 29), d(2001, 2, 28)), 0);
    }
}
