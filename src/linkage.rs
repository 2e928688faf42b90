//! Linkage: records → persons under the schema's rule (agreeing token sets whose weights reach the threshold), incremental, with pairwise quality metrics.
//!
//! Pure: no IO, no clock. The steward runs the same code as `divert link`.
//!
//! How: the rule's minimal qualifying sets of schemes are fixed when the
//! schema is validated. For each set, a record's tokens for all of that
//! set's schemes combine into one key; two records with an equal key agree
//! on every scheme of the set, so they link. Each record costs one hash-map
//! probe per set — linear in records, never pairwise — and a union-find
//! turns links into persons (connected components).

use std::collections::HashMap;

use crate::schema::LinkageRule;
use crate::token::{Token, TOKEN_LEN};

/// Links records into persons as they arrive.
#[derive(Debug, Clone)]
pub struct Linker {
    qualifying: Vec<Vec<usize>>,
    n_schemes: usize,
    /// (qualifying set, epoch, combined key) → first record seen with it.
    index: HashMap<(u16, u32, u128), u32>,
    parent: Vec<u32>,
    size: Vec<u32>,
}

/// Why a record could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the record has {got} token slots; the schema has {want} schemes")]
    SchemeCount { got: usize, want: usize },
    #[error("more than 4294967295 records")]
    TooMany,
}

impl Linker {
    pub fn new(rule: &LinkageRule, n_schemes: usize) -> Linker {
        Linker {
            qualifying: rule.qualifying.clone(),
            n_schemes,
            index: HashMap::new(),
            parent: Vec::new(),
            size: Vec::new(),
        }
    }

    /// Reserve room for `n` more records.
    pub fn reserve(&mut self, n: usize) {
        self.parent.reserve(n);
        self.size.reserve(n);
        self.index.reserve(n * self.qualifying.len());
    }

    /// Number of records added.
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// Add a record with one token slot per scheme (all under `epoch`) and
    /// link it to every earlier record it agrees with. Returns its index.
    pub fn add(&mut self, epoch: u32, tokens: &[Option<Token>]) -> Result<u32, LinkError> {
        if tokens.len() != self.n_schemes {
            return Err(LinkError::SchemeCount { got: tokens.len(), want: self.n_schemes });
        }
        let me = u32::try_from(self.parent.len()).map_err(|_| LinkError::TooMany)?;
        self.parent.push(me);
        self.size.push(1);
        for (set_id, set) in self.qualifying.iter().enumerate() {
            let Some(key) = combine(set, tokens) else { continue };
            let k = (set_id as u16, epoch, key);
            match self.index.get(&k) {
                Some(&other) => {
                    union(&mut self.parent, &mut self.size, me, other);
                }
                None => {
                    self.index.insert(k, me);
                }
            }
        }
        Ok(me)
    }

    /// The representative record of `rec`'s person (changes as persons merge).
    pub fn find(&mut self, rec: u32) -> u32 {
        find(&mut self.parent, rec)
    }

    /// A dense person number for every record, numbered in order of each
    /// person's first record: stable for a given input order.
    pub fn persons(&mut self) -> Vec<u32> {
        let n = self.parent.len();
        let mut number: HashMap<u32, u32> = HashMap::new();
        let mut out = Vec::with_capacity(n);
        for r in 0..n as u32 {
            let root = find(&mut self.parent, r);
            let next = number.len() as u32;
            out.push(*number.entry(root).or_insert(next));
        }
        out
    }
}

/// Combine the tokens of a qualifying set into one 128-bit key. Tokens are
/// pseudorandom (HMAC outputs under per-scheme keys), so XOR of the set's
/// tokens, each rotated by its position in the set, collides only with
/// probability about 2^-128 per pair; `None` if the record lacks one.
fn combine(set: &[usize], tokens: &[Option<Token>]) -> Option<u128> {
    let mut key = 0u128;
    for (pos, &s) in set.iter().enumerate() {
        let t = tokens.get(s).copied().flatten()?;
        let v = u128::from_le_bytes(t);
        key ^= v.rotate_left((pos as u32 * 37) % 128);
    }
    Some(key)
}

const _: () = assert!(TOKEN_LEN == 16, "combine() packs a token into a u128");

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    // Path halving: every visited node points to its grandparent.
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = parent[x as usize];
    }
    x
}

fn union(parent: &mut [u32], size: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra == rb {
        return;
    }
    let (big, small) = if size[ra as usize] >= size[rb as usize] { (ra, rb) } else { (rb, ra) };
    parent[small as usize] = big;
    size[big as usize] += size[small as usize];
}

/// Pairwise linkage quality: a pair of records is "found" when linked into
/// one person, "true" when the truth says one entity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PairMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub pairs_true: u64,
    pub pairs_found: u64,
    pub pairs_correct: u64,
    /// True entities (with at least one record).
    pub entities: u64,
    /// True entities whose records are in more than one found person: each is
    /// protected at k·ε, not ε (the privacy unit is the linked person).
    pub entities_split: u64,
}

/// Compare found persons with true entities, record by record (same order, same length).
pub fn pairwise_metrics(found: &[u32], truth: &[u32]) -> PairMetrics {
    let pairs = |n: u64| n * n.saturating_sub(1) / 2;
    let mut by_found: HashMap<u32, u64> = HashMap::new();
    let mut by_true: HashMap<u32, u64> = HashMap::new();
    let mut by_both: HashMap<(u32, u32), u64> = HashMap::new();
    for (&f, &t) in found.iter().zip(truth) {
        *by_found.entry(f).or_default() += 1;
        *by_true.entry(t).or_default() += 1;
        *by_both.entry((f, t)).or_default() += 1;
    }
    let pairs_found: u64 = by_found.values().map(|&n| pairs(n)).sum();
    let pairs_true: u64 = by_true.values().map(|&n| pairs(n)).sum();
    let pairs_correct: u64 = by_both.values().map(|&n| pairs(n)).sum();
    // With no pairs to find (or none found), the ratio is vacuously perfect.
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let precision = ratio(pairs_correct, pairs_found);
    let recall = ratio(pairs_correct, pairs_true);
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    let mut found_per_entity: HashMap<u32, u64> = HashMap::new();
    for &(_, t) in by_both.keys() {
        *found_per_entity.entry(t).or_default() += 1;
    }
    let entities = by_true.len() as u64;
    let entities_split = found_per_entity.values().filter(|&&k| k > 1).count() as u64;
    PairMetrics { precision, recall, f1, pairs_true, pairs_found, pairs_correct, entities, entities_split }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::minimal_qualifying_sets;

    fn rule(weights: &[u32], threshold: u32) -> LinkageRule {
        LinkageRule { threshold, qualifying: minimal_qualifying_sets(weights, threshold) }
    }

    fn t(x: u8) -> Option<Token> {
        Some([x; TOKEN_LEN])
    }

    #[test]
    fn weights_and_threshold_decide() {
        // Scheme 0 alone links; schemes 1 and 2 only together.
        let r = rule(&[10, 5, 5], 10);
        let mut l = Linker::new(&r, 3);
        let a = l.add(1, &[t(1), t(2), t(3)]).unwrap();
        let b = l.add(1, &[t(1), None, None]).unwrap(); // scheme 0 agrees: links
        let c = l.add(1, &[t(9), t(2), None]).unwrap(); // only scheme 1: does not
        let d = l.add(1, &[t(8), t(2), t(3)]).unwrap(); // 1 and 2: links
        let e = l.add(2, &[t(1), t(2), t(3)]).unwrap(); // another epoch never agrees
        let p = l.persons();
        assert_eq!(p[a as usize], p[b as usize]);
        assert_ne!(p[a as usize], p[c as usize]);
        assert_eq!(p[a as usize], p[d as usize]);
        assert_ne!(p[a as usize], p[e as usize]);
    }

    #[test]
    fn links_are_transitive_and_order_free() {
        let r = rule(&[1, 1], 1);
        let recs = [[t(1), t(2)], [t(3), t(2)], [t(3), t(4)], [t(5), t(6)]];
        let mut fwd = Linker::new(&r, 2);
        recs.iter().for_each(|x| {
            fwd.add(1, x).unwrap();
        });
        let mut rev = Linker::new(&r, 2);
        recs.iter().rev().for_each(|x| {
            rev.add(1, x).unwrap();
        });
        let f = fwd.persons();
        let mut b = rev.persons();
        b.reverse();
        assert_eq!(f, vec![0, 0, 0, 1]);
        assert_eq!(pairwise_metrics(&f, &b).f1, 1.0);
    }

    #[test]
    fn metrics() {
        // Truth: {0,1,2} {3}; found: {0,1} {2,3}.
        let m = pairwise_metrics(&[0, 0, 1, 1], &[7, 7, 7, 8]);
        assert_eq!((m.pairs_true, m.pairs_found, m.pairs_correct), (3, 2, 1));
        assert_eq!(m.precision, 0.5);
        assert!((m.recall - 1.0 / 3.0).abs() < 1e-12);
        // Entity 7 is split over two found persons; entity 8 is whole.
        assert_eq!((m.entities, m.entities_split), (2, 1));
    }
}
