//! Keyed tokens: per-scheme HMAC-SHA256 keys derived from the epoch key, and the unambiguous encoding of a scheme's parts.
//!
//! Pure: takes normalized identity values and a key, returns tokens.
//!
//! A [`Scratch`] remembers the tokens of the identities it has seen (its
//! memo), keyed by a keyed digest of the identity, never the values: a
//! person's tenth contact record costs one HMAC, not one per scheme.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::hmac;

use crate::identity::Identity;
use crate::keys::{EpochKey, KeyError};
use crate::normalize::{self, NormKind};
use crate::schema::{Schema, Transform};

/// Bytes of a token: HMAC-SHA256 truncated to 128 bits (RFC 2104 allows
/// truncation to half the output; 2^-128 collisions are far below any
/// program's scale) to halve what every record carries.
pub const TOKEN_LEN: usize = 16;

/// A token's value.
pub type Token = [u8; TOKEN_LEN];

/// HKDF info prefix for a scheme's key; the scheme's name follows it.
const SCHEME_INFO: &[u8] = b"divert/v1/scheme/";
/// HKDF info for the record-id key.
const RECORD_ID_INFO: &[u8] = b"divert/v1/record-id";
/// HKDF info for the key of a [`Scratch`]'s memo digests.
const MEMO_INFO: &[u8] = b"divert/v1/token-memo";

/// How many identities a [`Scratch`] remembers by default (about 350 bytes
/// each with the default schema, 23 MB when full); when full it forgets
/// them all and starts over.
pub const MEMO_ENTRIES: usize = 1 << 16;
/// The memo's lookups are judged in windows of this many records, once it
/// has been full (before, it is still learning the file's persons): a
/// window that finds fewer than [`MEMO_WORTH`] of them remembered costs
/// more than it saves (a digest of every field for each miss), so the memo
/// rests for [`MEMO_REST`] records, then looks again.
const MEMO_WINDOW: u32 = 4096;
/// The least share of a window's records served from the memo to keep it on.
const MEMO_WORTH: u32 = MEMO_WINDOW / 8;
const MEMO_REST: u32 = 1 << 16;

/// Numbers each [`Tokenizer`], so a [`Scratch`] never serves one
/// tokenizer's tokens to another (another key, epoch or schema).
static NEXT_TOKENIZER: AtomicU64 = AtomicU64::new(1);

/// Computes the tokens of records under one epoch key and one schema.
pub struct Tokenizer {
    epoch: u32,
    keys: Vec<hmac::Key>,
    record_id_key: hmac::Key,
    /// The distinct parts the schemes use: (identity field, transform, map
    /// the value through the nickname table first). Worked out once per
    /// record, whichever schemes share them.
    specs: Vec<(usize, Transform, bool)>,
    /// Per spec: it takes more of a date than its year (the whole date, its
    /// month or day), which a date known only by its year (`YYYY`) cannot give.
    beyond_year: Vec<bool>,
    schemes: Vec<SchemePlan>,
    /// Identity fields some scheme nickname-maps (family names in an unordered name group).
    nick_fields: Vec<usize>,
    /// The most parts any scheme has (its message's room, with the source's name).
    most_parts: usize,
    /// Keys the memo's digests of an identity.
    memo_key: hmac::Key,
    /// The identity fields any scheme reads (ascending): what a memo digest covers.
    memo_fields: Vec<usize>,
    /// This tokenizer's number (see [`NEXT_TOKENIZER`]).
    serial: u64,
}

struct SchemePlan {
    /// Each part's position in [`Tokenizer::specs`], in the scheme's order.
    parts: Vec<usize>,
    /// Groups of positions (ascending) whose values are encoded sorted.
    unordered: Vec<Vec<usize>>,
    /// The source's name is hashed after the parts (an agency's own person number).
    per_source: bool,
}

/// Reusable buffers for [`Tokenizer::tokens`], zeroized when dropped, and
/// the memo of tokens already computed.
pub struct Scratch {
    /// Per identity field, its nickname-mapped form when a scheme needs it
    /// (looked up once per record, not once per scheme): a table entry.
    nick: Vec<Option<&'static str>>,
    /// Per part spec, its value for the record; empty when it has none.
    values: Vec<String>,
    /// A scheme's parts (spec positions) in the order they are encoded.
    order: Vec<usize>,
    /// One unordered group's parts, being sorted.
    group: Vec<usize>,
    message: Vec<u8>,
    memo: Memo,
}

/// Tokens by the keyed digest of the identity (and source) they were
/// computed from. Neither holds an identity value: the digests are HMACs
/// under a key derived from the epoch key, and tokens leave the agency anyway.
struct Memo {
    tokens: HashMap<[u8; 32], Box<[Option<Token>]>>,
    /// The most entries it holds; 0 turns it off.
    entries: usize,
    /// The [`Tokenizer::serial`] its entries came from.
    owner: u64,
    /// Lookups and hits in the current window (see [`MEMO_WINDOW`]).
    looked: u32,
    found: u32,
    /// Records left to tokenize without it before it looks again.
    resting: u32,
    /// Whether it has been full: only then can a window judge it.
    warmed: bool,
    /// Records served from it, in all.
    served: u64,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::with_memo(MEMO_ENTRIES)
    }
}

impl Scratch {
    /// Buffers whose memo holds at most `entries` identities; 0: no memo,
    /// every record is hashed scheme by scheme.
    pub fn with_memo(entries: usize) -> Scratch {
        Scratch {
            nick: Vec::new(),
            values: Vec::new(),
            order: Vec::new(),
            group: Vec::new(),
            message: Vec::new(),
            memo: Memo {
                tokens: HashMap::new(),
                entries,
                owner: 0,
                looked: 0,
                found: 0,
                resting: 0,
                warmed: false,
                served: 0,
            },
        }
    }

    /// Identities in the memo now.
    pub fn memo_len(&self) -> usize {
        self.memo.tokens.len()
    }

    /// Records whose tokens came from the memo, since this scratch was made.
    pub fn memo_served(&self) -> u64 {
        self.memo.served
    }
}

impl Memo {
    /// Whether to look this record up: not when off or resting.
    fn consult(&mut self, serial: u64) -> bool {
        if self.entries == 0 {
            return false;
        }
        if self.resting > 0 {
            self.resting -= 1;
            return false;
        }
        if self.owner != serial {
            self.tokens.clear();
            self.owner = serial;
            self.warmed = false;
        }
        true
    }

    /// Count a lookup; at a window's end, rest if it found too few (once warmed).
    fn looked_up(&mut self, hit: bool) {
        self.looked += 1;
        self.found += u32::from(hit);
        self.served += u64::from(hit);
        if self.looked == MEMO_WINDOW {
            if self.warmed && self.found < MEMO_WORTH {
                self.resting = MEMO_REST;
            }
            self.looked = 0;
            self.found = 0;
        }
    }

    fn remember(&mut self, digest: [u8; 32], tokens: &[Option<Token>]) {
        if self.tokens.len() >= self.entries {
            self.tokens.clear();
            self.warmed = true;
        }
        self.tokens.insert(digest, tokens.into());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.values.iter_mut().for_each(crate::identity::wipe);
        self.message.zeroize();
    }
}

impl Tokenizer {
    pub fn new(schema: &Schema, key: &EpochKey) -> Result<Tokenizer, KeyError> {
        let mut keys = Vec::with_capacity(schema.schemes.len());
        for s in &schema.schemes {
            let mut info = SCHEME_INFO.to_vec();
            info.extend_from_slice(s.name.as_bytes());
            keys.push(key.derive_hmac_key(&info)?);
        }
        let mut specs: Vec<(usize, Transform, bool)> = Vec::new();
        let schemes: Vec<SchemePlan> = schema
            .schemes
            .iter()
            .map(|s| {
                // In an unordered group that holds a given name, a family name is
                // nickname-mapped too: with names swapped between agencies, the
                // family column holds the nickname ("Bill") the given side maps.
                let norm = |i: usize| schema.identity[s.parts[i].field].norm;
                let nick_groups: Vec<&Vec<usize>> =
                    s.unordered.iter().filter(|g| g.iter().any(|&i| norm(i) == NormKind::GivenName)).collect();
                SchemePlan {
                    parts: s
                        .parts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let nick = norm(i) == NormKind::FamilyName && nick_groups.iter().any(|g| g.contains(&i));
                            let spec = (p.field, p.transform, nick);
                            specs.iter().position(|x| *x == spec).unwrap_or_else(|| {
                                specs.push(spec);
                                specs.len() - 1
                            })
                        })
                        .collect(),
                    unordered: s.unordered.clone(),
                    per_source: s.per_source,
                }
            })
            .collect();
        let mut nick_fields: Vec<usize> = specs.iter().filter(|x| x.2).map(|x| x.0).collect();
        nick_fields.sort_unstable();
        nick_fields.dedup();
        let beyond_year =
            specs.iter().map(|&(f, t, _)| schema.identity[f].norm == NormKind::Date && t != Transform::Year).collect();
        let mut memo_fields: Vec<usize> = specs.iter().map(|x| x.0).collect();
        memo_fields.sort_unstable();
        memo_fields.dedup();
        Ok(Tokenizer {
            memo_key: key.derive_hmac_key(MEMO_INFO)?,
            memo_fields,
            serial: NEXT_TOKENIZER.fetch_add(1, Ordering::Relaxed),
            most_parts: schemes.iter().map(|p| p.parts.len()).max().unwrap_or(0),
            epoch: key.epoch(),
            nick_fields,
            keys,
            record_id_key: key.derive_hmac_key(RECORD_ID_INFO)?,
            specs,
            beyond_year,
            schemes,
        })
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// One token per scheme into `out` (resized to the number of schemes);
    /// `None` where the record lacks a field the scheme needs. `source` is
    /// the sending source's name: per-source schemes hash it after the parts,
    /// so two agencies' person numbers never agree.
    ///
    /// An identity met before (the same values in every field a scheme
    /// reads, from the same source) gets the tokens remembered in
    /// `scratch`'s memo: the same tokens, for one HMAC instead of one per scheme.
    pub fn tokens(&self, id: &Identity, source: &str, scratch: &mut Scratch, out: &mut Vec<Option<Token>>) {
        out.clear();
        if !scratch.memo.consult(self.serial) {
            self.compute(id, source, scratch, out);
            return;
        }
        let digest = self.memo_digest(id, source, &mut scratch.message);
        let hit = match scratch.memo.tokens.get(&digest) {
            Some(known) => {
                out.extend_from_slice(known);
                true
            }
            None => false,
        };
        scratch.memo.looked_up(hit);
        if !hit {
            self.compute(id, source, scratch, out);
            scratch.memo.remember(digest, out);
        }
    }

    /// The memo's key for an identity: HMAC over every field a scheme reads
    /// (a presence byte, then the value length-prefixed) and the source's name.
    fn memo_digest(&self, id: &Identity, source: &str, message: &mut Vec<u8>) -> [u8; 32] {
        let room =
            self.memo_fields.iter().map(|&f| 5 + id.get(f).map_or(0, str::len)).sum::<usize>() + 4 + source.len();
        // Reserved while empty (it is zeroed after each use): growing it moves no value.
        message.clear();
        message.reserve(room);
        for &f in &self.memo_fields {
            match id.get(f) {
                Some(v) => {
                    message.push(1);
                    put_part(message, v);
                }
                None => message.push(0),
            }
        }
        put_part(message, source);
        let tag = hmac::sign(&self.memo_key, message);
        message.iter_mut().for_each(|b| *b = 0);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(tag.as_ref());
        digest
    }

    /// The tokens of `id`, scheme by scheme, appended to `out`.
    fn compute(&self, id: &Identity, source: &str, scratch: &mut Scratch, out: &mut Vec<Option<Token>>) {
        scratch.nick.clear();
        scratch.nick.resize(id.len(), None);
        for &f in &self.nick_fields {
            scratch.nick[f] = id.get(f).and_then(normalize::nickname_canonical);
        }
        if scratch.values.len() < self.specs.len() {
            scratch.values.resize_with(self.specs.len(), String::new);
        }
        for ((&(field, t, nick), &beyond_year), buf) in
            self.specs.iter().zip(&self.beyond_year).zip(&mut scratch.values)
        {
            buf.clear();
            if let Some(mut value) = id.get(field) {
                if beyond_year && normalize::year_only(value).is_some() {
                    continue;
                }
                if nick {
                    value = scratch.nick.get(field).copied().flatten().unwrap_or(value);
                }
                // A transform's result is at most its input and a Soundex
                // code: with that room the buffer never moves, and what it
                // held (an earlier record's part) is wiped before it grows.
                let room = value.len() + 4;
                if buf.capacity() < room {
                    crate::identity::wipe(buf);
                    buf.reserve(room);
                }
                apply(t, value, buf);
            }
        }
        // Room for any scheme's message, reserved while it is empty and zero
        // (it is zeroed after each use): growing it moves no value.
        let longest = scratch.values.iter().map(String::len).max().unwrap_or(0);
        let most = self.most_parts * (4 + longest) + 4 + source.len();
        scratch.message.clear();
        scratch.message.reserve(most);
        for (plan, key) in self.schemes.iter().zip(&self.keys) {
            out.push(Self::scheme_token(plan, key, source, scratch));
        }
    }

    fn scheme_token(plan: &SchemePlan, key: &hmac::Key, source: &str, scratch: &mut Scratch) -> Option<Token> {
        let Scratch { values, order, group, message, .. } = scratch;
        order.clear();
        for &spec in &plan.parts {
            // A field the record lacks, or a transform that leaves nothing: no token.
            if values[spec].is_empty() {
                return None;
            }
            order.push(spec);
        }
        for positions in &plan.unordered {
            // Order-insensitive parts: their values go back sorted, so
            // (given, family) and (family, given) encode the same.
            group.clear();
            group.extend(positions.iter().map(|&p| order[p]));
            group.sort_unstable_by(|&a, &b| values[a].cmp(&values[b]));
            for (&p, &spec) in positions.iter().zip(group.iter()) {
                order[p] = spec;
            }
        }
        // Unambiguous: every part is length-prefixed, so ("ab","c") ≠ ("a","bc").
        // One buffer and one HMAC update: the hot path of pseudonymization.
        // Within the room `tokens` reserved: it never moves.
        message.clear();
        for &spec in order.iter() {
            put_part(message, &values[spec]);
        }
        if plan.per_source {
            put_part(message, source);
        }
        let tag = hmac::sign(key, message);
        message.iter_mut().for_each(|b| *b = 0);
        Some(truncate(tag.as_ref()))
    }

    /// The keyed hash of an agency's record id, so re-sends of one record are
    /// recognised by the steward without the id itself leaving the agency.
    pub fn record_id(&self, source: &str, kind: &str, record_id: &str) -> Token {
        // The agency's own id: wiped when dropped, never moved (room for all of it).
        let mut msg = zeroize::Zeroizing::new(Vec::with_capacity(source.len() + kind.len() + record_id.len() + 12));
        for part in [source, kind, record_id] {
            put_part(&mut msg, part);
        }
        truncate(hmac::sign(&self.record_id_key, &msg).as_ref())
    }
}

/// A part of a hashed message, length-prefixed (u32, big-endian) so that
/// ("ab", "c") and ("a", "bc") never give the same bytes.
fn put_part(message: &mut Vec<u8>, part: &str) {
    message.extend_from_slice(&(part.len() as u32).to_be_bytes());
    message.extend_from_slice(part.as_bytes());
}

fn truncate(tag: &[u8]) -> Token {
    let mut t = [0u8; TOKEN_LEN];
    t.copy_from_slice(&tag[..TOKEN_LEN]);
    t
}

/// Apply a transform to a normalized value. Dates are `YYYY-MM-DD` (or
/// `YYYY`, known only by the year: only `year` is applied to them); names
/// are ASCII letters, but prefixes still cut on character boundaries.
fn apply(t: Transform, value: &str, out: &mut String) {
    let prefix = |n: usize| value.char_indices().nth(n).map_or(value, |(i, _)| &value[..i]);
    match t {
        Transform::Full => out.push_str(value),
        Transform::Initial => out.push_str(prefix(1)),
        Transform::Prefix(n) => out.push_str(prefix(usize::from(n))),
        Transform::Suffix(n) => {
            let n = usize::from(n);
            let count = value.chars().count();
            let start = value.char_indices().nth(count.saturating_sub(n)).map_or(0, |(i, _)| i);
            out.push_str(&value[start..]);
        }
        Transform::Soundex => normalize::soundex(value, out),
        Transform::Year => out.push_str(value.get(0..4).unwrap_or("")),
        Transform::Month => out.push_str(value.get(5..7).unwrap_or("")),
        Transform::Day => out.push_str(value.get(8..10).unwrap_or("")),
        Transform::YearMonth => out.push_str(value.get(0..7).unwrap_or("")),
    }
}

/// A token as it travels: `<epoch>:<32 hex digits>`.
pub fn format_token(epoch: u32, t: &Token) -> String {
    format!("{epoch}:{}", crate::hex::encode(t))
}

/// Parse `<epoch>:<32 hex digits>`.
pub fn parse_token(s: &str) -> Option<(u32, Token)> {
    let (e, h) = s.split_once(':')?;
    let epoch = e.parse().ok()?;
    Some((epoch, crate::hex::decode_array(h)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn identity(schema: &Schema, values: &[(&str, &str)]) -> Identity {
        let mut id = Identity::with_fields(schema.identity.len());
        for (name, raw) in values {
            let i = schema.identity_index(name).unwrap();
            let norm = schema.identity[i].norm;
            let ok = normalize(norm, raw, id.slot(i)).is_ok();
            id.set_present(i, ok);
        }
        id
    }

    fn toks(schema: &Schema, key: &EpochKey, values: &[(&str, &str)]) -> Vec<Option<Token>> {
        let t = Tokenizer::new(schema, key).unwrap();
        let mut out = Vec::new();
        t.tokens(&identity(schema, values), "police", &mut Scratch::default(), &mut out);
        out
    }

    fn agree(a: &[Option<Token>], b: &[Option<Token>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x.is_some() && x == y).count()
    }

    #[test]
    fn one_wrong_field_or_swapped_names_still_agree() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let base = [("given_name", "William"), ("family_name", "O'Brien"), ("dob", "1980-03-14"), ("sex", "M")];
        let t0 = toks(&schema, &key, &base);
        // Every scheme gets a token but those needing a state id, address, postal code or city.
        let fed = |s: &crate::schema::Scheme| {
            s.parts
                .iter()
                .all(|p| ["given_name", "family_name", "dob", "sex"].contains(&schema.identity[p.field].name.as_str()))
        };
        for (t, s) in t0.iter().zip(&schema.schemes) {
            assert_eq!(t.is_some(), fed(s), "{}", s.name);
        }
        let variants: Vec<Vec<(&str, &str)>> = vec![
            vec![("given_name", "Bill"), ("family_name", "OBRIEN"), ("dob", "3/14/1980"), ("sex", "male")],
            vec![("given_name", "Wiliam"), ("family_name", "O'Brien"), ("dob", "1980-03-14"), ("sex", "M")],
            vec![("given_name", "Xilliam"), ("family_name", "O'Brien"), ("dob", "1980-03-14"), ("sex", "M")],
            vec![("given_name", "William"), ("family_name", "Obrian"), ("dob", "1980-03-14"), ("sex", "M")],
            vec![("given_name", "William"), ("family_name", "O'Brien"), ("dob", "1980-03-15"), ("sex", "M")],
            vec![("given_name", "William"), ("family_name", "O'Brien"), ("dob", "1908-03-14"), ("sex", "M")],
            vec![("given_name", "William"), ("family_name", "O'Brien"), ("dob", "1980-03-14"), ("sex", "F")],
            vec![("given_name", "O'Brien"), ("family_name", "William"), ("dob", "1980-03-14"), ("sex", "M")],
            // A space inside the given name, a middle name, no sex, a month and day both wrong:
            vec![("given_name", "Wil Liam"), ("family_name", "O'Brien"), ("dob", "1980-03-14"), ("sex", "M")],
            vec![("given_name", "William Ray"), ("family_name", "O Brien"), ("dob", "1980-03-14"), ("sex", "M")],
            vec![("given_name", "William"), ("family_name", "O'Brien"), ("dob", "1980-03-14")],
            vec![("given_name", "William"), ("family_name", "O'Brien"), ("dob", "1980-12-04"), ("sex", "M")],
        ];
        for v in &variants {
            let t = toks(&schema, &key, v);
            assert!(agree(&t0, &t) >= 1, "variant {} shares no token", variants.iter().position(|x| x == v).unwrap());
        }
        // A different person shares none.
        let other = toks(&schema, &key, &[("given_name", "Mary"), ("family_name", "Smith"), ("dob", "1975-11-02")]);
        assert_eq!(agree(&t0, &other), 0);
    }

    #[test]
    fn both_names_wrong_and_the_id_mistyped_still_agree_by_birth_date_and_home() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let at = |name: &str| schema.scheme_index(name).unwrap();
        let home = [("dob", "1923-04-13"), ("address", "16 Hurley Street"), ("postal_code", "02100")];
        let a = toks(
            &schema,
            &key,
            &[&home[..], &[("given_name", "Georgia"), ("family_name", "Simmonds"), ("state_id", "5714719")]].concat(),
        );
        // Both names misspelt and two id digits transposed: no name or id scheme agrees.
        let b = toks(
            &schema,
            &key,
            &[&home[..], &[("given_name", "Geogia"), ("family_name", "Simmovnds"), ("state_id", "5714791")]].concat(),
        );
        for name in ["names_dob", "family_dob", "state_id", "names_postal_code"] {
            assert_ne!(a[at(name)], b[at(name)], "{name}");
        }
        assert!(a[at("dob_address")].is_some());
        assert_eq!(a[at("dob_address")], b[at("dob_address")]);
        assert_eq!(a[at("dob_postal_code_family_initial")], b[at("dob_postal_code_family_initial")]);
        // No given name and another street spelling: the postal code and the family initial still agree.
        let c = toks(
            &schema,
            &key,
            &[
                ("dob", "1923-04-13"),
                ("postal_code", "02100"),
                ("family_name", "Simonds"),
                ("address", "16 Hurley St Rear"),
            ],
        );
        assert_eq!(a[at("dob_postal_code_family_initial")], c[at("dob_postal_code_family_initial")]);
        // A neighbour born on another day shares nothing.
        let d = toks(
            &schema,
            &key,
            &[
                ("dob", "1923-04-14"),
                ("address", "16 Hurley Street"),
                ("postal_code", "02100"),
                ("family_name", "Simmonds"),
            ],
        );
        assert_eq!(agree(&a, &d), 0);
    }

    #[test]
    fn a_changed_family_name_agrees_by_given_name_and_home_but_a_sibling_does_not() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let at = |name: &str| schema.scheme_index(name).unwrap();
        let home = [("address", "123 Slessor Crescent"), ("postal_code", "2517")];
        let a = toks(
            &schema,
            &key,
            &[&home[..], &[("given_name", "April"), ("family_name", "Harrington"), ("dob", "1911-11-01")]].concat(),
        );
        // Married: another family name, and the birth date recorded wrong too.
        let b = toks(
            &schema,
            &key,
            &[&home[..], &[("given_name", "April"), ("family_name", "Herbert"), ("dob", "1942-10-30")]].concat(),
        );
        let scheme = at("given_address_postal_code");
        assert!(a[scheme].is_some());
        assert_eq!(a[scheme], b[scheme]);
        assert_eq!(agree(&a, &b), 1, "only where she lives, with her given name");
        // A sibling: same family name and home, another given name and birth date. No scheme
        // holds the family name with the home alone: households would merge (ARCHITECTURE.md).
        let sibling = toks(
            &schema,
            &key,
            &[&home[..], &[("given_name", "Rose"), ("family_name", "Harrington"), ("dob", "1915-02-07")]].concat(),
        );
        assert_eq!(agree(&a, &sibling), 0);
        // The street without the postal code is no token of it.
        let no_code = toks(
            &schema,
            &key,
            &[("address", "123 Slessor Crescent"), ("given_name", "April"), ("family_name", "Herbert")],
        );
        assert!(no_code[scheme].is_none());
    }

    #[test]
    fn a_mistyped_family_name_without_a_birth_date_agrees_by_given_name_and_postal_code() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let at = |name: &str| schema.scheme_index(name).unwrap();
        // A voter list: names and where the person lives, no birth date, no id.
        let a = toks(&schema, &key, &[("given_name", "Mary"), ("family_name", "Campbell"), ("postal_code", "4655")]);
        let b = toks(&schema, &key, &[("given_name", "Mary"), ("family_name", "Cambpell"), ("postal_code", "4655")]);
        let scheme = at("given_family_soundex_postal_code");
        assert!(a[scheme].is_some());
        assert_eq!(a[scheme], b[scheme]);
        assert_ne!(a[at("names_postal_code")], b[at("names_postal_code")]);
        assert_eq!(agree(&a, &b), 1, "only the given name, the family name's Soundex and the postal code");
        // A sister at the same postal code, her given name of the same Soundex code: no scheme agrees.
        let sister =
            toks(&schema, &key, &[("given_name", "Maria"), ("family_name", "Campbell"), ("postal_code", "4655")]);
        assert_eq!(agree(&a, &sister), 0);
        // Another postal code: none either.
        let moved =
            toks(&schema, &key, &[("given_name", "Mary"), ("family_name", "Cambpell"), ("postal_code", "4656")]);
        assert_eq!(agree(&a, &moved), 0);
    }

    #[test]
    fn a_birth_date_known_only_by_its_year_feeds_only_the_year_schemes() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let at = |name: &str| schema.scheme_index(name).unwrap();
        let names = [("given_name", "Ann"), ("family_name", "Lee")];
        let whole = toks(&schema, &key, &[&names[..], &[("dob", "1980-03-14")]].concat());
        let year = toks(&schema, &key, &[&names[..], &[("dob", "1980")]].concat());
        // The year agrees with the whole date's year; nothing needs more of the date than it has.
        assert!(year[at("names_birth_year")].is_some());
        assert_eq!(year[at("names_birth_year")], whole[at("names_birth_year")]);
        for (i, s) in schema.schemes.iter().enumerate() {
            let only_year =
                s.parts.iter().all(|p| p.transform == Transform::Year || schema.identity[p.field].name != "dob");
            let uses_dob = s.parts.iter().any(|p| schema.identity[p.field].name == "dob");
            if uses_dob && !only_year {
                assert_eq!(year[i], None, "{} needs more than the year", s.name);
            }
        }
        // Two persons of 1980 known only by their years, with other names, share nothing.
        let other = toks(&schema, &key, &[("given_name", "Bo"), ("family_name", "Ng"), ("dob", "1980")]);
        assert_eq!(agree(&year, &other), 0);
    }

    #[test]
    fn swapped_names_with_a_nickname_agree_on_the_unordered_scheme() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let names_dob = schema.scheme_index("names_dob").unwrap();
        let a = toks(&schema, &key, &[("given_name", "William"), ("family_name", "Smith"), ("dob", "1980-03-14")]);
        // Swapped, and the given name written as a nickname: "Smith" in the given column, "Bill" in the family one.
        let b = toks(&schema, &key, &[("given_name", "Smith"), ("family_name", "Bill"), ("dob", "1980-03-14")]);
        assert!(a[names_dob].is_some());
        assert_eq!(a[names_dob], b[names_dob]);
        // The ordered schemes do not map a family name: "Bill" as a family name stays Bill.
        let family_dob = schema.scheme_index("family_dob").unwrap();
        let c = toks(&schema, &key, &[("given_name", "Ann"), ("family_name", "Bill"), ("dob", "1980-03-14")]);
        let d = toks(&schema, &key, &[("given_name", "Ann"), ("family_name", "William"), ("dob", "1980-03-14")]);
        assert_ne!(c[family_dob], d[family_dob]);
    }

    #[test]
    fn missing_birth_date_still_links_on_the_state_id() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let a = toks(
            &schema,
            &key,
            &[("given_name", "Ann"), ("family_name", "Lee"), ("dob", "1980-03-14"), ("state_id", "0012345678")],
        );
        let b = toks(&schema, &key, &[("given_name", "Ann"), ("family_name", "Lee"), ("state_id", "12-345-678")]);
        let sid = schema.scheme_index("state_id").unwrap();
        assert!(b[sid].is_some());
        assert_eq!(a[sid], b[sid]);
        assert_eq!(agree(&a, &b), 1);
    }

    #[test]
    fn a_missing_given_name_links_by_family_name_and_birth_date_and_an_email_by_itself() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let whole = [("given_name", "Julia"), ("family_name", "Taylor"), ("dob", "2015-10-29")];
        let a = toks(&schema, &key, &[whole.as_slice(), &[("email", "Hannah88@Powers.com ")]].concat());
        let b = toks(&schema, &key, &[("family_name", "Taylor"), ("dob", "2015-10-29")]);
        let family_dob = schema.scheme_index("family_dob").unwrap();
        assert!(b[family_dob].is_some());
        assert_eq!(agree(&a, &b), 1, "the given name missing: family name and birth date only");
        assert_eq!(a[family_dob], b[family_dob]);
        // Names and birth date all different: the same e-mail address (case and spaces aside) still agrees.
        let c = toks(
            &schema,
            &key,
            &[
                ("given_name", "Jul"),
                ("family_name", "Tyalor"),
                ("dob", "2016-01-27"),
                ("email", "hannah88@powers.com"),
            ],
        );
        let email = schema.scheme_index("email").unwrap();
        assert!(c[email].is_some());
        assert_eq!(agree(&a, &c), 1);
        assert_eq!(a[email], c[email]);
        let phone = schema.scheme_index("phone").unwrap();
        let p = |n: &str| toks(&schema, &key, &[("phone", n)])[phone];
        assert!(p("(555) 123-4567").is_some());
        assert_eq!(p("(555) 123-4567"), p("555.123.4567"));
    }

    #[test]
    fn a_per_source_scheme_agrees_only_within_one_source() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[7u8; 32]).unwrap();
        let t = Tokenizer::new(&schema, &key).unwrap();
        let local = schema.scheme_index("agency_person_id").unwrap();
        let state = schema.scheme_index("state_id").unwrap();
        let id = identity(&schema, &[("agency_person_id", "C-0012345"), ("state_id", "5714719")]);
        let of = |source: &str| {
            let mut out = Vec::new();
            t.tokens(&id, source, &mut Scratch::default(), &mut out);
            out
        };
        let (casemgmt, again, treatment) = (of("casemgmt"), of("casemgmt"), of("treatment"));
        assert!(casemgmt[local].is_some());
        assert_eq!(casemgmt[local], again[local], "one source, one number: one token");
        assert_ne!(casemgmt[local], treatment[local], "two agencies' equal numbers must not agree");
        assert_eq!(casemgmt[state], treatment[state], "other schemes do not depend on the source");
        // The same number as a state id is another token (another scheme's key).
        assert_ne!(casemgmt[local], casemgmt[state]);
    }

    #[test]
    fn tokens_depend_on_key_and_scheme() {
        let schema = Schema::default_schema().unwrap();
        let k1 = EpochKey::from_bytes(1, &[1u8; 32]).unwrap();
        let k2 = EpochKey::from_bytes(2, &[2u8; 32]).unwrap();
        let v = [("given_name", "Ann"), ("family_name", "Lee"), ("dob", "1990-01-01"), ("sex", "f")];
        let a = toks(&schema, &k1, &v);
        let b = toks(&schema, &k2, &v);
        assert_eq!(agree(&a, &b), 0);
        // No two schemes give the same token for the same record.
        let mut all: Vec<Token> = a.iter().flatten().copied().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    /// The tokens of fixed records under a fixed key, as every earlier
    /// release made them: a token that changed would no longer agree with the
    /// records a steward already holds. One digest per record (SHA-256 over
    /// the name, as its length (u32, big-endian) and bytes, and the token of
    /// each scheme it has a token of, in name order),
    /// one record per kind of part: full values, initials, prefixes and
    /// suffixes, Soundex, date pieces, unordered names with a nickname,
    /// addresses, places, an e-mail and a phone number, missing fields, and a
    /// birth date known only by its year. A scheme added to or removed from
    /// the shipped schema changes only the digests of the records with a
    /// token of it: check
    /// then that the other schemes' tokens are unchanged (when `names_city` left, 34,048
    /// synthetic arrests pseudonymized under both schemas had identical
    /// tokens apart from it; so had 118,366 arrests, contacts and treatment
    /// episodes when `agency_person_id` came, apart from the new token; so
    /// had all 261,566 records of `divert synth --persons 5000` when
    /// `given_dob_postal_code` came, 58,579 of them with the new token; and
    /// those records and FEBRL 3 and 4's 15,000 when `names_address` came,
    /// 13,824 with the new token; and FEBRL 1 to 4's 21,000 records when
    /// address words were joined: only `dob_address` and `names_address`
    /// changed, on 19,304 and 19,052 of them; and those 21,000 and the
    /// 261,566 synthetic records when `given_address_postal_code` came,
    /// 19,744 FEBRL records with the new token, no synthetic one; and
    /// those 261,566 and FEBRL 1 to 4's and fake_1000's 22,000 when
    /// `given_family_soundex_postal_code` took `initial_family_dob`'s place:
    /// 280,047 had the old token, 79,315 have the new one, and no other
    /// token of any record changed).
    /// Records are tokenized as the source `police` sends them.
    #[test]
    fn tokens_are_what_earlier_releases_made() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(3, &[0x42u8; 32]).unwrap();
        let records: [&[(&str, &str)]; 5] = [
            &[
                ("given_name", "William"),
                ("family_name", "O'Brien"),
                ("dob", "1980-03-14"),
                ("sex", "M"),
                ("state_id", "5714719"),
                ("address", "16 Hurley Street"),
                ("postal_code", "02100"),
                ("city", "Spring Field"),
                ("email", "Bill.OBrien@Example.org"),
                ("phone", "(555) 123-4567"),
                ("agency_person_id", "C-0012345"),
            ],
            &[("given_name", "Obrien"), ("family_name", "Bill"), ("dob", "1980-03-14")],
            &[("given_name", "Mary Ann"), ("family_name", "De La Cruz"), ("state_id", "A-12")],
            &[("family_name", "Nguyen"), ("dob", "2001-12-31"), ("city", "Boston")],
            &[("given_name", "Ann"), ("family_name", "Lee"), ("dob", "1980")],
        ];
        let digests: Vec<String> = records
            .iter()
            .map(|r| {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let tokens = toks(&schema, &key, r);
                let mut held: Vec<(&str, Token)> =
                    schema.schemes.iter().zip(&tokens).filter_map(|(s, t)| Some((s.name.as_str(), (*t)?))).collect();
                held.sort_unstable();
                for (name, t) in &held {
                    ctx.update(&(name.len() as u32).to_be_bytes());
                    ctx.update(name.as_bytes());
                    ctx.update(t);
                }
                format!("{} tokens {}", held.len(), crate::hex::encode(ctx.finish().as_ref()))
            })
            .collect();
        assert_eq!(
            digests,
            [
                // The same tokens the digests of the form before pinned (which passed
                // on this tree: 43317dc5…, 9d2a2777…, 67431868…, dc260280…), and the year alone.
                // Since `given_family_soundex_postal_code` took `initial_family_dob`'s place
                // (before: 19 tokens 1430df68…, 9 tokens 4ad876d9…; the rest as they were).
                "19 tokens 2b24e2e8e9aa3a7456d78ef948aa9bd76613aefac24a59cfc94b2315af71a672",
                "8 tokens c338494a4787db9d94f2cf5590f035d2a2c6fc8602518a0da00fbb7a7b41e057",
                "1 tokens d399e6cf74624202f6618c5a6d57e39e96d1958822c87a1c388f3c7b8e33ac46",
                "1 tokens 2d1d814b69b091f5d69c65e30cccf2e33174991cc18bcd34ab0a341ad159b303",
                "1 tokens 8fdfdae2fb4db6da06a7ccd6604d1b56af86b601c1c77ddc264fea42d6312152",
            ]
        );
    }

    /// The memo changes only the cost: every record gets the tokens it gets
    /// hashed scheme by scheme, whether they come from the memo or not, and
    /// whatever came before it in the same scratch (the same identity from
    /// another source, under another key, or under the same key with another
    /// schema; a field missing instead of different; a full memo starting over).
    #[test]
    fn the_memo_gives_the_tokens_hashing_gives() {
        let schema = Schema::default_schema().unwrap();
        // The same key, fewer schemes: the memo's digests are the same, its tokens are not.
        let mut fewer = schema.clone();
        fewer.schemes.retain(|s| s.name != "names_dob");
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let other_key = EpochKey::from_bytes(2, &[7u8; 32]).unwrap();
        let t1 = Tokenizer::new(&schema, &key).unwrap();
        let t2 = Tokenizer::new(&schema, &other_key).unwrap();
        let t3 = Tokenizer::new(&fewer, &key).unwrap();
        let full: &[(&str, &str)] = &[
            ("given_name", "William"),
            ("family_name", "O'Brien"),
            ("dob", "1980-03-14"),
            ("sex", "M"),
            ("state_id", "5714719"),
            ("agency_person_id", "C-0012345"),
        ];
        let ids = [
            identity(&schema, full),
            identity(&schema, &full[..5]),
            identity(&schema, &[("given_name", "William"), ("family_name", "O'Brien"), ("dob", "1980-03-14")]),
            identity(&schema, &[("given_name", "O'Brien"), ("family_name", "Bill"), ("dob", "1980-03-14")]),
            identity(&schema, &[("given_name", "William"), ("dob", "1980-03-14")]),
            identity(&schema, &[("family_name", "William"), ("dob", "1980-03-14")]),
        ];
        let mut memo = Scratch::default();
        let mut tiny = Scratch::with_memo(2);
        let mut bare = Scratch::with_memo(0);
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for (t, name) in [(&t1, "t1"), (&t2, "t2"), (&t3, "t3"), (&t1, "t1 again")] {
            // Each identity twice from each source, the sources interleaved:
            // the second time is served from the memo, the other source's never.
            for (i, id) in ids.iter().enumerate() {
                for source in ["police", "jail", "police", "jail"] {
                    t.tokens(id, source, &mut bare, &mut want);
                    for scratch in [&mut memo, &mut tiny] {
                        t.tokens(id, source, scratch, &mut got);
                        assert_eq!(got, want, "{name}, source {source}, identity {i}");
                    }
                }
            }
        }
        // Per tokenizer, 6 identities × 2 sources, each looked up twice.
        assert_eq!(memo.memo_served(), 4 * 12);
        assert_eq!(memo.memo_len(), 12, "the memo holds the last tokenizer's identities, each once");
        assert!(tiny.memo_len() <= 2 && tiny.memo_served() > 0);
        assert_eq!((bare.memo_len(), bare.memo_served()), (0, 0));
        // What the memo must keep apart does differ: the agency person id is
        // per source, another key gives other tokens, another schema others.
        let of = |t: &Tokenizer, source: &str| {
            let mut out = Vec::new();
            t.tokens(&ids[0], source, &mut Scratch::with_memo(0), &mut out);
            out
        };
        assert_ne!(of(&t1, "police"), of(&t1, "jail"));
        assert_ne!(of(&t1, "police"), of(&t2, "police"));
        assert_ne!(of(&t1, "police"), of(&t3, "police"));
    }

    /// A file of persons each met once gains nothing from the memo: once it
    /// has been full, a window that finds too few sends it to rest (no
    /// digest, nothing remembered), then it looks again. Before it has been
    /// full it keeps learning (a file's repeats can be far apart), and a
    /// file of repeats keeps it on.
    #[test]
    fn the_memo_rests_where_it_finds_nothing_and_serves_repeats() {
        let schema = Schema::default_schema().unwrap();
        let key = EpochKey::from_bytes(1, &[9u8; 32]).unwrap();
        let t = Tokenizer::new(&schema, &key).unwrap();
        let person =
            |i: u32| identity(&schema, &[("state_id", &format!("{:07}", 1_000_000 + i)), ("dob", "1980-03-14")]);
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let mut bare = Scratch::with_memo(0);
        let window = MEMO_WINDOW as usize;
        let mut feed = |scratch: &mut Scratch, from: usize, to: usize| {
            for i in from..to {
                let id = person(i as u32);
                t.tokens(&id, "police", scratch, &mut got);
                t.tokens(&id, "police", &mut bare, &mut want);
                assert_eq!(got, want, "record {i}");
            }
        };

        // Not yet full: a window of nothing found does not stop it learning.
        let mut learning = Scratch::default();
        feed(&mut learning, 0, window + 10);
        assert_eq!(learning.memo_len(), window + 10, "still remembering");
        feed(&mut learning, 0, 1);
        assert_eq!(learning.memo_served(), 1);

        // Full (1,000 entries) and then a window of nothing found: it rests.
        let mut small = Scratch::with_memo(1000);
        feed(&mut small, 0, window + 10);
        assert_eq!(small.memo_served(), 0);
        let last = window - 1; // remembered: the memo started over at 4,004
        feed(&mut small, last, last + 1);
        assert_eq!(small.memo_served(), 0, "resting: a repeat is hashed again");
        // 11 records of its rest are gone: 10 after the window, and that repeat.
        for _ in 11..MEMO_REST {
            feed(&mut small, window + 20, window + 21);
        }
        assert_eq!(small.memo_served(), 0, "still resting");
        feed(&mut small, last, last + 1);
        assert_eq!(small.memo_served(), 1, "looking again after its rest");

        let mut repeats = Scratch::with_memo(1000);
        for i in 0..3 * window {
            feed(&mut repeats, i % 100, i % 100 + 1);
        }
        assert_eq!(repeats.memo_served(), 3 * window as u64 - 100);
    }

    #[test]
    fn token_text_round_trips() {
        let t = [0xabu8; TOKEN_LEN];
        let s = format_token(7, &t);
        assert_eq!(parse_token(&s), Some((7, t)));
        assert_eq!(parse_token("7:zz"), None);
        assert_eq!(parse_token("x:abab"), None);
    }
}
