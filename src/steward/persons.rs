//! Persons at the steward: every stored record is linked (incrementally, as batches arrive) with the schema's linkage rule, and a query population is built from the linked records on demand.
//!
//! Person numbers are internal to this module and to `query::Population`;
//! they never leave the steward — not in an answer, a log line or an error.
//! The linkage quality figures (estimated m/u, weights, expected splits and
//! merges; no truth needed) go to the admin status only, never to an evaluator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::keyedhash::Keyed;
use crate::linkage::{Linker, Quality};
use crate::query::{Population, Prepared, Preparer};
use crate::record::PseudoRecord;
use crate::schema::Schema;
use crate::token::{parse_token, Token};
use crate::wire::binary::{BatchView, FieldValue};

/// What linkage needs of a batch's records, made outside the linkage lock:
/// per record its (source, kind, rid), epoch and tombstone flag, its tokens
/// as 16 bytes in the slot of their scheme's position in the schema (parsed
/// once, no text), and the record prepared for the query population
/// (`query::Prepared`: kind, event date and field values, parsed once).
#[derive(Clone, Default, PartialEq)]
pub struct Linkable {
    n_schemes: usize,
    /// The batch's source and kind names, each once; records point into them.
    sources: Vec<String>,
    kinds: Vec<String>,
    records: Vec<LinkRecord>,
    /// `n_schemes` slots per record, in record order.
    tokens: Vec<Option<Token>>,
    /// Tokens of schemes the schema does not know (or, from text, not of the record's epoch).
    unknown: u64,
}

#[derive(Clone, PartialEq)]
struct LinkRecord {
    source: u32,
    kind: u32,
    rid: [u8; 16],
    epoch: u32,
    /// `None` for a tombstone, else what the query population reads of it
    /// (prepared: `None` when no population holds it).
    event: Option<Option<Prepared>>,
}

/// Counts only: a `Linkable` holds tokens and values.
impl std::fmt::Debug for Linkable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linkable").field("records", &self.records.len()).finish_non_exhaustive()
    }
}

/// The position of `name` in `names`, added if new (a batch has a few names).
fn position(names: &mut Vec<String>, name: &str) -> u32 {
    match names.iter().position(|n| n == name) {
        Some(i) => i as u32,
        None => {
            names.push(name.to_string());
            (names.len() - 1) as u32
        }
    }
}

impl Linkable {
    /// Records in it.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records of a binary batch that `link` names (by position), read from the view.
    pub fn from_view(schema: &Schema, view: &BatchView<'_>, link: &[bool]) -> Linkable {
        let n = schema.schemes.len();
        let preparer = Preparer::new(schema);
        let schemes = super::http::scheme_positions(schema, view);
        let count = link.iter().filter(|l| **l).count();
        let mut out = Linkable::with_capacity(n, count);
        for r in view.records.iter().zip(link).filter(|(_, l)| **l).map(|(r, _)| r) {
            let tokens = view.tokens(r).iter().map(|t| schemes.get(t.scheme).copied().flatten().map(|i| (i, t.token)));
            let event = (!r.deleted).then(|| {
                let fields = view.fields(r);
                preparer.prepare_with(r.kind, |name| {
                    fields.iter().find(|(k, _)| *k == name).map_or(FieldValue::Null, |(_, v)| *v)
                })
            });
            out.push(r.source, r.kind, r.rid, r.epoch, tokens, event);
        }
        out
    }

    /// Owned records (tokens as text, parsed here).
    pub fn from_records(schema: &Schema, records: Vec<PseudoRecord>) -> Linkable {
        let n = schema.schemes.len();
        let preparer = Preparer::new(schema);
        let mut out = Linkable::with_capacity(n, records.len());
        for r in records {
            let tokens = r.tokens.iter().map(|(name, text)| match (schema.scheme_index(name), parse_token(text)) {
                (Some(i), Some((epoch, t))) if epoch == r.epoch => Some((i, t)),
                _ => None,
            });
            // The steward admits only 32-hex-digit rids; anything else is still told apart, by its digest.
            let rid = crate::hex::decode_array::<16>(&r.rid).unwrap_or_else(|| {
                let d = ring::digest::digest(&ring::digest::SHA256, r.rid.as_bytes());
                let mut out = [0u8; 16];
                out.copy_from_slice(&d.as_ref()[..16]);
                out
            });
            let event = (!r.deleted).then(|| preparer.prepare(&r.kind, &r.fields));
            out.push(&r.source, &r.kind, rid, r.epoch, tokens, event);
        }
        out
    }

    fn with_capacity(n_schemes: usize, records: usize) -> Linkable {
        let mut out = Linkable { n_schemes, records: Vec::with_capacity(records), ..Linkable::default() };
        out.tokens.reserve(records * n_schemes);
        out
    }

    /// One record: its tokens put in their scheme's slot (`None`, or a slot
    /// past the schema's: counted unknown), none for a tombstone (no `event`).
    fn push(
        &mut self,
        source: &str,
        kind: &str,
        rid: [u8; 16],
        epoch: u32,
        tokens: impl Iterator<Item = Option<(usize, Token)>>,
        event: Option<Option<Prepared>>,
    ) {
        let (n, at) = (self.n_schemes, self.tokens.len());
        self.tokens.resize(at + n, None);
        if event.is_some() {
            for t in tokens {
                match t {
                    Some((i, token)) if i < n => self.tokens[at + i] = Some(token),
                    _ => self.unknown += 1,
                }
            }
        }
        let (source, kind) = (position(&mut self.sources, source), position(&mut self.kinds, kind));
        self.records.push(LinkRecord { source, kind, rid, epoch, event });
    }
}

/// The linked records of every source.
///
/// Adding records (ingest) and building the query population (queries) do
/// not wait for each other: the lock over the linker and the records is held
/// only to add, or to take a snapshot — a copy of the linker's pairs and
/// profiles and the list of record chunks, which are shared, never copied.
/// Linking the snapshot and building the population run outside it; the
/// result is swapped in behind an `Arc` for every query until records arrive.
pub struct Persons {
    schema: Arc<Schema>,
    inner: Mutex<Inner>,
    /// One population build at a time; a query arriving meanwhile waits for it and takes its result.
    building: Mutex<()>,
}

struct Inner {
    linker: Linker,
    /// Every record added, tokens dropped (they are in the linker), in linker
    /// order: one immutable chunk per batch, shared with population builds. A
    /// replaced or deleted record keeps its place (the linker gives it no
    /// person, so no population holds it).
    records: Vec<Arc<[Option<Prepared>]>>,
    /// (source, kind, rid) → the linker index of the version held; source and
    /// kind by their number in `names`, the rid as its 16 bytes: no allocation
    /// per record.
    by_rid: HashMap<RidKey, u32, Keyed>,
    /// Source names met so far, numbered in order of arrival; and kind names.
    sources: HashMap<String, u32>,
    kinds: HashMap<String, u32>,
    /// Records added so far: a population is current while this has not moved.
    generation: u64,
    /// The population of the last build and the generation it was built at.
    cached: Option<(u64, Arc<Population>)>,
    /// The quality figures of the last status, and the generation they were computed at.
    quality: Option<(u64, Quality)>,
    /// Token schemes seen in records that the steward's schema does not know.
    unknown_schemes: u64,
}

/// A held record's (source, kind, rid), compact: see `Inner::by_rid`.
type RidKey = (u32, u32, [u8; 16]);

/// The number of `name` in `names`, given in order of arrival.
fn number(names: &mut HashMap<String, u32>, name: &str) -> u32 {
    if let Some(&n) = names.get(name) {
        return n;
    }
    let n = names.len() as u32;
    names.insert(name.to_string(), n);
    n
}

impl Persons {
    pub fn new(schema: Arc<Schema>) -> Persons {
        let linker = Linker::new(&schema.linkage, schema.schemes.len());
        let inner = Inner {
            linker,
            records: Vec::new(),
            by_rid: HashMap::default(),
            sources: HashMap::new(),
            kinds: HashMap::new(),
            generation: 0,
            cached: None,
            quality: None,
            unknown_schemes: 0,
        };
        Persons { schema, inner: Mutex::new(inner), building: Mutex::new(()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Link `records` to everything held before. A record whose (source,
    /// kind, rid) is held replaces the version held (the store decided it is
    /// newer), which leaves linkage, so a corrected birth date can move the
    /// record to another person; a tombstone only removes. Tokens of schemes
    /// the schema does not know are ignored (and counted for status).
    pub fn add(&self, records: Vec<PseudoRecord>) {
        self.add_linkable(Linkable::from_records(&self.schema, records));
    }

    /// [`Persons::add`] of records made ready for linkage outside the lock.
    pub fn add_linkable(&self, batch: Linkable) {
        let n = self.schema.schemes.len();
        let Linkable { n_schemes, sources, kinds, records, tokens, unknown } = batch;
        // Made under another schema (never, in the steward): no token can be placed.
        let (tokens, unknown) = if n_schemes == n {
            (tokens, unknown)
        } else {
            (vec![None; records.len() * n], unknown + tokens.iter().flatten().count() as u64)
        };
        let mut inner = self.lock();
        let sources: Vec<u32> = sources.iter().map(|s| number(&mut inner.sources, s)).collect();
        let kinds: Vec<u32> = kinds.iter().map(|k| number(&mut inner.kinds, k)).collect();
        inner.unknown_schemes += unknown;
        inner.linker.reserve(records.len());
        let mut linked = Vec::with_capacity(records.len());
        let mut changed = false;
        for (r, slots) in records.into_iter().zip(tokens.chunks(n.max(1))) {
            let source = sources.get(r.source as usize).copied().unwrap_or(u32::MAX);
            let kind = kinds.get(r.kind as usize).copied().unwrap_or(u32::MAX);
            let key: RidKey = (source, kind, r.rid);
            if let Some(old) = inner.by_rid.remove(&key) {
                changed |= inner.linker.remove(old);
            }
            let Some(event) = r.event else { continue };
            let Ok(index) = inner.linker.add(r.epoch, source, &slots[..n]) else {
                // Only possible past 2^32 records; the record is kept out of queries.
                continue;
            };
            inner.by_rid.insert(key, index);
            linked.push(event);
        }
        if !linked.is_empty() {
            inner.records.push(linked.into());
            changed = true;
        }
        if changed {
            inner.generation += 1;
        }
    }

    /// The population to query. It holds at least every record added before
    /// this call: the last one built if it does, else one built now from a
    /// snapshot (outside the lock that adding records takes). Queries that
    /// arrive while a build runs wait for it and take its result when it holds
    /// everything they must see, so a burst of queries during streaming costs
    /// one or two builds, not one each.
    pub fn population(&self) -> Arc<Population> {
        let needed = self.lock().generation;
        if let Some(p) = self.built_since(needed) {
            return p;
        }
        let _one = self.building.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Built by another query while this one waited?
        if let Some(p) = self.built_since(needed) {
            return p;
        }
        let (generation, linker, chunks) = {
            let inner = self.lock();
            (inner.generation, inner.linker.snapshot(), inner.records.clone())
        };
        // Persons only: the quality figures are the admin status's to compute, when asked.
        let persons = linker.persons();
        drop(linker);
        // Replaced and deleted records have no person (u32::MAX): no population holds them.
        let records = chunks.iter().flat_map(|c| c.iter());
        let held = persons.into_iter().zip(records).filter(|(p, _)| *p != u32::MAX);
        let held = held.filter_map(|(p, e)| Some((p, e.as_ref()?)));
        let pop = Arc::new(Population::build_prepared(&self.schema, held));
        let mut inner = self.lock();
        // Keep the newest: a slower build of an older generation never replaces a newer one.
        if inner.cached.as_ref().map_or(true, |(g, _)| *g <= generation) {
            inner.cached = Some((generation, pop.clone()));
        }
        pop
    }

    /// The last population built, if it holds every record of generation `needed`.
    fn built_since(&self, needed: u64) -> Option<Arc<Population>> {
        let inner = self.lock();
        match &inner.cached {
            Some((g, p)) if *g >= needed => Some(p.clone()),
            _ => None,
        }
    }

    /// The linkage quality for the admin status, as JSON (scheme names, no
    /// record, token or person): that of the last status if no record
    /// arrived since, else linked anew (from a snapshot, outside the lock).
    /// Population builds do not compute it: only the status needs it.
    pub fn quality_status(&self) -> serde_json::Value {
        let have = {
            let inner = self.lock();
            match &inner.quality {
                Some((g, q)) if *g == inner.generation => Ok(q.clone()),
                _ => Err((inner.generation, inner.linker.snapshot())),
            }
        };
        let q = match have {
            Ok(q) => q,
            Err((generation, linker)) => {
                let q = linker.link().quality;
                let mut inner = self.lock();
                if inner.quality.as_ref().map_or(true, |(g, _)| *g <= generation) {
                    inner.quality = Some((generation, q.clone()));
                }
                q
            }
        };
        let mut v = serde_json::to_value(&q).unwrap_or_default();
        if let Some(list) = v.get_mut("schemes").and_then(|s| s.as_array_mut()) {
            for (entry, scheme) in list.iter_mut().zip(&self.schema.schemes) {
                entry["name"] = scheme.name.clone().into();
            }
        }
        if let Some(list) = v.get_mut("fields_shown_to_differ").and_then(|s| s.as_array_mut()) {
            for entry in list.iter_mut() {
                let name = entry["field"].as_u64().and_then(|f| self.schema.identity.get(f as usize));
                if let Some(field) = name {
                    entry["name"] = field.name.clone().into();
                }
            }
        }
        v
    }

    /// Records held and linked (for the local status only): replaced and deleted ones not counted.
    pub fn records(&self) -> usize {
        self.lock().linker.live()
    }

    /// Tokens ignored because their scheme is not in the steward's schema.
    pub fn unknown_scheme_tokens(&self) -> u64 {
        self.lock().unknown_schemes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A referral of `person` (persons are told apart by their tokens).
    fn referral(person: u32, line: u64) -> PseudoRecord {
        let token = |scheme: u32| format!("1:{:032x}", (u128::from(person) << 8) | u128::from(scheme));
        PseudoRecord {
            source: "police".into(),
            kind: "referral".into(),
            line,
            epoch: 1,
            rid: format!("{line:032x}"),
            seq: line,
            deleted: false,
            tokens: [("names_dob".to_string(), token(1)), ("state_id".to_string(), token(2))].into(),
            fields: [
                ("age".to_string(), serde_json::json!(30)),
                ("referral_date".to_string(), serde_json::json!("2024-05-01")),
                ("referral_type".to_string(), serde_json::json!("arrest")),
                ("arm".to_string(), serde_json::json!("diversion")),
            ]
            .into(),
        }
    }

    fn persons() -> Persons {
        Persons::new(Arc::new(Schema::default_schema().expect("the shipped schema")))
    }

    #[test]
    fn a_population_is_reused_until_records_arrive() {
        let p = persons();
        p.add((0..10).map(|i| referral(i % 4, u64::from(i))).collect());
        let a = p.population();
        assert_eq!((a.len(), a.event_count()), (4, 10));
        assert!(Arc::ptr_eq(&a, &p.population()), "nothing arrived: the same population");
        p.add(vec![referral(9, 10)]);
        let b = p.population();
        assert_eq!((b.len(), b.event_count()), (5, 11));
        assert_eq!((a.len(), a.event_count()), (4, 10), "a population taken earlier does not change");
        assert_eq!(p.records(), 11);
        assert!(p.quality_status()["records"] == 11, "{}", p.quality_status());
    }

    #[test]
    fn adding_does_not_wait_for_a_population_build() {
        let p = Arc::new(persons());
        p.add(vec![referral(1, 1)]);
        // A build in progress holds `building` for as long as it links; adding must not need it.
        let held = p.building.lock().expect("the build lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = p.clone();
        std::thread::spawn(move || {
            p2.add(vec![referral(2, 2)]);
            let _ = tx.send(p2.records());
        });
        let added = rx.recv_timeout(std::time::Duration::from_secs(60));
        drop(held);
        assert_eq!(added, Ok(2), "records were added while a population was being built");
        assert_eq!(p.population().event_count(), 2);
    }

    #[test]
    fn concurrent_adds_and_queries_converge() {
        let p = Arc::new(persons());
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                for b in 0..50u32 {
                    p.add((0..20).map(|i| referral((b * 20 + i) % 300, u64::from(b * 20 + i))).collect());
                }
            })
        };
        let mut last = 0;
        while !writer.is_finished() {
            let n = p.population().event_count();
            assert!(n >= last, "a later population never holds fewer events");
            last = n;
        }
        writer.join().expect("the writer");
        let pop = p.population();
        assert_eq!((pop.len(), pop.event_count()), (300, 1000));
    }

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

    #[test]
    fn the_population_of_prepared_records_is_the_population_of_the_records() {
        use serde_json::json;
        // Three persons, several kinds and field types, a record of an unknown
        // kind and one without a usable event date (both held by no population).
        let mut records = Vec::new();
        let fields = [
            (
                0,
                "referral",
                json!({"referral_date": "2018-01-03", "arm": "diversion", "referral_type": "arrest", "sex": "f", "age": 34, "screening": "eligible"}),
            ),
            (0, "arrest", json!({"arrest_date": "2018-03-01", "warrant": true, "violent": false, "felony": true})),
            (
                1,
                "referral",
                json!({"referral_date": "2018-02-01", "arm": "comparison", "referral_type": "social_contact", "sex": "m", "age": 22}),
            ),
            (1, "booking", json!({"booking_date": "2018-02-01", "release_date": "2018-02-11"})),
            (0, "booking", json!({"booking_date": "2018-04-01", "release_date": null})),
            (2, "arrest", json!({"arrest_date": "2019-01-01", "warrant": false, "violent": true, "felony": false})),
            (2, "nonesuch", json!({"date": "2019-01-01"})),
            (1, "arrest", json!({"arrest_date": "not a date", "warrant": false, "violent": false, "felony": false})),
            (
                0,
                "intake",
                json!({"intake_date": "2018-01-13", "housing": "street", "employment": "unemployed", "income_benefits": false}),
            ),
        ];
        for (i, (person, kind, f)) in fields.into_iter().enumerate() {
            let mut r = rec(i as u32, 1, person);
            r.kind = kind.to_string();
            r.fields = serde_json::from_value(f).unwrap();
            records.push((person, r));
        }
        let schema = Schema::default_schema().unwrap();
        let expected = format!("{:?}", Population::build(&schema, records.iter().map(|(p, r)| (*p, r))));
        // The owned path (JSON batches) and the binary path (a batch's view).
        let owned = persons();
        owned.add(records.iter().map(|(_, r)| r.clone()).collect());
        assert_eq!(format!("{:?}", owned.population()), expected);
        let body = crate::wire::binary::encode("police", "b1", records.iter().map(|(_, r)| r)).unwrap();
        let view = crate::wire::binary::decode_view(&body).unwrap();
        let binary = persons();
        binary.add_linkable(Linkable::from_view(&schema, &view, &vec![true; records.len()]));
        assert_eq!(format!("{:?}", binary.population()), expected);
        // Persons 0 and 1 (person 2 has no referral): two referrals, three and one other events.
        assert_eq!(binary.population().event_count(), 6);
    }

    impl Persons {
        /// The person of a held record, linked now.
        fn person_of(&self, rid: u32) -> Option<u32> {
            let mut inner = self.inner.lock().ok()?;
            let r = rec(rid, 1, 0);
            let key = (
                number(&mut inner.sources, &r.source),
                number(&mut inner.kinds, &r.kind),
                crate::hex::decode_array(&r.rid)?,
            );
            let at = *inner.by_rid.get(&key)?;
            inner.linker.persons().get(at as usize).copied()
        }
    }

    #[test]
    fn one_version_per_source_kind_and_rid_and_no_source_replaces_another() {
        let persons = Persons::new(Arc::new(Schema::default_schema().unwrap()));
        let of = |source: &str, kind: &str, seq: u64| {
            let mut r = rec(5, seq, 1);
            (r.source, r.kind) = (source.into(), kind.into());
            r
        };
        persons.add(vec![of("police", "arrest", 1), of("jail", "arrest", 1), of("police", "referral", 1)]);
        assert_eq!(persons.records(), 3, "the same rid under another source or kind is another record");
        persons.add(vec![of("police", "arrest", 2)]);
        assert_eq!(persons.records(), 3, "a new version replaces the one held");
        let mut gone = of("jail", "arrest", 2);
        gone.deleted = true;
        persons.add(vec![gone]);
        assert_eq!(persons.records(), 2, "a tombstone removes its own source's record only");
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
