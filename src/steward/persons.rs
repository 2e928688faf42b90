//! Persons at the steward: every stored record is linked (incrementally, as batches arrive) with the schema's linkage rule, and a query population is built from the linked records on demand.
//!
//! Person numbers are internal to this module and to `query::Population`;
//! they never leave the steward — not in an answer, a log line or an error.
//! The linkage quality figures (estimated m/u, weights, expected splits and
//! merges; no truth needed) go to the admin status only, never to an evaluator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::linkage::{Linker, Quality};
use crate::query::Population;
use crate::record::PseudoRecord;
use crate::schema::Schema;
use crate::token::{parse_token, Token};

/// The linked records of every source.
pub struct Persons {
    schema: Arc<Schema>,
    scheme_index: HashMap<String, usize>,
    inner: Mutex<Inner>,
}

struct Inner {
    linker: Linker,
    /// Every record held, tokens dropped (they are in the linker), in linker
    /// order; a replaced or deleted record keeps its place with its fields cleared.
    records: Vec<PseudoRecord>,
    /// (source, kind, rid) → the linker index of the version held.
    by_rid: HashMap<(String, String, String), u32>,
    /// The population of the last build, valid until records are added.
    cached: Option<Arc<Population>>,
    /// The quality figures of the last linkage.
    quality: Option<Quality>,
    /// Token schemes seen in records that the steward's schema does not know.
    unknown_schemes: u64,
}

impl Persons {
    pub fn new(schema: Arc<Schema>) -> Persons {
        let scheme_index = schema.schemes.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        let linker = Linker::new(&schema.linkage, schema.schemes.len());
        Persons {
            schema,
            scheme_index,
            inner: Mutex::new(Inner {
                linker,
                records: Vec::new(),
                by_rid: HashMap::new(),
                cached: None,
                quality: None,
                unknown_schemes: 0,
            }),
        }
    }

    /// Link `records` to everything held before. A record whose (source,
    /// kind, rid) is held replaces the version held (the store decided it is
    /// newer), which leaves linkage, so a corrected birth date can move the
    /// record to another person; a tombstone only removes. Tokens of schemes
    /// the schema does not know are ignored (and counted for status).
    pub fn add(&self, records: Vec<PseudoRecord>) {
        let n = self.schema.schemes.len();
        let mut slots: Vec<Option<Token>> = vec![None; n];
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        inner.linker.reserve(records.len());
        inner.quality = None;
        for mut r in records {
            let key = (std::mem::take(&mut r.source), std::mem::take(&mut r.kind), std::mem::take(&mut r.rid));
            if let Some(old) = inner.by_rid.remove(&key) {
                inner.linker.remove(old);
                if let Some(held) = inner.records.get_mut(old as usize) {
                    held.fields.clear();
                }
            }
            (r.source, r.kind, r.rid) = key;
            if r.deleted {
                continue;
            }
            slots.iter_mut().for_each(|s| *s = None);
            for (name, text) in &r.tokens {
                match (self.scheme_index.get(name), parse_token(text)) {
                    (Some(&i), Some((epoch, t))) if epoch == r.epoch => slots[i] = Some(t),
                    _ => inner.unknown_schemes += 1,
                }
            }
            let Ok(index) = inner.linker.add(r.epoch, &slots) else {
                // Only possible past 2^32 records; the record is kept out of queries.
                continue;
            };
            r.tokens.clear();
            inner.by_rid.insert((r.source.clone(), r.kind.clone(), r.rid.clone()), index);
            inner.records.push(r);
        }
        inner.cached = None;
    }

    /// The population to query: built from the linked records, cached until new records arrive.
    pub fn population(&self) -> Arc<Population> {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(p) = &inner.cached {
            return p.clone();
        }
        let linkage = inner.linker.link();
        let pop = Arc::new(Population::build(
            &self.schema,
            linkage
                .persons
                .into_iter()
                .zip(inner.records.iter())
                .filter(|(p, _)| *p != u32::MAX)
                .map(|(p, r)| (p, r.clone())),
        ));
        inner.cached = Some(pop.clone());
        inner.quality = Some(linkage.quality);
        pop
    }

    /// The linkage quality for the admin status, as JSON (scheme names, no
    /// record, token or person): that of the last linkage if no record
    /// arrived since, else linked anew.
    pub fn quality_status(&self) -> serde_json::Value {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let records = inner.linker.live() as u64;
        let q = match &inner.quality {
            Some(q) if q.records == records => q.clone(),
            _ => {
                let q = inner.linker.link().quality;
                inner.quality = Some(q.clone());
                q
            }
        };
        let mut v = serde_json::to_value(&q).unwrap_or_default();
        if let Some(list) = v.get_mut("schemes").and_then(|s| s.as_array_mut()) {
            for (entry, scheme) in list.iter_mut().zip(&self.schema.schemes) {
                entry["name"] = scheme.name.clone().into();
            }
        }
        v
    }

    /// Records held and linked (for the local status only): replaced and deleted ones not counted.
    pub fn records(&self) -> usize {
        self.inner.lock().map(|g| g.linker.live()).unwrap_or(0)
    }

    /// Tokens ignored because their scheme is not in the steward's schema.
    pub fn unknown_scheme_tokens(&self) -> u64 {
        self.inner.lock().map(|g| g.unknown_schemes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rid: u32, seq: u64, person: u32) -> PseudoRecord {
        let t = |scheme: u32| format!("1:{:08x}{:024x}", person, scheme);
        PseudoRecord {
            source: "police".into(),
            kind: "arrest".into(),
            line: 2,
            epoch: 1,
            rid: format!("{rid:032x}"),
            seq,
            deleted: false,
            tokens: [("names_dob".to_string(), t(1)), ("state_id".to_string(), t(2))].into(),
            fields: [("arrest_date".to_string(), serde_json::json!("2024-01-02"))].into(),
        }
    }

    impl Persons {
        /// The person of a held record, linked now.
        fn person_of(&self, rid: u32) -> Option<u32> {
            let inner = self.inner.lock().ok()?;
            let at = *inner.by_rid.get(&("police".to_string(), "arrest".to_string(), format!("{rid:032x}")))?;
            inner.linker.link().persons.get(at as usize).copied()
        }
    }

    #[test]
    fn a_corrected_record_moves_to_another_person_and_a_tombstone_removes_it() {
        let schema = Arc::new(Schema::default_schema().unwrap());
        let persons = Persons::new(schema);
        persons.add((0..3).map(|i| rec(i, 1, 7)).chain((10..13).map(|i| rec(i, 1, 8))).collect());
        persons.add(vec![rec(99, 2, 7)]);
        assert_eq!(persons.person_of(99), persons.person_of(0));
        assert_ne!(persons.person_of(99), persons.person_of(10));
        assert_eq!(persons.records(), 7);
        // The agency corrects the birth date: the tokens now match the other person.
        persons.add(vec![rec(99, 3, 8)]);
        assert_eq!(persons.person_of(99), persons.person_of(10));
        assert_ne!(persons.person_of(99), persons.person_of(0));
        assert_eq!(persons.records(), 7);
        let q = persons.quality_status();
        assert_eq!((q["records"].as_u64(), q["persons"].as_u64()), (Some(7), Some(2)), "{q}");
        let mut gone = rec(99, 4, 8);
        (gone.deleted, gone.tokens, gone.fields) = (true, Default::default(), Default::default());
        persons.add(vec![gone]);
        assert_eq!(persons.person_of(99), None);
        assert_eq!(persons.records(), 6);
        let q = persons.quality_status();
        assert_eq!((q["records"].as_u64(), q["persons"].as_u64()), (Some(6), Some(2)), "{q}");
        let _ = persons.population();
    }
}
