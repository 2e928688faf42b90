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
    /// Every record held, tokens dropped (they are in the linker), in linker order.
    records: Vec<PseudoRecord>,
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
            inner: Mutex::new(Inner { linker, records: Vec::new(), cached: None, quality: None, unknown_schemes: 0 }),
        }
    }

    /// Link `records` to everything held before. Tokens of schemes the
    /// schema does not know are ignored (and counted for status).
    pub fn add(&self, records: Vec<PseudoRecord>) {
        let n = self.schema.schemes.len();
        let mut slots: Vec<Option<Token>> = vec![None; n];
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        inner.linker.reserve(records.len());
        for mut r in records {
            slots.iter_mut().for_each(|s| *s = None);
            for (name, text) in &r.tokens {
                match (self.scheme_index.get(name), parse_token(text)) {
                    (Some(&i), Some((epoch, t))) if epoch == r.epoch => slots[i] = Some(t),
                    _ => inner.unknown_schemes += 1,
                }
            }
            if inner.linker.add(r.epoch, &slots).is_err() {
                // Only possible past 2^32 records; the record is kept out of queries.
                continue;
            }
            r.tokens.clear();
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
        let pop =
            Arc::new(Population::build(&self.schema, linkage.persons.into_iter().zip(inner.records.iter().cloned())));
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
        let records = inner.linker.len() as u64;
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

    /// Records held and linked (for the local status only).
    pub fn records(&self) -> usize {
        self.inner.lock().map(|g| g.records.len()).unwrap_or(0)
    }

    /// Tokens ignored because their scheme is not in the steward's schema.
    pub fn unknown_scheme_tokens(&self) -> u64 {
        self.inner.lock().map(|g| g.unknown_schemes).unwrap_or(0)
    }
}
