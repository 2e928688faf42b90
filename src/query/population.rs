//! Persons and their events in a compact columnar form, built once so queries are fast.
//!
//! The privacy unit of every release is a person. The steward links records
//! into persons and hands them here as `(person id, record)` pairs; the ids
//! only group records and are dropped once the population is built. Only
//! persons with a usable referral (a date and an `arm`) are kept: every
//! query's cohort is a subset of them.
//!
//! Layout: per person, the anchor (first referral date, days since
//! 1970-01-01) and the public categories of the first referral; per record
//! kind, CSR arrays (`offsets[p]..offsets[p + 1]` are person p's events,
//! sorted by date, then by arrival) with one column per schema field: dates
//! as `i32` days, enums as `u16` value indices, bools as bits, integers as
//! `i64`. Free text is not kept.

use std::collections::HashMap;

use serde_json::Value;

use super::model::Category;
pub(crate) use crate::days::{civil_from_days, days_from_civil, first_of_month_after};
use crate::normalize::NormKind;
use crate::record::PseudoRecord;
use crate::schema::{FieldType, Schema};
use crate::wire::binary::{date_text, FieldValue};

/// Enum column: no value.
pub(crate) const NO_ENUM: u16 = u16::MAX;
/// Integer column: no value.
pub(crate) const NO_INT: i64 = i64::MIN;
/// Date column: no value.
pub(crate) const NO_DATE: i32 = i32::MIN;
/// Person category code: the value has no declared category (only for a required field left empty).
pub(crate) const NO_CATEGORY: u8 = u8::MAX;

/// The label of a missing category value.
pub const UNKNOWN: &str = "unknown";
/// Age bands at the first referral, in order; ages below 18 are `under_18`.
pub const AGE_BANDS: [&str; 7] = ["under_18", "18-25", "26-35", "36-45", "46-55", "56+", UNKNOWN];
/// Released sex codes (see `normalize`), then `unknown`.
pub const SEX_VALUES: [&str; 4] = ["f", "m", "x", UNKNOWN];

/// The kind whose first record anchors each person, and its fields the categories come from.
pub(crate) const REFERRAL: &str = "referral";
pub(crate) const ARM: &str = "arm";
pub(crate) const RACE: &str = "race_ethnicity";
pub(crate) const REFERRAL_TYPE: &str = "referral_type";
pub(crate) const SCREENING: &str = "screening";

/// The declared values of each public category, from the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Categories {
    values: [Vec<String>; 5],
}

impl Categories {
    /// arm, race_ethnicity and referral_type: the referral kind's enum values
    /// (with `unknown` added for an optional field that lacks it); sex and age
    /// band: fixed lists.
    pub fn from_schema(schema: &Schema) -> Categories {
        let referral = schema.kind(REFERRAL);
        let enum_values = |name: &str, with_unknown: bool| -> Vec<String> {
            let field = referral.and_then(|k| k.field_index(name).map(|i| &k.fields[i]));
            let mut v: Vec<String> = match field.map(|f| (&f.ty, f.required)) {
                Some((FieldType::Enum(e), required)) => {
                    let mut v = e.values.clone();
                    if with_unknown && !required && !v.iter().any(|x| x == UNKNOWN) {
                        v.push(UNKNOWN.into());
                    }
                    v
                }
                _ if with_unknown => vec![UNKNOWN.into()],
                _ => Vec::new(),
            };
            v.dedup();
            v
        };
        Categories {
            values: [
                enum_values(ARM, false),
                SEX_VALUES.iter().map(|s| s.to_string()).collect(),
                AGE_BANDS.iter().map(|s| s.to_string()).collect(),
                enum_values(RACE, true),
                enum_values(REFERRAL_TYPE, true),
            ],
        }
    }

    /// The values of a category, in their declared order.
    pub fn values(&self, c: Category) -> &[String] {
        &self.values[c.index()]
    }

    fn code(&self, c: Category, value: Option<&str>) -> u8 {
        let values = self.values(c);
        let found = match value {
            Some(v) => values.iter().position(|x| x == v),
            None => None,
        };
        found.or_else(|| values.iter().position(|x| x == UNKNOWN)).map_or(NO_CATEGORY, |i| i as u8)
    }
}

/// Age band index in `AGE_BANDS` of an age.
pub(crate) fn age_band(age: Option<i64>) -> &'static str {
    match age {
        None => UNKNOWN,
        Some(a) if a < 18 => AGE_BANDS[0],
        Some(a) if a <= 25 => AGE_BANDS[1],
        Some(a) if a <= 35 => AGE_BANDS[2],
        Some(a) if a <= 45 => AGE_BANDS[3],
        Some(a) if a <= 55 => AGE_BANDS[4],
        Some(_) => AGE_BANDS[5],
    }
}

/// What a schema looks like to the engine: kinds, their fields and field types.
/// A plan runs only on a population built with the same layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout(Vec<(String, Vec<(String, u8)>)>);

impl Layout {
    pub(crate) fn of(schema: &Schema) -> Layout {
        Layout(
            schema
                .kinds
                .iter()
                .map(|k| {
                    let fields = k
                        .fields
                        .iter()
                        .map(|f| {
                            let t = match &f.ty {
                                FieldType::String { .. } => 0,
                                FieldType::Date => 1,
                                FieldType::Enum(_) => 2,
                                FieldType::Bool => 3,
                                FieldType::Integer { .. } => 4,
                            };
                            (f.name.clone(), t)
                        })
                        .collect();
                    (k.name.clone(), fields)
                })
                .collect(),
        )
    }
}

/// Bools as bits, with a presence bit each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bits {
    value: Vec<u64>,
    present: Vec<u64>,
    len: usize,
}

impl Bits {
    fn push(&mut self, v: Option<bool>) {
        let (word, bit) = (self.len / 64, self.len % 64);
        if bit == 0 {
            self.value.push(0);
            self.present.push(0);
        }
        if let Some(b) = v {
            self.present[word] |= 1 << bit;
            if b {
                self.value[word] |= 1 << bit;
            }
        }
        self.len += 1;
    }

    pub(crate) fn get(&self, i: usize) -> Option<bool> {
        let (word, bit) = (i / 64, i % 64);
        let present = self.present.get(word).is_some_and(|w| w >> bit & 1 == 1);
        present.then(|| self.value.get(word).is_some_and(|w| w >> bit & 1 == 1))
    }
}

/// One field of one kind, for all its events.
#[derive(Debug, Clone)]
pub(crate) enum Column {
    /// Free text and record ids are not kept.
    Absent,
    Enum(Vec<u16>),
    Bool(Bits),
    Int(Vec<i64>),
    Date(Vec<i32>),
}

impl Column {
    fn new(ty: &FieldType) -> Column {
        match ty {
            FieldType::String { .. } => Column::Absent,
            FieldType::Date => Column::Date(Vec::new()),
            FieldType::Enum(_) => Column::Enum(Vec::new()),
            FieldType::Bool => Column::Bool(Bits::default()),
            FieldType::Integer { .. } => Column::Int(Vec::new()),
        }
    }

    fn push_value(&mut self, v: CellValue) {
        match (self, v) {
            (Column::Enum(c), CellValue::Code(x)) => c.push(x),
            (Column::Bool(c), CellValue::Bool(x)) => c.push(x),
            (Column::Int(c), CellValue::Int(x)) => c.push(x),
            (Column::Date(c), CellValue::Date(x)) => c.push(x),
            _ => {}
        }
    }

    /// The rows `order` of this column, in that order.
    fn gather(&self, order: &[usize]) -> Column {
        match self {
            Column::Absent => Column::Absent,
            Column::Enum(c) => Column::Enum(order.iter().map(|&i| c[i]).collect()),
            Column::Int(c) => Column::Int(order.iter().map(|&i| c[i]).collect()),
            Column::Date(c) => Column::Date(order.iter().map(|&i| c[i]).collect()),
            Column::Bool(c) => {
                let mut b = Bits::default();
                for &i in order {
                    b.push(c.get(i));
                }
                Column::Bool(b)
            }
        }
    }

    /// The value at `i` as a small code: enum index, bool 0/1; `None` when missing.
    pub(crate) fn code(&self, i: usize) -> Option<u16> {
        match self {
            Column::Enum(c) => c.get(i).copied().filter(|&v| v != NO_ENUM),
            Column::Bool(c) => c.get(i).map(u16::from),
            _ => None,
        }
    }
}

/// One field's value of a prepared record, as its kind's column keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellValue {
    /// A field whose kind's column keeps nothing (free text, record ids).
    Absent,
    /// An enum's index, `NO_ENUM` when missing or unknown.
    Code(u16),
    Bool(Option<bool>),
    /// `NO_INT` when missing.
    Int(i64),
    /// `NO_DATE` when missing or not a date.
    Date(i32),
}

impl CellValue {
    /// The value as [`Column::code`] reads it back: an enum's index, a boolean as 0 or 1.
    fn code(self) -> Option<u16> {
        match self {
            CellValue::Code(c) => (c != NO_ENUM).then_some(c),
            CellValue::Bool(b) => b.map(u16::from),
            _ => None,
        }
    }

    fn of(ty: &FieldType, v: FieldValue<'_>) -> CellValue {
        match (ty, v) {
            (FieldType::String { .. }, _) => CellValue::Absent,
            (FieldType::Enum(e), FieldValue::Str(s)) => CellValue::Code(e.resolve(s).unwrap_or(NO_ENUM)),
            (FieldType::Enum(_), _) => CellValue::Code(NO_ENUM),
            (FieldType::Bool, FieldValue::Bool(b)) => CellValue::Bool(Some(b)),
            (FieldType::Bool, _) => CellValue::Bool(None),
            (FieldType::Integer { .. }, FieldValue::Int(i)) if i != NO_INT => CellValue::Int(i),
            (FieldType::Integer { .. }, _) => CellValue::Int(NO_INT),
            (FieldType::Date, v) => CellValue::Date(date_of(v).unwrap_or(NO_DATE)),
        }
    }
}

/// A JSON field value as a binary batch's view holds it (`Null` for what a
/// population cannot read: a fraction, an array, an object).
fn field_of_json(v: Option<&Value>) -> FieldValue<'_> {
    match v {
        Some(Value::String(s)) => FieldValue::Str(s),
        Some(Value::Bool(b)) => FieldValue::Bool(*b),
        Some(Value::Number(n)) => n.as_i64().map_or(FieldValue::Null, FieldValue::Int),
        _ => FieldValue::Null,
    }
}

/// A date field's day number: text as `YYYY-MM-DD`, a binary day number
/// read the same way (through its text, so both forms accept the same days).
fn date_of(v: FieldValue<'_>) -> Option<i32> {
    match v {
        FieldValue::Str(s) => parse_date(s),
        FieldValue::Date(d) => parse_date(date_text(d).as_str()),
        _ => None,
    }
}

/// A record as a population build reads it: its kind's position in the
/// schema, its event date, its fields' values in schema order, and (for a
/// referral) the sex and age band codes. No name, token or id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    kind: u16,
    date: i32,
    values: Box<[CellValue]>,
    referral_identity: (u8, u8),
}

/// Prepares records for [`Population::build_prepared`] under one schema.
pub struct Preparer<'s> {
    schema: &'s Schema,
    categories: Categories,
    kind_index: HashMap<&'s str, usize>,
    referral: Option<usize>,
    sex_field: Option<&'s str>,
}

impl<'s> Preparer<'s> {
    pub fn new(schema: &'s Schema) -> Preparer<'s> {
        let kind_index: HashMap<&str, usize> =
            schema.kinds.iter().enumerate().map(|(i, k)| (k.name.as_str(), i)).collect();
        Preparer {
            schema,
            categories: Categories::from_schema(schema),
            referral: kind_index.get(REFERRAL).copied(),
            kind_index,
            sex_field: schema.identity.iter().find(|f| f.release && f.norm == NormKind::Sex).map(|f| f.name.as_str()),
        }
    }

    /// The record of `kind` with `fields` as a build reads it; `None` when
    /// no population holds it (a kind the schema does not know, or no valid
    /// event date).
    pub fn prepare(&self, kind: &str, fields: &std::collections::BTreeMap<String, Value>) -> Option<Prepared> {
        self.prepare_with(kind, |name| field_of_json(fields.get(name)))
    }

    /// [`Preparer::prepare`] of a record whose fields `field` looks up by
    /// name (`Null` when missing): a binary batch's record read from its
    /// view, no JSON value made.
    pub fn prepare_with<'v>(&self, kind: &str, field: impl Fn(&str) -> FieldValue<'v>) -> Option<Prepared> {
        let k = *self.kind_index.get(kind)?;
        let kind = &self.schema.kinds[k];
        let date = date_of(field(&kind.fields[kind.event_date].name))?;
        let values = kind.fields.iter().map(|f| CellValue::of(&f.ty, field(&f.name))).collect();
        let referral_identity = if Some(k) == self.referral {
            let sex = match self.sex_field.map(&field) {
                Some(FieldValue::Str(s)) => Some(s),
                _ => None,
            };
            let age = match field("age") {
                FieldValue::Int(i) => Some(i),
                _ => None,
            };
            (self.categories.code(Category::Sex, sex), self.categories.code(Category::AgeBand, Some(age_band(age))))
        } else {
            (0, 0)
        };
        Some(Prepared { kind: u16::try_from(k).ok()?, date, values, referral_identity })
    }
}

/// All events of one kind, grouped by person.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    /// Person p's events are `offsets[p]..offsets[p + 1]`.
    pub(crate) offsets: Vec<u32>,
    /// Event dates, sorted within each person.
    pub(crate) dates: Vec<i32>,
    /// One column per field of the kind, in schema order.
    pub(crate) columns: Vec<Column>,
}

impl Events {
    /// The index range of person `p`'s events.
    pub(crate) fn range(&self, p: usize) -> std::ops::Range<usize> {
        self.offsets[p] as usize..self.offsets[p + 1] as usize
    }
}

/// Per-person attributes of the first referral.
#[derive(Debug, Clone, Default)]
pub(crate) struct Persons {
    /// Day 0: the first referral's date.
    pub(crate) anchor: Vec<i32>,
    /// Category codes (index into `Categories::values`), one vector per `Category`.
    pub(crate) category: [Vec<u8>; 5],
    /// The first referral's screening (enum index), `NO_ENUM` when missing.
    pub(crate) screening: Vec<u16>,
}

/// The persons of a program and their events, ready for queries.
#[derive(Debug, Clone)]
pub struct Population {
    pub(crate) layout: Layout,
    pub(crate) categories: Categories,
    pub(crate) persons: Persons,
    /// One per schema kind, in schema order.
    pub(crate) kinds: Vec<Events>,
}

/// Person id → person slot (numbered in order of arrival). The steward's
/// person ids are dense (0..persons), so a vector indexed by id does it
/// without hashing; ids spread far wider than the records seen so far go
/// to a hash map instead, so memory stays bounded by the records.
#[derive(Default)]
struct Slots {
    dense: Vec<u32>,
    sparse: HashMap<u32, u32>,
    count: u32,
}

impl Slots {
    /// The slot of `person`, a new one if first seen; `seen` records so far.
    fn slot(&mut self, person: u32, seen: u32) -> u32 {
        let i = person as usize;
        if let Some(&slot) = self.dense.get(i).filter(|&&s| s != u32::MAX) {
            return slot;
        }
        if let Some(&slot) = self.sparse.get(&person) {
            return slot;
        }
        let slot = self.count;
        self.count += 1;
        if i < self.dense.len() || i <= 4 * seen as usize + 65_536 {
            if i >= self.dense.len() {
                self.dense.resize(i + 1, u32::MAX);
            }
            self.dense[i] = slot;
        } else {
            self.sparse.insert(person, slot);
        }
        slot
    }
}

/// Staging for one kind while records arrive.
struct Stage {
    /// (person slot, date, arrival number) per row.
    keys: Vec<(u32, i32, u32)>,
    columns: Vec<Column>,
}

impl Population {
    /// Group `(person id, record)` pairs into persons and index their events.
    ///
    /// Records of a kind the schema does not know, or without a valid event
    /// date, are skipped. A person's anchor is their earliest referral with a
    /// date and an arm (ties: the first received); persons without one are
    /// left out. Their categories come from that referral: arm,
    /// race_ethnicity, referral_type, screening, sex and age (as an age band).
    pub fn build<R: std::borrow::Borrow<PseudoRecord>>(
        schema: &Schema,
        persons: impl IntoIterator<Item = (u32, R)>,
    ) -> Population {
        let preparer = Preparer::new(schema);
        let prepared: Vec<(u32, Prepared)> = persons
            .into_iter()
            .filter_map(|(person, r)| {
                let r: &PseudoRecord = r.borrow();
                Some((person, preparer.prepare(&r.kind, &r.fields)?))
            })
            .collect();
        Population::build_prepared(schema, prepared.iter().map(|(p, e)| (*p, e)))
    }

    /// [`Population::build`] of records prepared beforehand ([`Preparer`]):
    /// what a build does per record (kind, date and field values looked up
    /// and parsed) is done once, when the record arrives, not at every build.
    ///
    /// Two passes over `persons`: the first finds the persons with an anchor
    /// (a referral with an arm), the second stages only their records, so a
    /// person no query can count (most people arrested are never referred)
    /// costs a slot lookup, not a row in every column.
    pub fn build_prepared<'p, I>(schema: &Schema, persons: I) -> Population
    where
        I: IntoIterator<Item = (u32, &'p Prepared)>,
        I::IntoIter: Clone,
    {
        let categories = Categories::from_schema(schema);
        let referral = schema.kinds.iter().position(|k| k.name == REFERRAL);

        let mut stages: Vec<Stage> = schema
            .kinds
            .iter()
            .map(|k| Stage { keys: Vec::new(), columns: k.fields.iter().map(|f| Column::new(&f.ty)).collect() })
            .collect();
        // Referral rows also keep the person's sex code and age band code.
        let mut referral_identity: Vec<(u8, u8)> = Vec::new();
        let mut slots = Slots::default();
        let column_of = |k: usize, name: &str| schema.kinds[k].field_index(name);
        let arm_at = referral.and_then(|r| column_of(r, ARM));
        let persons = persons.into_iter();

        // Pass 1: person slots in order of first arrival (every record counts),
        // and which slots have a referral with an arm (an anchor).
        let mut anchored: Vec<bool> = Vec::new();
        let mut seq: u32 = 0;
        for (person, record) in persons.clone() {
            let k = usize::from(record.kind);
            if k >= stages.len() {
                continue;
            }
            let slot = slots.slot(person, seq) as usize;
            seq = seq.wrapping_add(1);
            if slot >= anchored.len() {
                anchored.resize(slot + 1, false);
            }
            if Some(k) == referral && arm_at.and_then(|a| record.values.get(a)).and_then(|v| v.code()).is_some() {
                anchored[slot] = true;
            }
        }

        // Pass 2: the rows of anchored persons only, numbered as in pass 1.
        let mut seq: u32 = 0;
        for (person, record) in persons {
            let k = usize::from(record.kind);
            let Some(stage) = stages.get_mut(k) else { continue };
            let slot = slots.slot(person, seq);
            let this = seq;
            seq = seq.wrapping_add(1);
            if !anchored.get(slot as usize).copied().unwrap_or(false) {
                continue;
            }
            stage.keys.push((slot, record.date, this));
            for (col, v) in stage.columns.iter_mut().zip(record.values.iter()) {
                col.push_value(*v);
            }
            if Some(k) == referral {
                referral_identity.push(record.referral_identity);
            }
        }
        drop(slots);

        // Anchors: the earliest referral with an arm, per person slot.
        let n_slots = anchored.len();
        let mut first: Vec<Option<usize>> = vec![None; n_slots];
        if let Some(r) = referral {
            let stage = &stages[r];
            let arm = column_of(r, ARM).map(|i| &stage.columns[i]);
            for (row, &(slot, date, s)) in stage.keys.iter().enumerate() {
                if arm.and_then(|c| c.code(row)).is_none() {
                    continue;
                }
                let best = &mut first[slot as usize];
                let better = match *best {
                    None => true,
                    Some(b) => {
                        let (_, bd, bs) = stage.keys[b];
                        (date, s) < (bd, bs)
                    }
                };
                if better {
                    *best = Some(row);
                }
            }
        }

        // Kept persons, numbered in order of first arrival.
        let mut new_index = vec![u32::MAX; n_slots];
        let mut p = Persons::default();
        if let Some(r) = referral {
            let stage = &stages[r];
            let code = |name: &str, row: usize| column_of(r, name).and_then(|i| stage.columns[i].code(row));
            let label = |c: Category, row: usize, field: &str| -> u8 {
                let values = categories.values(c);
                let v = code(field, row).and_then(|i| match &schema.kinds[r].fields[column_of(r, field)?].ty {
                    FieldType::Enum(e) => e.values.get(usize::from(i)).cloned(),
                    _ => None,
                });
                match v {
                    Some(v) => values.iter().position(|x| *x == v).map_or(NO_CATEGORY, |i| i as u8),
                    None => categories.code(c, None),
                }
            };
            for (slot, row) in first.iter().enumerate() {
                let Some(row) = *row else { continue };
                new_index[slot] = p.anchor.len() as u32;
                p.anchor.push(stage.keys[row].1);
                p.category[Category::Arm.index()].push(label(Category::Arm, row, ARM));
                p.category[Category::Sex.index()].push(referral_identity[row].0);
                p.category[Category::AgeBand.index()].push(referral_identity[row].1);
                p.category[Category::RaceEthnicity.index()].push(label(Category::RaceEthnicity, row, RACE));
                p.category[Category::ReferralType.index()].push(label(Category::ReferralType, row, REFERRAL_TYPE));
                p.screening.push(code(SCREENING, row).unwrap_or(NO_ENUM));
            }
        }
        let n = p.anchor.len();

        // Each kind: kept persons' rows, sorted by (person, date, arrival), as CSR.
        let kinds = stages
            .into_iter()
            .map(|stage| {
                // Rows counted per kept person, placed in arrival order (a
                // counting sort), then each person's rows sorted by date: a
                // stable sort, so arrival breaks ties.
                let person_of = |i: usize| new_index[stage.keys[i].0 as usize];
                let mut offsets = vec![0u32; n + 1];
                for i in 0..stage.keys.len() {
                    if person_of(i) != u32::MAX {
                        offsets[person_of(i) as usize + 1] += 1;
                    }
                }
                for i in 0..n {
                    offsets[i + 1] += offsets[i];
                }
                let mut fill: Vec<u32> = offsets[..n].to_vec();
                let mut order = vec![0usize; offsets[n] as usize];
                for i in 0..stage.keys.len() {
                    if let Some(at) = fill.get_mut(person_of(i) as usize) {
                        order[*at as usize] = i;
                        *at += 1;
                    }
                }
                for w in offsets.windows(2) {
                    order[w[0] as usize..w[1] as usize].sort_by_key(|&i| stage.keys[i].1);
                }
                Events {
                    offsets,
                    dates: order.iter().map(|&i| stage.keys[i].1).collect(),
                    columns: stage.columns.iter().map(|c| c.gather(&order)).collect(),
                }
            })
            .collect();

        Population { layout: Layout::of(schema), categories, persons: p, kinds }
    }

    /// Number of persons (with a referral). For the steward's own monitoring: never send it to an evaluator.
    pub fn len(&self) -> usize {
        self.persons.anchor.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of events kept, all kinds. For the steward's own monitoring: never send it to an evaluator.
    pub fn event_count(&self) -> usize {
        self.kinds.iter().map(|k| k.dates.len()).sum()
    }

    /// The declared values of the public categories.
    pub fn categories(&self) -> &Categories {
        &self.categories
    }
}

/// `YYYY-MM-DD` (the wire form of dates) as days since 1970-01-01.
pub(crate) fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let mut n = 0u32;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u32::from(c - b'0');
        }
        Some(n)
    };
    let (y, m, d) = (num(0..4)? as i32, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d == 0 || d > 31 {
        return None;
    }
    let day = days_from_civil(y, m, d);
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn person_slots_are_numbered_in_order_of_arrival_dense_ids_or_not() {
        let mut s = Slots::default();
        // A far id goes to the hash map; later dense growth past it must not give it a second slot.
        let far = 1_000_000u32;
        let got: Vec<u32> = [3, far, 3, 0, u32::MAX - 1, far].into_iter().map(|p| s.slot(p, 0)).collect();
        assert_eq!(got, vec![0, 1, 0, 2, 3, 1]);
        assert!(s.sparse.contains_key(&far) && s.dense.len() < far as usize);
        // Many records later a nearby id is dense, and the vector grows past the far id.
        assert_eq!(s.slot(far + 5, 1_000_000), 4);
        assert!(s.dense.len() > far as usize);
        assert_eq!((s.slot(far, 1_000_000), s.slot(3, 1_000_000), s.slot(u32::MAX - 1, 1_000_000)), (1, 0, 3));
    }

    pub(crate) fn rec(kind: &str, fields: serde_json::Value) -> PseudoRecord {
        let fields: BTreeMap<String, Value> = serde_json::from_value(fields).unwrap();
        PseudoRecord {
            source: "test".into(),
            kind: kind.into(),
            line: 1,
            epoch: 1,
            rid: "0".repeat(32),
            seq: 0,
            deleted: false,
            tokens: BTreeMap::new(),
            fields,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2019-03-04"), Some(days_from_civil(2019, 3, 4)));
        for bad in ["2019-02-30", "2019-3-04", "20190304", "2019-13-01", "abcd-ef-gh", ""] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        let d = days_from_civil(2017, 1, 31);
        assert_eq!(first_of_month_after(d, 1), days_from_civil(2017, 2, 1));
        assert_eq!(first_of_month_after(d, 12), days_from_civil(2018, 1, 1));
        assert_eq!(first_of_month_after(d, 0), days_from_civil(2017, 1, 1));
    }

    #[test]
    fn groups_persons_anchors_and_sorts() {
        let schema = Schema::default_schema().unwrap();
        let records = vec![
            (
                7,
                rec(
                    "arrest",
                    serde_json::json!({"arrest_date": "2019-05-01", "warrant": true, "violent": false, "felony": false}),
                ),
            ),
            (
                7,
                rec(
                    "referral",
                    serde_json::json!({"referral_date": "2019-04-01", "arm": "diversion", "referral_type": "arrest", "sex": "f", "age": 30, "race_ethnicity": null}),
                ),
            ),
            (
                7,
                rec(
                    "referral",
                    serde_json::json!({"referral_date": "2019-03-01", "arm": "comparison", "referral_type": "social_contact", "sex": "f", "age": 29}),
                ),
            ),
            (
                7,
                rec(
                    "arrest",
                    serde_json::json!({"arrest_date": "2019-01-01", "warrant": false, "violent": false, "felony": true}),
                ),
            ),
            (
                9,
                rec(
                    "arrest",
                    serde_json::json!({"arrest_date": "2019-01-01", "warrant": false, "violent": false, "felony": true}),
                ),
            ),
            (7, rec("arrest", serde_json::json!({"arrest_date": "not a date", "warrant": false}))),
            (7, rec("unknown_kind", serde_json::json!({}))),
        ];
        let pop = Population::build(&schema, records);
        assert_eq!(pop.len(), 1, "person 9 has no referral");
        assert_eq!(pop.persons.anchor[0], days_from_civil(2019, 3, 1));
        let arm = pop.persons.category[Category::Arm.index()][0];
        assert_eq!(pop.categories.values(Category::Arm)[arm as usize], "comparison");
        let band = pop.persons.category[Category::AgeBand.index()][0];
        assert_eq!(pop.categories.values(Category::AgeBand)[band as usize], "26-35");
        let race = pop.persons.category[Category::RaceEthnicity.index()][0];
        assert_eq!(pop.categories.values(Category::RaceEthnicity)[race as usize], "unknown");
        let arrests = &pop.kinds[schema.kinds.iter().position(|k| k.name == "arrest").unwrap()];
        assert_eq!(arrests.range(0), 0..2);
        assert_eq!(arrests.dates, vec![days_from_civil(2019, 1, 1), days_from_civil(2019, 5, 1)]);
        let warrant = schema.kind("arrest").unwrap().field_index("warrant").unwrap();
        assert_eq!(arrests.columns[warrant].code(0), Some(0));
        assert_eq!(arrests.columns[warrant].code(1), Some(1));
        assert_eq!(pop.event_count(), 4);
    }

    /// Many persons, many records in a random arrival order: the persons
    /// kept are exactly those with a referral with an arm, numbered in order
    /// of their first record of any kind; each kind's rows of a person are all
    /// of theirs with a date, sorted by date, ties in arrival order.
    #[test]
    fn persons_are_kept_numbered_and_their_rows_ordered_as_they_arrived() {
        use rand::{Rng, SeedableRng};
        let schema = Schema::default_schema().unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let day = |d: i32| date_text(days_from_civil(2019, 1, 1) + d).as_str().to_string();
        let mut records = Vec::new();
        for arrival in 0..1440 {
            let person: u32 = rng.gen_range(0..200);
            let date = day(rng.gen_range(0..20));
            // A contact's minutes carry the arrival number, to see the order of equal dates.
            let r = match rng.gen_range(0..5) {
                0 => rec("referral", serde_json::json!({"referral_date": date, "arm": "diversion"})),
                1 => rec("referral", serde_json::json!({"referral_date": date})),
                2 => rec("contact", serde_json::json!({"contact_date": date, "minutes": arrival})),
                _ => rec("arrest", serde_json::json!({"arrest_date": date, "felony": rng.gen_bool(0.5)})),
            };
            records.push((person, r));
        }
        let pop = Population::build(&schema, records.iter().map(|(p, r)| (*p, r)));

        let anchored: std::collections::HashSet<u32> = records
            .iter()
            .filter(|(_, r)| r.kind == "referral" && r.fields.contains_key("arm"))
            .map(|(p, _)| *p)
            .collect();
        let mut kept: Vec<u32> = Vec::new();
        for (p, _) in &records {
            if anchored.contains(p) && !kept.contains(p) {
                kept.push(*p);
            }
        }
        assert_eq!(pop.len(), kept.len());
        let kind_at = |name: &str| schema.kinds.iter().position(|k| k.name == name).unwrap();
        let kinds = ["arrest", "referral", "contact"].map(|k| &pop.kinds[kind_at(k)]);
        let minutes = schema.kind("contact").unwrap().field_index("minutes").unwrap();
        let Column::Int(arrival) = &kinds[2].columns[minutes] else { panic!("minutes is an integer column") };
        for (i, person) in kept.iter().enumerate() {
            for (name, events) in ["arrest", "referral", "contact"].iter().zip(kinds) {
                let mine = records.iter().filter(|(p, r)| p == person && r.kind == *name).count();
                assert_eq!(events.range(i).len(), mine, "person {i}: every {name} row");
                let dates = &events.dates[events.range(i)];
                assert!(dates.windows(2).all(|w| w[0] <= w[1]), "person {i}: {name} rows sorted by date");
            }
            let rows: Vec<(i32, i64)> = kinds[2].range(i).map(|j| (kinds[2].dates[j], arrival[j])).collect();
            assert!(rows.windows(2).all(|w| w[0] < w[1]), "person {i}: equal dates in arrival order");
        }
        let anchors: Vec<i32> = kept
            .iter()
            .map(|p| {
                let referral =
                    |(q, r): &&(u32, PseudoRecord)| q == p && r.kind == "referral" && r.fields.contains_key("arm");
                let first =
                    records.iter().filter(referral).map(|(_, r)| r.fields["referral_date"].as_str().unwrap()).min();
                parse_date(first.unwrap()).unwrap()
            })
            .collect();
        assert_eq!(pop.persons.anchor, anchors, "each person's anchor: their earliest referral with an arm");
        assert_eq!(pop.event_count(), records.iter().filter(|(p, _)| anchored.contains(p)).count());
    }

    #[test]
    fn bits_round_trip() {
        let mut b = Bits::default();
        let vals: Vec<Option<bool>> = (0..200).map(|i| if i % 7 == 0 { None } else { Some(i % 3 == 0) }).collect();
        for &v in &vals {
            b.push(v);
        }
        for (i, &v) in vals.iter().enumerate() {
            assert_eq!(b.get(i), v);
        }
    }
}
