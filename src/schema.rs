//! The record schema: kinds, fields, identity fields, token schemes and the linkage rule — parsed from TOML in two stages (raw → validated), reporting every problem at once.
//!
//! Pure: no IO. `load` in `config` reads the file; this module turns text
//! into a [`Schema`] or a list of [`Problem`]s, each naming its key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Deserialize;

use crate::normalize::NormKind;

/// The minimum estimated information, in bits, a token scheme must carry.
/// Below it a token is open to frequency analysis: the steward could guess
/// a common surname from how often its token occurs.
pub const MIN_SCHEME_BITS: f64 = 24.0;

/// At most this many schemes: linkage keeps a pair's agreement pattern as a 32-bit mask.
pub const MAX_SCHEMES: usize = 32;

/// The agreement probability among true matches assumed for every scheme
/// before the steward has pairs enough to estimate it (see `linkage`).
pub const PRIOR_M: f64 = 0.9;

/// Names a kind's released fields may not take, because the pseudonymizer adds them.
pub const RESERVED_FIELD_NAMES: [&str; 7] = ["age", "source", "kind", "line", "epoch", "rid", "tokens"];

/// One problem found in a config file: the key it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { key: key.into(), message: message.into() }
}

// ---------------------------------------------------------------------------
// Raw form: exactly what the TOML says.
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    version: u32,
    #[serde(default)]
    identity: BTreeMap<String, RawIdentity>,
    #[serde(default)]
    schemes: Vec<RawScheme>,
    linkage: Option<RawLinkage>,
    #[serde(default)]
    kinds: BTreeMap<String, RawKind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    normalize: NormKind,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    join: Vec<Vec<String>>,
    #[serde(default)]
    full_name: Vec<String>,
    #[serde(default)]
    release: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheme {
    name: String,
    parts: Vec<String>,
    #[serde(default)]
    unordered: Unordered,
    #[serde(default)]
    per_source: bool,
}

/// `unordered = ["a", "b"]` (one group) or `[["a", "b"], ["c", "d"]]` (several).
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Unordered {
    #[default]
    None,
    One(Vec<String>),
    Many(Vec<Vec<String>>),
}

impl Unordered {
    fn groups(&self) -> Vec<Vec<String>> {
        match self {
            Unordered::None => Vec::new(),
            Unordered::One(g) if g.is_empty() => Vec::new(),
            Unordered::One(g) => vec![g.clone()],
            Unordered::Many(gs) => gs.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinkage {
    /// Link at this match weight, the prior odds included (bits).
    match_weight: Option<f64>,
    /// Link at this much evidence, the prior odds left out (bits): the key
    /// of earlier releases, still read as it was.
    threshold: Option<f64>,
    bridge: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    agency: Option<String>,
    record_id: String,
    event_date: String,
    #[serde(default)]
    snapshot: bool,
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: RawType,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    min: Option<i64>,
    max: Option<i64>,
    #[serde(default)]
    safe: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawType {
    String,
    Date,
    Enum,
    Bool,
    Integer,
}

// ---------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------

/// A validated schema. Indices into `identity`, `schemes` and each kind's
/// `fields` are stable for the life of the value.
#[derive(Debug, Clone)]
pub struct Schema {
    pub identity: Vec<IdentityField>,
    pub schemes: Vec<Scheme>,
    pub linkage: LinkageRule,
    pub kinds: Vec<Kind>,
}

/// A field that identifies a person: normalized, tokenized, then dropped.
#[derive(Debug, Clone)]
pub struct IdentityField {
    pub name: String,
    pub norm: NormKind,
    pub required: bool,
    /// Header names that map to this field, lower-case, the field's own name first.
    pub columns: Vec<String>,
    /// Where an export splits the field over several columns (a birth date
    /// as year, month and day; a street number and a street): per piece, in
    /// the order they are joined, the header names it may carry (lower-case).
    /// Used only when no column of `columns` is in the header.
    pub join: Vec<Vec<String>>,
    /// Header names of a column holding the whole name (`DOE, JOHN A` or
    /// `John A. Doe`), lower-case; only for a given- or family-name field,
    /// which then takes its part of it ([`split_full_name`](crate::normalize::split_full_name)).
    /// Used only when neither `columns` nor `join` is in the header.
    pub full_name: Vec<String>,
    /// Released as a public category after tokenization (only `sex`).
    pub release: bool,
}

/// The most pieces a joined identity field may have.
pub const MAX_JOIN_PIECES: usize = 6;

impl IdentityField {
    /// What goes between the pieces of a joined value: `-` for a date
    /// (year-month-day, which the date parser reads), a space otherwise.
    pub fn join_separator(&self) -> char {
        if self.norm == NormKind::Date {
            '-'
        } else {
            ' '
        }
    }
}

/// A token scheme: which normalized identity parts are hashed together.
#[derive(Debug, Clone)]
pub struct Scheme {
    pub name: String,
    pub parts: Vec<Part>,
    /// Groups of positions in `parts` whose order does not matter: each
    /// group's values are encoded sorted.
    pub unordered: Vec<Vec<usize>>,
    /// Estimated information of the token, in bits (see [`part_bits`]).
    pub bits: f64,
    /// The token is keyed by the source too (an agency's own person
    /// number): it agrees only between records of one source, and records
    /// of two sources are not compared on it.
    pub per_source: bool,
}

/// One part of a scheme: an identity field and a transform of its normalized value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Part {
    pub field: usize,
    pub transform: Transform,
}

/// A transform of a normalized identity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transform {
    Full,
    Initial,
    Prefix(u8),
    /// The last N letters: survives a typo in the first part of a name.
    Suffix(u8),
    Soundex,
    Year,
    Month,
    Day,
    YearMonth,
}

impl Transform {
    fn parse(s: &str) -> Option<Transform> {
        Some(match s {
            "" | "full" => Transform::Full,
            "initial" => Transform::Initial,
            "soundex" => Transform::Soundex,
            "year" => Transform::Year,
            "month" => Transform::Month,
            "day" => Transform::Day,
            "year_month" => Transform::YearMonth,
            _ => {
                let (ctor, digits): (fn(u8) -> Transform, &str) = match s.strip_prefix("prefix") {
                    Some(d) => (Transform::Prefix, d),
                    None => (Transform::Suffix, s.strip_prefix("suffix")?),
                };
                let n: u8 = digits.parse().ok()?;
                if (1..=9).contains(&n) {
                    ctor(n)
                } else {
                    return None;
                }
            }
        })
    }

    fn is_date_part(self) -> bool {
        matches!(self, Transform::Year | Transform::Month | Transform::Day | Transform::YearMonth)
    }

    fn is_text_part(self) -> bool {
        matches!(self, Transform::Initial | Transform::Prefix(_) | Transform::Suffix(_) | Transform::Soundex)
    }
}

/// Estimated information of a transformed part, in bits, for the frequency-analysis check.
///
/// These are deliberately rough, conservative figures for a US program
/// population: a given name ≈ 9 bits (a few hundred common names), a family
/// name ≈ 11, a date of birth ≈ 14 (about 40 birth years), a sex code 1.
pub fn part_bits(norm: NormKind, t: Transform) -> f64 {
    use NormKind::*;
    let full = match norm {
        GivenName => 9.0,
        FamilyName => 11.0,
        Date => 14.0,
        Sex => 1.0,
        Id => 24.0,
        Address => 16.0,
        PostalCode => 6.0,
        Place => 4.0,
    };
    match t {
        Transform::Full => full,
        Transform::Initial => full.min(4.0),
        Transform::Prefix(n) | Transform::Suffix(n) => full.min(1.5 + 2.5 * f64::from(n)),
        Transform::Soundex => (full - 2.0).max(0.0),
        Transform::Year => 5.5,
        Transform::Month => 3.5,
        Transform::Day => 5.0,
        Transform::YearMonth => 9.0,
    }
}

/// Which value of a linkage rule is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkageValue {
    Threshold,
    Bridge,
}

/// Whether a rule's threshold and bridge are in range, for a match weight
/// (`with_prior`: at least -50 bits) or evidence alone (above 0); both at
/// most 200 bits and the bridge at least the threshold. The error says which
/// value and what it must be.
pub fn linkage_range(threshold: f64, bridge: f64, with_prior: bool) -> Result<(), (LinkageValue, String)> {
    let (low_ok, low) = if with_prior { (threshold >= -50.0, "at least -50") } else { (threshold > 0.0, "above 0") };
    if !(threshold.is_finite() && low_ok && threshold <= 200.0) {
        return Err((LinkageValue::Threshold, format!("a number of bits {low} and at most 200")));
    }
    if !(bridge.is_finite() && bridge >= threshold && bridge <= 200.0) {
        return Err((LinkageValue::Bridge, "at least the threshold and at most 200 bits".into()));
    }
    Ok(())
}

/// How the steward decides links (Fellegi–Sunter match weights; see `linkage`).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkageRule {
    /// Two records link when their match weight (bits of evidence) reaches this.
    pub threshold: f64,
    /// A link below this weight never joins two persons that already hold
    /// several distinct records each (no chaining through one weak link).
    pub bridge: f64,
    /// Per scheme, the (m, u) used until there are pairs enough to estimate
    /// them: m = [`PRIOR_M`], u = 2^-bits of the scheme's estimated information.
    pub prior: Vec<(f64, f64)>,
    /// Per scheme, the identity fields its parts use (bit i: field i).
    pub fields: Vec<u64>,
    /// Per scheme, whether it is keyed by the source (see [`Scheme::per_source`]).
    pub per_source: Vec<bool>,
    /// Per scheme, its parts (field and transform): which field a scheme
    /// that disagrees can be blamed on, once its other parts are known to
    /// agree (empty: the linker infers nothing from the scheme).
    pub parts: Vec<Vec<Part>>,
    /// Per scheme, its groups of order-insensitive parts (positions in
    /// `parts`): agreeing on them says the values agree as a set, not each.
    pub unordered: Vec<Vec<Vec<usize>>>,
    /// Whether `threshold` and `bridge` are match weights, the prior odds
    /// of a match included (`match_weight`), or evidence alone (the older
    /// `threshold` key).
    pub with_prior: bool,
}

impl LinkageRule {
    /// The rule for schemes of these estimated bits and field sets, every scheme at its prior (m, u).
    pub fn new(threshold: f64, bridge: f64, scheme_bits: &[f64], scheme_fields: &[u64]) -> LinkageRule {
        LinkageRule {
            threshold,
            bridge,
            prior: scheme_bits.iter().map(|&b| (PRIOR_M, (-b).exp2())).collect(),
            fields: scheme_fields.to_vec(),
            per_source: vec![false; scheme_bits.len()],
            parts: vec![Vec::new(); scheme_bits.len()],
            unordered: vec![Vec::new(); scheme_bits.len()],
            with_prior: false,
        }
    }
}

/// A record kind an agency exports.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: String,
    pub agency: Option<String>,
    pub fields: Vec<Field>,
    /// Index in `fields` of the agency's record id.
    pub record_id: usize,
    /// Index in `fields` of the date the record is about (a `Date` field).
    pub event_date: usize,
    /// Every export of this kind is the complete current set (a whole-table
    /// export): records held but absent from a new export are deleted.
    pub snapshot: bool,
}

impl Kind {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

/// A non-identity field of a kind.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
    /// Header names that map to this field, lower-case, the field's own name first.
    pub columns: Vec<String>,
}

impl Field {
    /// Whether the field's value may leave the agency (free text only when marked safe).
    pub fn released(&self) -> bool {
        !matches!(self.ty, FieldType::String { safe: false })
    }
}

/// A field's type and its constraints.
#[derive(Debug, Clone)]
pub enum FieldType {
    String { safe: bool },
    Date,
    Enum(EnumType),
    Bool,
    Integer { min: Option<i64>, max: Option<i64> },
}

/// An enum's allowed values and the spellings that map to them.
#[derive(Debug, Clone)]
pub struct EnumType {
    pub values: Vec<String>,
    /// Lookup key (see [`enum_key`]) → index in `values`.
    lookup: HashMap<String, u16>,
}

impl EnumType {
    /// The index of the value `raw` names (case, spacing, `-`/`_` ignored), if any.
    pub fn resolve(&self, raw: &str) -> Option<u16> {
        self.lookup.get(&enum_key(raw)).copied()
    }
}

/// The form enum spellings are compared in: lower case, `-`, `_` and runs of
/// white space all as one `_`, trimmed.
pub fn enum_key(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut pending_sep = false;
    for c in raw.trim().chars() {
        if c.is_whitespace() || c == '-' || c == '_' {
            pending_sep = !out.is_empty();
        } else {
            if pending_sep {
                out.push('_');
                pending_sep = false;
            }
            out.extend(c.to_lowercase());
        }
    }
    out
}

impl Schema {
    /// Parse and validate schema TOML; on failure, every problem found.
    pub fn from_toml(text: &str) -> Result<Schema, Vec<Problem>> {
        let raw: RawSchema = toml::from_str(text).map_err(|e| vec![toml_problem(&e)])?;
        validate(raw)
    }

    /// The shipped default schema (`config/schema.toml`).
    pub fn default_schema() -> Result<Schema, Vec<Problem>> {
        Schema::from_toml(DEFAULT_SCHEMA)
    }

    pub fn kind(&self, name: &str) -> Option<&Kind> {
        self.kinds.iter().find(|k| k.name == name)
    }

    pub fn kind_names(&self) -> Vec<&str> {
        self.kinds.iter().map(|k| k.name.as_str()).collect()
    }

    pub fn identity_index(&self, name: &str) -> Option<usize> {
        self.identity.iter().position(|f| f.name == name)
    }

    /// The identity field normalized as a date of birth, if the schema has one
    /// (its value becomes `age` at the event).
    pub fn birth_date_field(&self) -> Option<usize> {
        self.identity.iter().position(|f| f.norm == NormKind::Date)
    }

    pub fn scheme_index(&self, name: &str) -> Option<usize> {
        self.schemes.iter().position(|s| s.name == name)
    }
}

/// The text of `config/schema.toml`, compiled in so every command has a default.
pub const DEFAULT_SCHEMA: &str = include_str!("../config/schema.toml");

/// A TOML syntax or type error as one problem. toml's message carries the
/// line and an excerpt; config files hold no identity values, so quoting is safe.
pub fn toml_problem(e: &toml::de::Error) -> Problem {
    problem("", e.to_string().trim_end().replace('\n', "\n    "))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && s.as_bytes()[0].is_ascii_lowercase()
}

const NAME_RULE: &str = "names are 1-64 characters of a-z, 0-9 and _, starting with a letter";

fn validate(raw: RawSchema) -> Result<Schema, Vec<Problem>> {
    let mut problems = Vec::new();
    if raw.version != 1 {
        problems.push(problem(
            "version",
            format!("unsupported schema version {}; this divert reads version 1", raw.version),
        ));
    }

    // Identity fields.
    let mut identity = Vec::new();
    for (name, f) in &raw.identity {
        let key = format!("identity.{name}");
        if !valid_name(name) {
            problems.push(problem(&key, NAME_RULE));
        }
        if f.release && f.normalize != NormKind::Sex {
            problems.push(problem(
                format!("{key}.release"),
                "only a sex field may be released; releasing a name, date or id would defeat pseudonymization",
            ));
        }
        if f.release && RESERVED_FIELD_NAMES.contains(&name.as_str()) {
            problems.push(problem(
                &key,
                "a released field may not take this name: it is reserved for what the pseudonymizer adds",
            ));
        }
        match f.join.len() {
            0 => {}
            1 => problems.push(problem(
                format!("{key}.join"),
                "a join needs at least two pieces; a single column's names belong in `columns`",
            )),
            n if n > MAX_JOIN_PIECES => problems
                .push(problem(format!("{key}.join"), format!("{n} pieces; at most {MAX_JOIN_PIECES} may be joined"))),
            _ => {}
        }
        let mut join = Vec::with_capacity(f.join.len());
        for (i, piece) in f.join.iter().enumerate() {
            let names = header_names(piece.iter().map(String::as_str));
            if names.is_empty() {
                problems.push(problem(format!("{key}.join[{i}]"), "a piece needs at least one header name"));
            }
            join.push(names);
        }
        if !f.full_name.is_empty() && !matches!(f.normalize, NormKind::GivenName | NormKind::FamilyName) {
            problems.push(problem(
                format!("{key}.full_name"),
                "only a given_name or family_name field can be read from a whole-name column",
            ));
        }
        let full_name = header_names(f.full_name.iter().map(String::as_str));
        let listed = f.columns.iter().chain(f.join.iter().flatten()).chain(&f.full_name);
        if let Some(c) = keyless(listed) {
            problems.push(problem(&key, format!("header `{c}` has no letter or digit: no header would match it")));
        }
        identity.push(IdentityField {
            name: name.clone(),
            norm: f.normalize,
            required: f.required,
            columns: columns_of(name, &f.columns),
            join,
            full_name,
            release: f.release,
        });
    }
    if identity.is_empty() {
        problems.push(problem("identity", "no identity fields: declare at least the fields the token schemes use"));
    }
    if identity.iter().filter(|f| f.norm == NormKind::Date).count() > 1 {
        problems.push(problem(
            "identity",
            "more than one identity field is normalized as `date`; only one (the date of birth) is allowed",
        ));
    }
    let id_index: HashMap<&str, usize> = identity.iter().enumerate().map(|(i, f)| (f.name.as_str(), i)).collect();

    // Token schemes.
    let mut schemes = Vec::new();
    let mut seen_names = HashSet::new();
    let mut seen_shapes: HashMap<(Vec<Part>, Vec<Vec<usize>>), String> = HashMap::new();
    if raw.schemes.len() > MAX_SCHEMES {
        problems.push(problem("schemes", format!("{} schemes; at most {MAX_SCHEMES} are allowed", raw.schemes.len())));
    }
    if raw.schemes.is_empty() {
        problems.push(problem("schemes", "no token schemes: records could never be linked"));
    }
    for (i, s) in raw.schemes.iter().enumerate() {
        let key = format!("schemes[{i}] ({})", s.name);
        if !valid_name(&s.name) {
            problems.push(problem(&key, NAME_RULE));
        }
        if !seen_names.insert(s.name.clone()) {
            problems.push(problem(&key, "duplicate scheme name"));
        }
        let mut parts = Vec::new();
        let mut ok = true;
        for p in &s.parts {
            let (field, transform) = p.split_once(':').unwrap_or((p.as_str(), ""));
            let Some(&fi) = id_index.get(field) else {
                problems.push(problem(format!("{key}.parts"), format!("`{field}` is not a declared identity field")));
                ok = false;
                continue;
            };
            let Some(t) = Transform::parse(transform) else {
                problems.push(problem(
                    format!("{key}.parts"),
                    format!("`{transform}` is not a transform (full, initial, prefix1..prefix9, suffix1..suffix9, soundex, year, month, day, year_month)"),
                ));
                ok = false;
                continue;
            };
            let norm = identity[fi].norm;
            if t.is_date_part() && norm != NormKind::Date {
                problems.push(problem(format!("{key}.parts"), format!("`{p}`: date parts apply only to date fields")));
                ok = false;
            }
            if t.is_text_part() && matches!(norm, NormKind::Date | NormKind::Sex) {
                problems.push(problem(
                    format!("{key}.parts"),
                    format!("`{p}`: this transform applies to text fields, not {norm:?}"),
                ));
                ok = false;
            }
            parts.push(Part { field: fi, transform: t });
        }
        if s.parts.is_empty() {
            problems.push(problem(format!("{key}.parts"), "a scheme needs at least one part"));
            ok = false;
        }
        let mut dedup = parts.clone();
        dedup.sort_by_key(|p| (p.field, format!("{:?}", p.transform)));
        dedup.dedup();
        if dedup.len() != parts.len() {
            problems.push(problem(format!("{key}.parts"), "the same part appears twice"));
        }
        let mut unordered: Vec<Vec<usize>> = Vec::new();
        let mut used = HashSet::new();
        for group in s.unordered.groups() {
            let mut positions = Vec::new();
            for u in &group {
                // An entry names a part exactly ("dob:month") or by its field when only one part uses it.
                let field_of = |p: &String| p.split_once(':').map_or(p.as_str(), |(f, _)| f).to_string();
                let exact: Vec<usize> = s.parts.iter().enumerate().filter(|(_, p)| *p == u).map(|(i, _)| i).collect();
                let by_field: Vec<usize> =
                    s.parts.iter().enumerate().filter(|(_, p)| field_of(p) == *u).map(|(i, _)| i).collect();
                match (exact.as_slice(), by_field.as_slice()) {
                    ([pos], _) | ([], [pos]) => {
                        if !used.insert(*pos) {
                            problems.push(problem(format!("{key}.unordered"), format!("`{u}` is in two groups")));
                            ok = false;
                        }
                        positions.push(*pos)
                    }
                    ([], [_, _, ..]) => {
                        problems.push(problem(
                            format!("{key}.unordered"),
                            format!("`{u}` names several parts; write the part as in `parts` (e.g. `{u}:month`)"),
                        ));
                        ok = false;
                    }
                    _ => {
                        problems.push(problem(
                            format!("{key}.unordered"),
                            format!("`{u}` is not one of this scheme's parts"),
                        ));
                        ok = false;
                    }
                }
            }
            if positions.len() < 2 {
                problems.push(problem(
                    format!("{key}.unordered"),
                    "a group names at least two parts whose order does not matter",
                ));
            }
            positions.sort_unstable();
            unordered.push(positions);
        }
        let bits: f64 = parts.iter().map(|p| part_bits(identity[p.field].norm, p.transform)).sum();
        if ok {
            if bits < MIN_SCHEME_BITS {
                problems.push(problem(
                    format!("{key}.parts"),
                    format!(
                        "too little information: about {bits:.0} bits, at least {MIN_SCHEME_BITS:.0} needed; a token this coarse is open to frequency analysis (add a date of birth or another name part)"
                    ),
                ));
            }
            let shape = (parts.clone(), {
                let mut u = unordered.clone();
                u.sort();
                u
            });
            if let Some(other) = seen_shapes.insert(shape, s.name.clone()) {
                problems.push(problem(
                    &key,
                    format!("same parts as scheme `{other}`: the tokens would always agree together"),
                ));
            }
        }
        schemes.push(Scheme { name: s.name.clone(), parts, unordered, bits, per_source: s.per_source });
    }

    // Linkage rule: `match_weight` (the prior odds included), or the older
    // `threshold` (evidence alone), and a `bridge` on the same scale.
    let (key, threshold, bridge, with_prior) = match &raw.linkage {
        Some(RawLinkage { match_weight: Some(w), threshold: None, bridge }) => {
            ("linkage.match_weight", *w, bridge.unwrap_or(*w), true)
        }
        Some(RawLinkage { match_weight: None, threshold: Some(t), bridge }) => {
            ("linkage.threshold", *t, bridge.unwrap_or(*t), false)
        }
        Some(RawLinkage { match_weight: Some(_), threshold: Some(_), .. }) => {
            problems.push(problem(
                "linkage",
                "give `match_weight` (the prior odds included) or the older `threshold` (without them), not both",
            ));
            ("linkage", 0.0, 0.0, true)
        }
        Some(RawLinkage { match_weight: None, threshold: None, .. }) | None => {
            problems.push(problem(
                "linkage",
                "missing [linkage] table with a `match_weight` (bits: 0 links a pair when a match is more likely than not)",
            ));
            ("linkage", 0.0, 0.0, true)
        }
    };
    if key != "linkage" {
        if let Err((bad, what)) = linkage_range(threshold, bridge, with_prior) {
            let at = if bad == LinkageValue::Threshold { key } else { "linkage.bridge" };
            problems.push(problem(at, format!("must be {what}")));
        } else if !schemes.is_empty() {
            // The most evidence any pair can show under the prior: every scheme agreeing.
            let total: f64 = schemes.iter().map(|s| (PRIOR_M / (-s.bits).exp2()).log2()).sum();
            if total < threshold {
                problems.push(problem(
                    key,
                    format!(
                        "{threshold} bits cannot be reached: all schemes agreeing give about {total:.0} bits, so no records would ever link"
                    ),
                ));
            }
        }
    }
    let mut linkage = LinkageRule::new(
        threshold,
        bridge,
        &schemes.iter().map(|s| s.bits).collect::<Vec<_>>(),
        &schemes.iter().map(|s| s.parts.iter().fold(0u64, |m, p| m | 1u64 << (p.field % 64))).collect::<Vec<_>>(),
    );
    linkage.per_source = schemes.iter().map(|s| s.per_source).collect();
    linkage.parts = schemes.iter().map(|s| s.parts.clone()).collect();
    linkage.unordered = schemes.iter().map(|s| s.unordered.clone()).collect();
    linkage.with_prior = with_prior;

    // Kinds.
    let released_identity: Vec<&str> = identity.iter().filter(|f| f.release).map(|f| f.name.as_str()).collect();
    // Claims are keyed by the header as it is matched (`header_key`): `First
    // Name` and `first_name` are one header.
    let mut identity_claims: HashMap<String, String> = HashMap::new();
    for f in &identity {
        for c in &f.columns {
            if let Some(taken) = claim(&mut identity_claims, c, &f.name) {
                problems.push(problem(format!("identity.{}.columns", f.name), taken));
            }
        }
    }
    // A piece of a join may name one of its own field's columns (a street
    // column alone, or joined with a street number), but no other field's
    // column and no other piece's.
    for f in &identity {
        let mut pieces: HashMap<String, usize> = HashMap::new();
        for (i, piece) in f.join.iter().enumerate() {
            for c in piece {
                let at = format!("identity.{}.join[{i}]", f.name);
                if let Some(j) = pieces.insert(header_key(c), i) {
                    if j != i {
                        problems.push(problem(at, format!("header `{c}` is already in piece {j}")));
                    }
                } else if !f.columns.iter().any(|own| header_key(own) == header_key(c)) {
                    if let Some(taken) = claim(&mut identity_claims, c, &f.name) {
                        problems.push(problem(at, taken));
                    }
                }
            }
        }
    }
    // A whole-name column feeds the given and the family name both (that is
    // its point), but may not be any field's own column or join piece.
    let mut whole: HashMap<String, String> = HashMap::new();
    for f in &identity {
        for c in &f.full_name {
            if let Some(prev) = identity_claims.get(&header_key(c)) {
                problems.push(problem(
                    format!("identity.{}.full_name", f.name),
                    format!("header `{c}` is already claimed by `{prev}`"),
                ));
            }
            whole.entry(header_key(c)).or_insert_with(|| f.name.clone());
        }
    }
    identity_claims.extend(whole);
    let mut kinds = Vec::new();
    if raw.kinds.is_empty() {
        problems.push(problem("kinds", "no record kinds declared"));
    }
    for (kname, k) in &raw.kinds {
        let key = format!("kinds.{kname}");
        if !valid_name(kname) {
            problems.push(problem(&key, NAME_RULE));
        }
        if let Some(a) = &k.agency {
            if !valid_name(a) {
                problems.push(problem(format!("{key}.agency"), NAME_RULE));
            }
        }
        let mut fields = Vec::new();
        for (fname, f) in &k.fields {
            let fkey = format!("{key}.fields.{fname}");
            if !valid_name(fname) {
                problems.push(problem(&fkey, NAME_RULE));
            }
            if id_index.contains_key(fname.as_str()) {
                problems.push(problem(&fkey, "has the name of an identity field"));
            }
            if RESERVED_FIELD_NAMES.contains(&fname.as_str()) || released_identity.contains(&fname.as_str()) {
                problems.push(problem(&fkey, "this name is reserved for what the pseudonymizer adds"));
            }
            if f.ty != RawType::Enum && (!f.values.is_empty() || !f.aliases.is_empty()) {
                problems.push(problem(&fkey, "`values` and `aliases` apply only to type = \"enum\""));
            }
            if f.ty != RawType::Integer && (f.min.is_some() || f.max.is_some()) {
                problems.push(problem(&fkey, "`min` and `max` apply only to type = \"integer\""));
            }
            if f.ty != RawType::String && f.safe {
                problems.push(problem(&fkey, "`safe` applies only to type = \"string\""));
            }
            let ty = match f.ty {
                RawType::String => FieldType::String { safe: f.safe },
                RawType::Date => FieldType::Date,
                RawType::Bool => FieldType::Bool,
                RawType::Integer => {
                    if let (Some(lo), Some(hi)) = (f.min, f.max) {
                        if lo > hi {
                            problems.push(problem(&fkey, format!("min {lo} is above max {hi}")));
                        }
                    }
                    FieldType::Integer { min: f.min, max: f.max }
                }
                RawType::Enum => FieldType::Enum(build_enum(&fkey, f, &mut problems)),
            };
            if let Some(c) = keyless(&f.columns) {
                problems.push(problem(
                    format!("{key}.fields.{fname}.columns"),
                    format!("header `{c}` has no letter or digit: no header would match it"),
                ));
            }
            fields.push(Field {
                name: fname.clone(),
                ty,
                required: f.required,
                columns: columns_of(fname, &f.columns),
            });
        }
        let record_id = fields.iter().position(|f| f.name == k.record_id);
        match record_id {
            None => problems
                .push(problem(format!("{key}.record_id"), format!("`{}` is not a field of this kind", k.record_id))),
            Some(i) => {
                if !fields[i].required {
                    problems.push(problem(
                        format!("{key}.record_id"),
                        format!("`{}` must be required = true", k.record_id),
                    ));
                }
            }
        }
        let event_date = fields.iter().position(|f| f.name == k.event_date);
        match event_date {
            None => problems
                .push(problem(format!("{key}.event_date"), format!("`{}` is not a field of this kind", k.event_date))),
            Some(i) => {
                if !matches!(fields[i].ty, FieldType::Date) || !fields[i].required {
                    problems.push(problem(
                        format!("{key}.event_date"),
                        format!("`{}` must be a required date field", k.event_date),
                    ));
                }
            }
        }
        // Two fields of one kind (identity included) may not claim the same header.
        let mut claimed = identity_claims.clone();
        for f in &fields {
            for c in &f.columns {
                if let Some(taken) = claim(&mut claimed, c, &f.name) {
                    problems.push(problem(format!("{key}.fields.{}.columns", f.name), taken));
                }
            }
        }
        kinds.push(Kind {
            name: kname.clone(),
            agency: k.agency.clone(),
            fields,
            record_id: record_id.unwrap_or(0),
            event_date: event_date.unwrap_or(0),
            snapshot: k.snapshot,
        });
    }

    if problems.is_empty() {
        Ok(Schema { identity, schemes, linkage, kinds })
    } else {
        Err(problems)
    }
}

fn columns_of(name: &str, extra: &[String]) -> Vec<String> {
    header_names(std::iter::once(name).chain(extra.iter().map(String::as_str)))
}

/// The form a header name is matched in: its letters and digits only, in
/// lower case, a `#` read as `number`. `First Name`, `first_name`,
/// `FirstName` and `FIRST-NAME` are one header, and so are `Street #` and
/// `street_number` (a house number, not the street), so an export whose
/// header is spelled another way maps without editing the schema. A header
/// with no letter or digit has the empty key and matches nothing; a schema
/// naming one is refused.
pub fn header_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '#' {
            key.push_str("number");
        } else if c.is_alphanumeric() {
            key.extend(c.to_lowercase());
        }
    }
    key
}

/// Claim `header` (by its [`header_key`]) for the field `owner`; the
/// problem when another field held it. Two spellings of one header in one
/// field's list are one claim.
fn claim(claims: &mut HashMap<String, String>, header: &str, owner: &str) -> Option<String> {
    let prev = claims.insert(header_key(header), owner.to_string())?;
    (prev != owner).then(|| format!("header `{header}` is already claimed by `{prev}`"))
}

/// The first of `names` that is not blank but has no letter or digit (its
/// [`header_key`] is empty): a header no export's column could match.
fn keyless<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    names.into_iter().find(|c| !c.trim().is_empty() && header_key(c).is_empty())
}

/// Header names as the schema lists them: trimmed, lower case, empty ones
/// dropped, each once, in order (matched by [`header_key`]).
fn header_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in names {
        let c = c.trim().to_lowercase();
        if !c.is_empty() && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn build_enum(key: &str, f: &RawField, problems: &mut Vec<Problem>) -> EnumType {
    let mut lookup = HashMap::new();
    if f.values.is_empty() {
        problems.push(problem(format!("{key}.values"), "an enum needs at least one value"));
    }
    if f.values.len() > usize::from(u16::MAX) {
        problems.push(problem(format!("{key}.values"), "too many values"));
    }
    for (i, v) in f.values.iter().enumerate() {
        if !valid_name(v) {
            problems.push(problem(format!("{key}.values"), format!("`{v}`: {NAME_RULE}")));
        }
        if lookup.insert(enum_key(v), i as u16).is_some() {
            problems.push(problem(format!("{key}.values"), format!("`{v}` appears twice")));
        }
    }
    for (alias, target) in &f.aliases {
        match f.values.iter().position(|v| v == target) {
            None => problems.push(problem(
                format!("{key}.aliases"),
                format!("`{alias}` maps to `{target}`, which is not one of the values"),
            )),
            Some(i) => {
                if let Some(prev) = lookup.insert(enum_key(alias), i as u16) {
                    if usize::from(prev) != i {
                        problems.push(problem(
                            format!("{key}.aliases"),
                            format!("`{alias}` is already a spelling of `{}`", f.values[usize::from(prev)]),
                        ));
                    }
                }
            }
        }
    }
    EnumType { values: f.values.clone(), lookup }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_schema_is_valid() {
        let s = Schema::default_schema().unwrap_or_else(|p| panic!("{p:?}"));
        for k in [
            "referral",
            "arrest",
            "booking",
            "charge",
            "program_status",
            "intake",
            "plan",
            "contact",
            "service",
            "monthly_status",
            "episode",
        ] {
            assert!(s.kind(k).is_some(), "kind {k}");
        }
        assert!(s.birth_date_field().is_some());
        assert!(s.linkage.bridge >= s.linkage.threshold);
        assert_eq!(s.linkage.prior.len(), s.schemes.len());
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = r#"
version = 2
[identity.given_name]
normalize = "given_name"
release = true
[identity.family_name]
normalize = "family_name"
[identity.age]
normalize = "sex"
release = true
[[schemes]]
name = "surname_only"
parts = ["family_name"]
[[schemes]]
name = "bad"
parts = ["nope", "given_name:wobble"]
[linkage]
threshold = 150
[kinds.arrest]
record_id = "missing"
event_date = "arrest_date"
[kinds.arrest.fields]
arrest_date = { type = "string" }
level = { type = "enum", values = ["felony"], aliases = { f = "fel" } }
"#;
        let problems = Schema::from_toml(text).unwrap_err();
        let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| all.iter().any(|p| p.contains(needle));
        assert!(has("version: unsupported"), "{all:#?}");
        assert!(has("identity.given_name.release"), "{all:#?}");
        assert!(has("identity.age: a released field may not take this name"), "{all:#?}");
        assert!(has("schemes[0] (surname_only).parts: too little information"), "{all:#?}");
        assert!(has("`nope` is not a declared identity field"), "{all:#?}");
        assert!(has("`wobble` is not a transform"), "{all:#?}");
        assert!(has("linkage.threshold: 150 bits cannot be reached"), "{all:#?}");
        assert!(has("kinds.arrest.record_id"), "{all:#?}");
        assert!(has("kinds.arrest.event_date"), "{all:#?}");
        assert!(has("kinds.arrest.fields.level.aliases"), "{all:#?}");
    }

    #[test]
    fn the_linkage_rule_is_a_match_weight_or_the_older_threshold() {
        let s = Schema::default_schema().unwrap_or_else(|p| panic!("{p:?}"));
        assert!(s.linkage.with_prior, "the shipped rule is a match weight, the prior included");
        // A schema of an earlier release (`threshold`, evidence alone) reads as it did.
        let old = DEFAULT_SCHEMA.replace("match_weight = 0\nbridge = 20", "threshold = 12\nbridge = 30");
        let s = Schema::from_toml(&old).unwrap_or_else(|p| panic!("{p:?}"));
        assert!(!s.linkage.with_prior && s.linkage.threshold == 12.0 && s.linkage.bridge == 30.0);
        let both = DEFAULT_SCHEMA.replace("match_weight = 0\n", "match_weight = 0\nthreshold = 12\n");
        let problems = Schema::from_toml(&both).unwrap_err();
        assert!(problems.iter().any(|p| p.to_string().contains("not both")), "{problems:?}");
        let neither = DEFAULT_SCHEMA.replace("match_weight = 0\n", "");
        let problems = Schema::from_toml(&neither).unwrap_err();
        assert!(problems.iter().any(|p| p.to_string().contains("missing [linkage]")), "{problems:?}");
        let low = DEFAULT_SCHEMA.replace("match_weight = 0\nbridge = 20", "match_weight = -60");
        let problems = Schema::from_toml(&low).unwrap_err();
        assert!(problems.iter().any(|p| p.to_string().contains("linkage.match_weight: must be")), "{problems:?}");
    }

    #[test]
    fn two_fields_may_not_claim_one_header_however_it_is_spelled() {
        // `First Name` is matched as `first_name`, the given name's column.
        let text = DEFAULT_SCHEMA.replace("columns = [\"last_name\",", "columns = [\"First Name\", \"last_name\",");
        assert_ne!(text, DEFAULT_SCHEMA);
        let problems = Schema::from_toml(&text).unwrap_err();
        let claim = |p: &Problem| {
            let t = p.to_string();
            t.contains("first")
                && t.contains("is already claimed by")
                && t.contains("given_name")
                && t.contains("family_name")
        };
        assert!(problems.iter().any(claim), "{problems:?}");
        // Spellings of one header within one field's list are one claim.
        let schema = Schema::default_schema().unwrap();
        let email = schema.identity.iter().find(|f| f.name == "email").unwrap();
        assert!(email.columns.contains(&"email".to_string()) && email.columns.contains(&"e_mail".to_string()));
        assert_eq!(header_key(" Date of Birth "), "dateofbirth");
        assert_eq!(header_key("Soc. Sec. ID"), header_key("soc_sec_id"));
        assert_eq!(header_key("-"), "");
        assert_eq!(header_key("Street #"), header_key("street_number"));
        // A header name no column could match is refused, not ignored.
        let text = DEFAULT_SCHEMA.replace("columns = [\"last_name\",", "columns = [\"--\", \"last_name\",");
        let problems = Schema::from_toml(&text).unwrap_err();
        assert!(problems.iter().any(|p| p.to_string().contains("header `--` has no letter or digit")), "{problems:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = Schema::default_schema().map(|_| DEFAULT_SCHEMA.replace("version = 1", "version = 1\nverison = 1"));
        let problems = Schema::from_toml(&text.unwrap_or_default()).unwrap_err();
        assert!(problems[0].to_string().contains("verison"), "{problems:?}");
    }

    #[test]
    fn enum_spellings() {
        let s = Schema::default_schema().unwrap_or_else(|p| panic!("{p:?}"));
        let k = s.kind("referral").unwrap();
        let FieldType::Enum(e) = &k.fields[k.field_index("referral_type").unwrap()].ty else { panic!() };
        assert_eq!(e.resolve("Social Contact"), e.resolve("social_contact"));
        assert_eq!(e.resolve(" SOCIAL "), e.resolve("social-contact"));
        assert!(e.resolve("other").is_none());
    }
}
