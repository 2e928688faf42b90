//! The raw form of accepted records, kept encrypted so they can be re-pseudonymized after a key rotation: a reader that walks an export in step with `ingest::Reader`, and the chunk encoding.
//!
//! A raw chunk is the original input of up to [`RAW_CHUNK_ROWS`] accepted
//! rows: for CSV the row's fields (columns the schema maps; ignored columns
//! are not kept), for JSON lines the line. Chunk 0 of a file is its header:
//! format, kind and (CSV) the kept column names. Encoding, all integers
//! little-endian:
//!
//! ```text
//! header chunk: version u8, format u8 (0 CSV, 1 JSON lines), kind (u32 len, bytes), n u32, n × (u32 len, bytes)
//! row chunk:    version u8, rows u32, rows × (line u64, n u32, n × (u32 len, bytes))
//! ```

use std::io::{self, BufRead, BufReader, Read};

use crate::ingest::{Format, LineEnds, MAX_LINE_BYTES};

use super::crypt::SecretBuf;

/// Version byte of the chunk encoding.
pub const RAW_VERSION: u8 = 1;
/// Accepted rows per raw chunk (one store value).
pub const RAW_CHUNK_ROWS: usize = 1000;
/// A chunk is also sealed once its plaintext reaches this size.
pub const RAW_CHUNK_MAX_BYTES: usize = 48 * 1024;

fn put_u32(out: &mut SecretBuf, n: usize) {
    out.extend(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut SecretBuf, b: &[u8]) {
    put_u32(out, b.len());
    out.extend(b);
}

/// Encode the header chunk of a file.
pub fn encode_header(format: Format, kind: &str, columns: &[String]) -> SecretBuf {
    let mut out = SecretBuf::with_capacity(64 + columns.iter().map(|c| c.len() + 4).sum::<usize>());
    out.extend(&[RAW_VERSION, format_byte(format)]);
    put_bytes(&mut out, kind.as_bytes());
    put_u32(&mut out, columns.len());
    for c in columns {
        put_bytes(&mut out, c.as_bytes());
    }
    out
}

fn format_byte(f: Format) -> u8 {
    match f {
        Format::Csv => 0,
        Format::JsonLines => 1,
    }
}

/// A decoded header chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub format: Format,
    pub kind: String,
    pub columns: Vec<String>,
}

/// Why a decrypted chunk could not be decoded (a bug or a foreign value: never data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a raw chunk is malformed ({0})")]
pub struct DecodeError(&'static str);

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()?;
        self.take(n)
    }
}

pub fn decode_header(buf: &[u8]) -> Result<RawHeader, DecodeError> {
    let mut c = Cursor(buf);
    if c.u8()? != RAW_VERSION {
        return Err(DecodeError("unknown version"));
    }
    let format = match c.u8()? {
        0 => Format::Csv,
        1 => Format::JsonLines,
        _ => return Err(DecodeError("unknown format")),
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| DecodeError("a name is not UTF-8"));
    let kind = text(c.bytes()?)?;
    let n = c.u32()?;
    let mut columns = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        columns.push(text(c.bytes()?)?);
    }
    Ok(RawHeader { format, kind, columns })
}

/// Call `f(line, fields)` for every row of a row chunk.
pub fn for_each_row(buf: &[u8], mut f: impl FnMut(u64, &[&[u8]])) -> Result<usize, DecodeError> {
    let mut c = Cursor(buf);
    if c.u8()? != RAW_VERSION {
        return Err(DecodeError("unknown version"));
    }
    let rows = c.u32()?;
    let mut fields: Vec<&[u8]> = Vec::new();
    for _ in 0..rows {
        let line = c.u64()?;
        let n = c.u32()?;
        fields.clear();
        for _ in 0..n {
            fields.push(c.bytes()?);
        }
        f(line, &fields);
    }
    if !c.0.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(rows)
}

/// Builds one row chunk.
pub struct ChunkBuilder {
    buf: SecretBuf,
    rows: usize,
}

impl Default for ChunkBuilder {
    fn default() -> Self {
        ChunkBuilder::new()
    }
}

impl ChunkBuilder {
    pub fn new() -> ChunkBuilder {
        let mut buf = SecretBuf::with_capacity(256 * 1024);
        buf.extend(&[RAW_VERSION, 0, 0, 0, 0]);
        ChunkBuilder { buf, rows: 0 }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of plaintext so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Start a row: its line and number of fields; then call [`ChunkBuilder::field`] that many times.
    fn begin_row(&mut self, line: u64, fields: usize) {
        self.buf.extend(&line.to_le_bytes());
        put_u32(&mut self.buf, fields);
        self.rows += 1;
    }

    fn field(&mut self, b: &[u8]) {
        put_bytes(&mut self.buf, b);
    }

    /// Add a whole row as [`for_each_row`] reads it (a chunk rewritten without some rows).
    pub fn push_row(&mut self, line: u64, fields: &[&[u8]]) {
        self.begin_row(line, fields.len());
        for f in fields {
            self.field(f);
        }
    }

    /// The finished chunk's plaintext (row count patched in). Wipe it with [`ChunkBuilder::reset`].
    pub fn finish(&mut self) -> &[u8] {
        let n = u32::try_from(self.rows).unwrap_or(u32::MAX).to_le_bytes();
        if let Some(count) = self.buf.as_mut_slice().get_mut(1..5) {
            count.copy_from_slice(&n);
        }
        self.buf.as_slice()
    }

    /// Wipe and start the next chunk.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.extend(&[RAW_VERSION, 0, 0, 0, 0]);
        self.rows = 0;
    }
}

/// Reads the same records as `ingest::Reader` over the same bytes, one per
/// row the ingest reader reports (accepted or quarantined), so the raw input
/// of each accepted row can be kept.
pub enum RawReader<R: Read> {
    Csv {
        reader: csv::Reader<LineEnds<R>>,
        record: csv::ByteRecord,
        /// Indexes of the columns kept.
        keep: Vec<usize>,
        /// Header names as ingest normalizes them.
        names: Vec<String>,
    },
    Json {
        reader: BufReader<R>,
        buf: Vec<u8>,
        line: u64,
    },
}

/// The raw reader lost step with the ingest reader: a bug, reported without data.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("reading the export again for the raw store: {0}")]
    Io(#[from] io::Error),
    #[error("the raw copy of the export went out of step at line {0} (internal error)")]
    OutOfStep(u64),
}

impl<R: Read> RawReader<R> {
    /// Open the export; for CSV read the header as ingest does.
    pub fn new(format: Format, input: R) -> Result<RawReader<R>, RawError> {
        match format {
            Format::Csv => {
                let mut reader =
                    csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(LineEnds::new(input));
                let mut header = csv::ByteRecord::new();
                reader.read_byte_record(&mut header).map_err(|e| RawError::Io(io::Error::other(e.to_string())))?;
                let names = header
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).trim().trim_start_matches('\u{feff}').to_lowercase())
                    .collect::<Vec<_>>();
                let keep = (0..names.len()).collect();
                Ok(RawReader::Csv { reader, record: csv::ByteRecord::new(), keep, names })
            }
            Format::JsonLines => Ok(RawReader::Json { reader: BufReader::new(input), buf: Vec::new(), line: 0 }),
        }
    }

    /// Keep only the columns ingest maps (drop the ones it ignores). Returns the kept names.
    pub fn keep_mapped(&mut self, ignored: &[String]) -> Vec<String> {
        match self {
            RawReader::Csv { keep, names, .. } => {
                *keep = (0..names.len()).filter(|&i| !ignored.contains(&names[i])).collect();
                keep.iter().map(|&i| names[i].clone()).collect()
            }
            RawReader::Json { .. } => Vec::new(),
        }
    }

    /// Advance to the next record. When `into` is given, append the record
    /// (as a row at `line`) to it. `line` is the ingest reader's line of the
    /// row, checked against ours for JSON lines.
    pub fn next(&mut self, line: u64, into: Option<&mut ChunkBuilder>) -> Result<(), RawError> {
        match self {
            RawReader::Csv { reader, record, keep, .. } => {
                loop {
                    let got = reader.read_byte_record(record).map_err(|e| match e.kind() {
                        csv::ErrorKind::Io(_) => RawError::Io(io::Error::other(e.to_string())),
                        _ => RawError::OutOfStep(line),
                    })?;
                    if !got {
                        return Err(RawError::OutOfStep(line));
                    }
                    let blank =
                        record.len() == 1 && record.get(0).is_some_and(|f| f.iter().all(u8::is_ascii_whitespace));
                    if !blank {
                        break;
                    }
                }
                if let Some(chunk) = into {
                    chunk.begin_row(line, keep.len());
                    for &i in keep.iter() {
                        chunk.field(record.get(i).unwrap_or_default());
                    }
                }
            }
            RawReader::Json { reader, buf, line: ours } => {
                loop {
                    buf.zeroize_clear();
                    *ours += 1;
                    let n = reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', buf)?;
                    if n == 0 || buf.len() > MAX_LINE_BYTES {
                        return Err(RawError::OutOfStep(line));
                    }
                    if !buf.iter().all(u8::is_ascii_whitespace) {
                        break;
                    }
                }
                if *ours != line {
                    return Err(RawError::OutOfStep(line));
                }
                if let Some(chunk) = into {
                    let mut text: &[u8] = buf;
                    if let Some(t) = text.strip_suffix(b"\n") {
                        text = t;
                    }
                    if let Some(t) = text.strip_suffix(b"\r") {
                        text = t;
                    }
                    chunk.begin_row(line, 1);
                    chunk.field(text);
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Drop for RawReader<R> {
    fn drop(&mut self) {
        if let RawReader::Json { buf, .. } = self {
            buf.zeroize_clear();
        }
    }
}

trait ZeroizeClear {
    fn zeroize_clear(&mut self);
}

impl ZeroizeClear for Vec<u8> {
    fn zeroize_clear(&mut self) {
        use zeroize::Zeroize;
        self.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Outcome, Reader, Row};
    use crate::schema::Schema;

    /// Walk an export with both readers; return the raw rows kept for accepted rows.
    fn walk(format: Format, input: &[u8]) -> (Vec<String>, Vec<(u64, Vec<String>)>) {
        let schema = Schema::default_schema().unwrap();
        let kind = schema.kind("arrest").unwrap();
        let mut reader = Reader::new(&schema, kind, format, input).unwrap();
        let mut raw = RawReader::new(format, input).unwrap();
        let cols = raw.keep_mapped(reader.ignored_columns());
        let mut row = Row::new(&schema, kind);
        let mut issues = Vec::new();
        let mut chunk = ChunkBuilder::new();
        while let Some(o) = reader.next_row(&mut row, &mut issues).unwrap() {
            raw.next(row.line, (o == Outcome::Accepted).then_some(&mut chunk)).unwrap();
        }
        let mut rows = Vec::new();
        let n = for_each_row(chunk.finish(), |line, fields| {
            rows.push((line, fields.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()))
        })
        .unwrap();
        assert_eq!(n, rows.len());
        (cols, rows)
    }

    #[test]
    fn csv_rows_in_step_with_ingest_mapped_columns_only() {
        let input = "\u{feff}Arrest_ID,LAST_NAME,first_name,DOB,sex,arrest_date,warrant,violent,felony,notes\r\n\
                     \r\n\
                     A1,\"O'Brien, Jr.\",Bill,3/14/1980,M,2019-03-04,Y,n,0,secret note\r\n\
                     A2,Smith,Ann,13/45/1980,F,2019-03-04,y,n,n,x\r\n\
                     A3,\"Lee\r\nJr\",Bo,1980-01-01,M,2019-03-04,y,n,n,y\r\n";
        let (cols, rows) = walk(Format::Csv, input.as_bytes());
        assert_eq!(
            cols,
            ["arrest_id", "last_name", "first_name", "dob", "sex", "arrest_date", "warrant", "violent", "felony"]
        );
        // The unusable birth date of A2 is dropped, not the row (identity fields are optional).
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0].0, 3);
        assert_eq!(rows[0].1[1], "O'Brien, Jr.");
        assert_eq!(rows[0].1.len(), 9, "the ignored notes column is not kept");
        assert_eq!((rows[1].0, rows[1].1[0].as_str()), (4, "A2"));
        assert_eq!(rows[2].0, 5);
        assert_eq!(rows[2].1[0], "A3");
    }

    #[test]
    fn json_lines_kept_as_lines() {
        let input = b"{\"arrest_id\":\"A1\",\"family_name\":\"Lee\",\"given_name\":\"Bo\",\"dob\":\"1980-01-01\",\"arrest_date\":\"2019-03-04\",\"warrant\":true,\"violent\":false,\"felony\":\"no\"}\r\n\n  \nnot json\n";
        let (_, rows) = walk(Format::JsonLines, input);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, 1);
        assert!(rows[0].1[0].starts_with("{\"arrest_id\"") && rows[0].1[0].ends_with('}'));
    }

    #[test]
    fn header_round_trip() {
        let h = encode_header(Format::Csv, "arrest", &["a".into(), "b".into()]);
        assert_eq!(
            decode_header(h.as_slice()).unwrap(),
            RawHeader { format: Format::Csv, kind: "arrest".into(), columns: vec!["a".into(), "b".into()] }
        );
        assert!(decode_header(&h.as_slice()[..5]).is_err());
    }
}
