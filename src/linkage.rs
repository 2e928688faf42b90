//! Linkage: records → persons by Fellegi–Sunter match weights over exact keyed tokens, estimated from the data (EM), incremental, with a no-chaining clustering rule and pairwise quality metrics.
//!
//! Pure: no IO, no clock. The steward runs the same code as `divert link`.
//!
//! How:
//! - **Profiles.** Records with exactly the same tokens (the same person
//!   recorded the same way, 30 times) are one *profile*; everything below
//!   works on profiles, so a person's many identical records cost one hash
//!   probe each.
//! - **Blocking.** Every token is a blocking key: a new profile is compared
//!   with the earlier profiles sharing at least one token (a hash probe per
//!   token, never all pairs). A token already shared by [`MAX_BLOCK`]
//!   profiles stops being a blocking key for later ones (a token that common
//!   carries no evidence; counted in [`Quality::blocks_capped`]). Which
//!   profiles a full block still admitted depends on arrival order: the one
//!   exception to order-independence below.
//! - **Agreement patterns.** A candidate pair's pattern is which schemes
//!   both profiles have (compared) and which of those agree. The blocks
//!   that list a candidate say where it agrees (one map per scheme and
//!   epoch, keyed by the token alone); tokens are compared only on schemes
//!   whose block was full, since it no longer lists every profile sharing it.
//! - **Comparison groups and levels.** Schemes sharing an identity field
//!   (transitively) are one comparison group: one recording error breaks
//!   every scheme holding the field, so their disagreements are one piece of
//!   evidence, not several. A pair's level in a group is its first agreeing
//!   scheme in schema order, or "none agrees"; groups the two records do
//!   not both have are left out (Splink's comparisons and levels).
//! - **Weights.** Each level has m = P(level | same person) and
//!   u = P(level | different persons); a pair's weight is Σ log2(m/u) over
//!   its groups, in bits. m and u are estimated by expectation–maximization
//!   over the record pairs' patterns (a two-class mixture, groups
//!   independent given the class), with the blocking assumption that pairs
//!   sharing no token are different persons at level "none": they enter u's
//!   denominator, so u is a rate over all pairs, as Splink estimates it
//!   from random pairs, not the inflated rate among look-alikes. With fewer
//!   than [`MIN_PAIRS_TO_ESTIMATE`] candidate record pairs, and for a level
//!   seen in no pair, the prior: m = 0.9 spread over a group's schemes and
//!   0.1 for "none", u = 2^-(the scheme's estimated bits).
//! - **Clusters.** Pairs at or above the threshold are links, taken from the
//!   heaviest down, one weight level at a time; within a level every
//!   decision reads the clusters as they were before the level, so the
//!   result does not depend on arrival order. A link below `bridge` joins
//!   two clusters only when one of them is a single profile: one weak link
//!   never chains two established persons together. A profile whose own
//!   tokens (all agreeing) weigh less than the threshold is no evidence that
//!   its records are one person: each of its records stays a person of its
//!   own unless a link joins the profile to a cluster. Records with no token
//!   at all are always persons of their own.
//!
//! Incremental: `add` only appends profiles, postings and pairs; `link`
//! re-estimates m/u and re-clusters from everything held, so records added
//! batch by batch give exactly the persons of all records added at once.

use std::collections::HashMap;

use crate::keyedhash::Keyed;

use crate::schema::{LinkageRule, Part, Transform, MAX_SCHEMES};
use crate::token::{Token, TOKEN_LEN};

/// Profiles that may share a blocking token before it stops being one.
pub const MAX_BLOCK: u32 = 500;
/// Candidate pairs needed before m and u are estimated rather than taken from the prior.
pub const MIN_PAIRS_TO_ESTIMATE: u64 = 200;
/// Pairs (expected, per class) comparing a scheme needed to estimate its m or u.
const MIN_COMPARED: f64 = 20.0;
const EM_MAX_ITERATIONS: u32 = 500;
const EM_TOLERANCE: f64 = 1e-9;
/// Least m of a level: a level never seen among matches is strong evidence
/// against, not an infinite veto. (u's floor is half a pair among all pairs.)
const M_FLOOR: f64 = 1e-6;
/// Width of the weight histogram's buckets, in bits.
pub const HISTOGRAM_BITS: f64 = 5.0;

const NONE: u32 = u32::MAX;

/// A set of schemes (bit k: scheme k).
type Mask = u32;
const _: () = assert!(MAX_SCHEMES <= Mask::BITS as usize, "a scheme mask holds every scheme of a schema");

/// Links records into persons as they arrive.
#[derive(Debug, Clone)]
pub struct Linker {
    rule: LinkageRule,
    n_schemes: usize,
    /// Comparison groups: schemes connected by a shared identity field, each
    /// group's schemes in schema order (see [`group_schemes`]).
    groups: Vec<Vec<usize>>,
    group_masks: Vec<Mask>,
    /// Per group: the identity fields of its schemes, up to and including
    /// each one (bit i: field i): the fields a pair's level already speaks of.
    group_fields_through: Vec<Vec<u64>>,
    /// The identity fields a disagreeing scheme can be blamed on (those of
    /// groups of two or more schemes), in field order.
    differ_fields: Vec<usize>,
    /// Per group that is not per-source: records that carry at least one of its schemes.
    records_with_group: Vec<u64>,
    /// Schemes keyed by the source (an agency's own person number): two
    /// records of different sources are not compared on them.
    per_source_mask: Mask,
    /// Per group: whether all its schemes are per-source; then its records
    /// are counted per (group, scope) here, as only same-source pairs compare.
    group_scoped: Vec<bool>,
    scoped_records: HashMap<(u32, u32), u64, Keyed>,
    /// Per profile: the scope (source) of its records, for per-source schemes.
    profile_scope: Vec<u32>,
    /// (epoch, presence mask, tokens combined) → profile.
    profile_index: HashMap<(u32, Mask, u128), u32, Keyed>,
    /// Per record: its profile.
    record_profile: Vec<u32>,
    /// Per profile, `n_schemes` tokens (0 where absent), the presence mask and the records.
    tokens: Vec<u128>,
    present: Vec<Mask>,
    profile_records: Vec<u64>,
    /// Blocking index: per epoch met (in `epochs`' order), one map per
    /// scheme, token → (first posting, profiles in the block). Keyed by the
    /// token alone (24 bytes an entry, not 48 with scheme and epoch in it).
    epochs: Vec<u32>,
    blocks: Vec<HashMap<u128, (u32, u32), Keyed>>,
    /// Postings: (a profile, the next posting of the same block), one load per step.
    postings: Vec<(u32, u32)>,
    /// Candidate pairs: (earlier profile, later profile, pattern id).
    pairs: Vec<(u32, u32, u32)>,
    /// Per pattern id: (agreeing mask, compared mask) and its pair count.
    patterns: Vec<(Mask, Mask)>,
    pattern_ids: HashMap<(Mask, Mask), u32, Keyed>,
    pattern_counts: Vec<u64>,
    blocks_capped: u64,
    /// Scratch for [`Linker::add`]: (candidate profile, scheme it was found by).
    candidates: Vec<(u32, u8)>,
    /// A [`Linker::snapshot`]: it links but takes no more records.
    frozen: bool,
    /// Records taken out by [`Linker::remove`] (their `record_profile` is `NONE`).
    removed: usize,
}

/// Why a record could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the record has {got} token slots; the schema has {want} schemes")]
    SchemeCount { got: usize, want: usize },
    #[error("more than 4294967295 records")]
    TooMany,
    #[error("a linkage snapshot takes no records")]
    Frozen,
}

/// The estimated m and u of one scheme's level: its group's first agreeing scheme is this one.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SchemeEstimate {
    /// The comparison group the scheme belongs to.
    pub group: usize,
    /// P(level | same person), P(level | different persons).
    pub m: f64,
    pub u: f64,
    /// log2(m/u): bits a pair gains at this level.
    pub agree_bits: f64,
    /// The schema's prior, not an estimate (too few pairs, or the level never seen).
    pub from_prior: bool,
}

/// A comparison group: its schemes (schema order) and its "none agrees" level.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupEstimate {
    pub schemes: Vec<usize>,
    pub m_none: f64,
    pub u_none: f64,
    /// log2(m_none/u_none): bits (negative) when both have the group and no scheme of it agrees.
    pub none_bits: f64,
}

impl Estimate {
    /// log2 of the prior odds of a match among all record pairs with a token.
    pub fn prior_bits(&self) -> f64 {
        (self.match_share / (1.0 - self.match_share)).log2()
    }
}

/// Evidence that an identity field differs: estimated from the pairs whose
/// tokens show it to differ or to agree (see [`Linker::estimate`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FieldEstimate {
    /// The identity field (its number in the schema).
    pub field: usize,
    /// P(shown to differ | shown either way), among the same person's pairs.
    pub m: f64,
    /// The same among different persons' candidate pairs (1 while too few to tell).
    pub u: f64,
    /// min(0, log2(m/u)): bits a pair gains when its tokens show the field to differ.
    pub differ_bits: f64,
    /// Whether it counts (false: too few pairs show the field either way).
    pub counted: bool,
}

#[derive(Debug, Clone, Copy)]
struct LevelEstimate {
    m: f64,
    u: f64,
    bits: f64,
    from_prior: bool,
}

/// m/u per level and the share of matches among candidate record pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub schemes: Vec<SchemeEstimate>,
    pub groups: Vec<GroupEstimate>,
    /// Per field a disagreeing scheme can be blamed on: the evidence of its differing.
    pub fields: Vec<FieldEstimate>,
    /// Share of the record pairs with a token that are the same person
    /// (estimated among candidates; the pairs sharing no token are not).
    pub match_share: f64,
    /// Whether the figures come from the data (false: the schema's prior).
    pub estimated: bool,
    pub iterations: u32,
}

/// One bucket of the weight histogram: candidate pairs with weight in [from_bits, from_bits + 5).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WeightBucket {
    pub from_bits: f64,
    pub pairs: u64,
}

/// How linkage went, without any truth: for an operator to see it degrade.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quality {
    pub records: u64,
    pub profiles: u64,
    pub persons: u64,
    pub candidate_pairs: u64,
    /// Whether m/u were estimated from the data (false: the schema's prior).
    pub estimated: bool,
    pub em_iterations: u32,
    /// Estimated share of record pairs (with a token) that are the same person.
    pub match_share_of_pairs: f64,
    /// log2 of its odds: where a pair's match weight starts (under the older
    /// `threshold` rule weights leave it out; the estimates above include it).
    pub prior_bits: f64,
    /// Per scheme, in schema order.
    pub schemes: Vec<SchemeEstimate>,
    pub groups: Vec<GroupEstimate>,
    /// Per field a disagreeing scheme can be blamed on: the evidence of its differing.
    pub fields_shown_to_differ: Vec<FieldEstimate>,
    pub threshold_bits: f64,
    pub bridge_bits: f64,
    /// Whether weights, threshold and bridge include the prior (`match_weight`) or leave it out (`threshold`).
    pub weights_include_prior: bool,
    /// Candidate pairs by weight.
    pub weight_histogram: Vec<WeightBucket>,
    /// Pairs at or above the threshold.
    pub links: u64,
    /// Links below `bridge` not followed because both sides were already several profiles.
    pub links_not_bridged: u64,
    /// Expected share of persons that hold records of two or more humans
    /// (Σ over links taken of P(different persons | weight), per person).
    pub estimated_merged_share: f64,
    /// Expected share of persons that are part of a human split in several
    /// (Σ over pairs of persons left apart of the best pair's P(same | weight), per person).
    /// It sees only pairs that share a token: a record with no token, or
    /// whose tokens share nothing with its person's other records, is
    /// invisible to it (on `divert synth --persons 5000`: 0.0116 estimated,
    /// 0.0526 measured against the truth, of which 0.0240 are records with no token).
    pub estimated_split_share: f64,
    /// Records with no token at all (no usable identity value a scheme
    /// needs): each is a person of its own, whether or not its human has
    /// other records.
    pub records_without_token: u64,
    /// [`Quality::estimated_split_share`] counting each record with no
    /// token as split off a person with other records: the most those
    /// records can add.
    pub estimated_split_share_with_tokenless: f64,
    /// Blocks that reached [`MAX_BLOCK`] profiles.
    pub blocks_capped: u64,
}

/// Persons and the quality figures of one linkage.
#[derive(Debug, Clone)]
pub struct Linkage {
    /// A dense person number per record, numbered in order of each person's first record.
    pub persons: Vec<u32>,
    pub quality: Quality,
}

impl Linker {
    pub fn new(rule: &LinkageRule, n_schemes: usize) -> Linker {
        let fields: Vec<u64> =
            (0..n_schemes.min(MAX_SCHEMES)).map(|k| rule.fields.get(k).copied().unwrap_or(1 << (k % 64))).collect();
        let groups = group_schemes(&fields);
        let group_masks: Vec<Mask> = groups.iter().map(|g| g.iter().fold(0, |m, &k| m | 1 << k)).collect();
        let per_source_mask = (0..n_schemes.min(MAX_SCHEMES))
            .filter(|&k| rule.per_source.get(k).copied().unwrap_or(false))
            .fold(0, |m: Mask, k| m | 1 << k);
        let group_scoped = group_masks.iter().map(|&m| m & !per_source_mask == 0).collect();
        let group_fields_through: Vec<Vec<u64>> = groups
            .iter()
            .map(|g| {
                g.iter()
                    .scan(0u64, |acc, &k| {
                        *acc |= fields[k];
                        Some(*acc)
                    })
                    .collect()
            })
            .collect();
        let mut differ = 0u64;
        for g in groups.iter().filter(|g| g.len() > 1) {
            for &k in g {
                for p in rule.parts.get(k).map_or(&[][..], Vec::as_slice) {
                    differ |= field_bit(p.field);
                }
            }
        }
        let differ_fields = (0..64).filter(|&f| differ & field_bit(f) != 0).collect();
        Linker {
            rule: rule.clone(),
            group_fields_through,
            differ_fields,
            n_schemes,
            per_source_mask,
            group_scoped,
            scoped_records: HashMap::default(),
            profile_scope: Vec::new(),
            records_with_group: vec![0; groups.len()],
            groups,
            group_masks,
            profile_index: HashMap::default(),
            record_profile: Vec::new(),
            tokens: Vec::new(),
            present: Vec::new(),
            profile_records: Vec::new(),
            epochs: Vec::new(),
            blocks: Vec::new(),
            postings: Vec::new(),
            pairs: Vec::new(),
            patterns: Vec::new(),
            pattern_ids: HashMap::default(),
            pattern_counts: Vec::new(),
            blocks_capped: 0,
            candidates: Vec::new(),
            removed: 0,
            frozen: false,
        }
    }

    /// What [`link`](Linker::link) and [`estimate`](Linker::estimate) need,
    /// copied (profiles, candidate pairs and their patterns; not the blocking
    /// index, the token table or the profile lookup), so a caller can link
    /// without holding up whoever adds records. The copy takes no records.
    pub fn snapshot(&self) -> Linker {
        Linker {
            rule: self.rule.clone(),
            n_schemes: self.n_schemes,
            groups: self.groups.clone(),
            group_masks: self.group_masks.clone(),
            group_fields_through: self.group_fields_through.clone(),
            differ_fields: self.differ_fields.clone(),
            records_with_group: self.records_with_group.clone(),
            per_source_mask: self.per_source_mask,
            group_scoped: self.group_scoped.clone(),
            scoped_records: self.scoped_records.clone(),
            profile_scope: self.profile_scope.clone(),
            profile_index: HashMap::default(),
            record_profile: self.record_profile.clone(),
            tokens: Vec::new(),
            present: self.present.clone(),
            profile_records: self.profile_records.clone(),
            epochs: Vec::new(),
            blocks: Vec::new(),
            postings: Vec::new(),
            pairs: self.pairs.clone(),
            patterns: self.patterns.clone(),
            pattern_ids: HashMap::default(),
            pattern_counts: self.pattern_counts.clone(),
            blocks_capped: self.blocks_capped,
            candidates: Vec::new(),
            removed: self.removed,
            frozen: true,
        }
    }

    /// Reserve room for `n` more records.
    pub fn reserve(&mut self, n: usize) {
        self.record_profile.reserve(n);
        self.profile_index.reserve(n / 4);
    }

    /// Number of records added.
    pub fn len(&self) -> usize {
        self.record_profile.len()
    }

    pub fn is_empty(&self) -> bool {
        self.record_profile.is_empty()
    }

    /// Add a record with one token slot per scheme (all under `epoch`) and
    /// compare it with every earlier record it shares a token with. Returns
    /// its index. `scope` names the record's source (any number, the same for
    /// one source): per-source schemes compare only records of one scope.
    pub fn add(&mut self, epoch: u32, scope: u32, tokens: &[Option<Token>]) -> Result<u32, LinkError> {
        if self.frozen {
            return Err(LinkError::Frozen);
        }
        if tokens.len() != self.n_schemes || self.n_schemes > MAX_SCHEMES {
            return Err(LinkError::SchemeCount { got: tokens.len(), want: self.n_schemes });
        }
        let me = u32::try_from(self.record_profile.len()).map_err(|_| LinkError::TooMany)?;
        let mut present: Mask = 0;
        let mut key = 0u128;
        for (s, t) in tokens.iter().enumerate() {
            if let Some(t) = t {
                present |= 1 << s;
                key ^= u128::from_le_bytes(*t).rotate_left((s as u32 * 37) % 128);
            }
        }
        for (g, &mask) in self.group_masks.iter().enumerate() {
            if present & mask == 0 {
                continue;
            }
            if self.group_scoped[g] {
                *self.scoped_records.entry((g as u32, scope)).or_insert(0) += 1;
            } else {
                self.records_with_group[g] += 1;
            }
        }
        // Records of two sources are one profile only where no per-source scheme is present.
        if present & self.per_source_mask != 0 {
            key ^= u128::from(scope).rotate_left(101) | 1 << 127;
        }
        if let Some(&p) = self.profile_index.get(&(epoch, present, key)) {
            self.record_profile.push(p);
            self.profile_records[p as usize] += 1;
            return Ok(me);
        }
        let p = u32::try_from(self.present.len()).map_err(|_| LinkError::TooMany)?;
        self.profile_index.insert((epoch, present, key), p);
        self.record_profile.push(p);
        self.present.push(present);
        self.profile_scope.push(scope);
        self.profile_records.push(1);
        self.tokens.extend(tokens.iter().map(|t| t.map_or(0, u128::from_le_bytes)));

        let n = self.n_schemes;
        let slot = match self.epochs.iter().position(|&e| e == epoch) {
            Some(i) => i,
            None => {
                self.epochs.push(epoch);
                self.blocks.resize_with(self.epochs.len() * n, HashMap::default);
                self.epochs.len() - 1
            }
        };
        // A record's blocks lie anywhere in tables of millions of entries,
        // each lookup a wait on memory. Look them all up (and their first
        // postings) before any work, with nothing between the loads to wait
        // on, so the processor waits for those misses together rather than
        // one after another; the work below then finds them in cache.
        let mut touched = 0u32;
        for (s, t) in tokens.iter().enumerate() {
            let Some(t) = t else { continue };
            if let Some(&(head, _)) = self.blocks[slot * n + s].get(&u128::from_le_bytes(*t)) {
                touched ^= self.postings.get(head as usize).map_or(head, |&(q, _)| q);
            }
        }
        std::hint::black_box(touched);
        // Each candidate with the scheme whose block listed it: a listed
        // profile agrees with this one on that scheme (same scheme, epoch and
        // token). A block at its cap lists only its first members, so on
        // those schemes agreement is read from the tokens instead.
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        let mut capped: Mask = 0;
        for (s, t) in tokens.iter().enumerate() {
            let Some(t) = t else { continue };
            let block = self.blocks[slot * n + s].entry(u128::from_le_bytes(*t)).or_insert((NONE, 0));
            let mut at = block.0;
            while at != NONE {
                let (q, next) = self.postings[at as usize];
                candidates.push((q, s as u8));
                at = next;
            }
            if block.1 < MAX_BLOCK {
                let posting = self.postings.len() as u32;
                self.postings.push((p, block.0));
                *block = (posting, block.1 + 1);
                if block.1 == MAX_BLOCK {
                    self.blocks_capped += 1;
                }
            } else {
                capped |= 1 << s;
            }
        }
        candidates.sort_unstable();
        for listings in candidates.chunk_by(|a, b| a.0 == b.0) {
            let q = listings[0].0;
            let listed: Mask = listings.iter().fold(0, |m, &(_, s)| m | 1 << s);
            let mut compared = self.present[q as usize] & present;
            if self.profile_scope[q as usize] != scope {
                compared &= !self.per_source_mask;
            }
            let mut agree = listed & compared;
            let mut unlisted = capped & compared & !agree;
            while unlisted != 0 {
                let s = unlisted.trailing_zeros() as usize;
                unlisted &= unlisted - 1;
                if self.tokens[q as usize * n + s] == self.tokens[p as usize * n + s] {
                    agree |= 1 << s;
                }
            }
            let next = self.patterns.len() as u32;
            let id = *self.pattern_ids.entry((agree, compared)).or_insert(next);
            if id == next {
                self.patterns.push((agree, compared));
                self.pattern_counts.push(0);
            }
            self.pattern_counts[id as usize] += 1;
            self.pairs.push((q, p, id));
        }
        self.candidates = candidates;
        Ok(me)
    }

    /// Take record `r` out of linkage (a record replaced by a newer version,
    /// or deleted at its source). Its index stays, so later indices do not
    /// move; [`Linker::link`] gives it no person (`u32::MAX`). A profile whose
    /// records are all removed is no evidence for any pair. Returns false if
    /// `r` was never added or is already removed.
    pub fn remove(&mut self, r: u32) -> bool {
        let Some(&p) = self.record_profile.get(r as usize) else { return false };
        if p == NONE {
            return false;
        }
        self.record_profile[r as usize] = NONE;
        self.profile_records[p as usize] = self.profile_records[p as usize].saturating_sub(1);
        let present = self.present[p as usize];
        for (g, &mask) in self.group_masks.iter().enumerate() {
            if present & mask == 0 {
                continue;
            }
            let n = if self.group_scoped[g] {
                self.scoped_records.get_mut(&(g as u32, self.profile_scope[p as usize]))
            } else {
                self.records_with_group.get_mut(g)
            };
            if let Some(n) = n {
                *n = n.saturating_sub(1);
            }
        }
        self.removed += 1;
        true
    }

    /// Records added and not removed.
    pub fn live(&self) -> usize {
        self.record_profile.len() - self.removed
    }

    /// Live records with no token at all (the profiles with nothing present).
    fn records_without_token(&self) -> u64 {
        self.present.iter().zip(&self.profile_records).filter(|(&present, _)| present == 0).map(|(_, &n)| n).sum()
    }

    fn profile_live(&self, p: u32) -> bool {
        self.profile_records[p as usize] > 0
    }

    /// Record pairs per agreement pattern, in a fixed order: every candidate
    /// pair of profiles counts (records of one) × (records of the other), and
    /// the records of one profile pair up agreeing on everything they have.
    fn record_pair_patterns(&self) -> Vec<(Mask, Mask, f64)> {
        // Summed per pattern number first (a pattern is one (agree, compared)): no hashing per pair.
        let mut by_id = vec![0.0f64; self.patterns.len()];
        for &(a, b, id) in &self.pairs {
            let n = self.profile_records[a as usize] * self.profile_records[b as usize];
            by_id[id as usize] += n as f64;
        }
        let mut counts: HashMap<(Mask, Mask), f64> = HashMap::with_capacity(self.patterns.len());
        for (&pattern, &n) in self.patterns.iter().zip(&by_id) {
            *counts.entry(pattern).or_default() += n;
        }
        for (&present, &n) in self.present.iter().zip(&self.profile_records) {
            if n > 1 && present != 0 {
                *counts.entry((present, present)).or_default() += pairs_of(n) as f64;
            }
        }
        let mut pats: Vec<(Mask, Mask, f64)> = counts.into_iter().map(|((a, c), n)| (a, c, n)).collect();
        pats.sort_unstable_by_key(|p| (p.0, p.1));
        pats
    }

    /// The level of group `g` in a pattern: the first agreeing scheme of the
    /// group (its position in the group), the group's length for "none
    /// agrees", or `None` when the two records do not both have the group.
    fn level(&self, g: usize, agree: Mask, compared: Mask) -> Option<usize> {
        if compared & self.group_masks[g] == 0 {
            return None;
        }
        let group = &self.groups[g];
        Some(group.iter().position(|&k| agree & (1 << k) != 0).unwrap_or(group.len()))
    }

    /// The identity fields a pattern shows to differ, and to agree, beyond
    /// what its groups' levels say (bit i: field i). A scheme compared but
    /// not agreeing, whose parts are all implied by the agreeing schemes of
    /// its group but those of one field, shows that field to differ (a pair
    /// at `names_dob` whose `dob_address` disagrees differs in the address);
    /// a field whose whole value the agreeing schemes imply agrees. The
    /// fields of a group's level scheme and of the schemes before it are
    /// left out: the level (the first agreeing scheme) already counts them.
    fn shown(&self, agree: Mask, compared: Mask) -> (u64, u64) {
        let (mut differ, mut same) = (0u64, 0u64);
        for (g, group) in self.groups.iter().enumerate() {
            let Some(l) = self.level(g, agree, compared) else { continue };
            if group.len() < 2 || l >= group.len() {
                continue;
            }
            let said = self.group_fields_through[g][l];
            // Known to agree: each part outside an unordered group, and each
            // unordered group as a set (swapped names agree as a set only).
            let mut known: Vec<Part> = Vec::new();
            let mut known_sets: Vec<Vec<Part>> = Vec::new();
            for &k in group.iter().filter(|&&k| agree & (1 << k) != 0) {
                let (parts, sets) = (self.parts(k), self.unordered(k));
                let in_set = |i: usize| sets.iter().any(|set| set.contains(&i));
                known.extend(parts.iter().enumerate().filter(|&(i, _)| !in_set(i)).map(|(_, p)| *p));
                known_sets.extend(sets.iter().map(|set| sorted_parts(parts, set)));
            }
            for &k in group.iter().filter(|&&k| compared & (1 << k) != 0 && agree & (1 << k) == 0) {
                let (parts, sets) = (self.parts(k), self.unordered(k));
                let mut satisfied = vec![false; parts.len()];
                for set in sets {
                    let values = sorted_parts(parts, set);
                    if known_sets.contains(&values) || values.iter().all(|p| implied(&known, *p)) {
                        for &i in set {
                            if let Some(s) = satisfied.get_mut(i) {
                                *s = true;
                            }
                        }
                    }
                }
                let mut unknown = parts
                    .iter()
                    .zip(&satisfied)
                    .filter(|&(p, &done)| !done && !implied(&known, *p))
                    .map(|(p, _)| p.field);
                let Some(f) = unknown.next() else { continue };
                if unknown.all(|x| x == f) && said & field_bit(f) == 0 {
                    differ |= field_bit(f);
                }
            }
            for &f in &self.differ_fields {
                let bit = field_bit(f);
                if said & bit == 0 && implied(&known, Part { field: f, transform: Transform::Full }) {
                    same |= bit;
                }
            }
        }
        (differ, same & !differ)
    }

    /// A scheme's unordered groups (positions in its parts).
    fn unordered(&self, k: usize) -> &[Vec<usize>] {
        self.rule.unordered.get(k).map_or(&[], Vec::as_slice)
    }

    /// A scheme's parts (none known: nothing is inferred from it).
    fn parts(&self, k: usize) -> &[Part] {
        self.rule.parts.get(k).map_or(&[], Vec::as_slice)
    }

    /// m/u per level of every comparison group: estimated by EM over the
    /// agreement patterns of the candidate record pairs, or the schema's
    /// prior while there are too few.
    pub fn estimate(&self) -> Estimate {
        let prior = |k: usize| self.rule.prior.get(k).copied().unwrap_or((0.9, 1e-6));
        // Prior: m spread over the group's schemes, 0.1 for none; u = 2^-bits.
        let mut m: Vec<Vec<f64>> = Vec::with_capacity(self.groups.len());
        let mut u: Vec<Vec<f64>> = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let mut mg: Vec<f64> = g.iter().map(|_| 0.9 / g.len() as f64).collect();
            mg.push(0.1);
            let mut ug: Vec<f64> = g.iter().map(|&k| prior(k).1).collect();
            ug.push((1.0 - ug.iter().sum::<f64>()).max(0.5));
            m.push(mg);
            u.push(ug);
        }
        let prior_m = m.clone();
        let prior_u = u.clone();
        let pats = self.record_pair_patterns();
        let total: f64 = pats.iter().map(|p| p.2).sum();
        // Field evidence: (m, u) of "shown to differ", counted once estimable.
        let mut fields: Vec<FieldEstimate> = self
            .differ_fields
            .iter()
            .map(|&field| FieldEstimate { field, m: 1.0, u: 1.0, differ_bits: 0.0, counted: false })
            .collect();
        if total < MIN_PAIRS_TO_ESTIMATE as f64 {
            let mut est = self.finish(&m, &u, &prior_m, &prior_u, None, 0.5, false, 0);
            est.fields = fields;
            return est;
        }
        let levels: Vec<Vec<Option<usize>>> =
            pats.iter().map(|&(a, c, _)| (0..self.groups.len()).map(|g| self.level(g, a, c)).collect()).collect();
        // Record pairs that have group g but share no token at all: different persons, level "none".
        let unblocked: Vec<f64> = (0..self.groups.len())
            .map(|g| {
                // A per-source group compares only records of one source.
                let all = if self.group_scoped[g] {
                    // Summed as integers: the same total in any map order (deterministic).
                    let n: u64 = self
                        .scoped_records
                        .iter()
                        .filter(|((h, _), _)| *h as usize == g)
                        .map(|(_, &r)| pairs_of(r))
                        .sum();
                    n as f64
                } else {
                    pairs_of(self.records_with_group[g]) as f64
                };
                let blocked: f64 = pats.iter().zip(&levels).filter(|(_, l)| l[g].is_some()).map(|(p, _)| p.2).sum();
                (all - blocked).max(0.0)
            })
            .collect();
        let shown: Vec<(u64, u64)> = pats.iter().map(|&(a, c, _)| self.shown(a, c)).collect();
        // All record pairs with a token: the pairs sharing none are different persons.
        let with_token = self.live() as u64 - self.records_without_token();
        let all_pairs = (pairs_of(with_token) as f64).max(total);
        let mut lambda: f64 = 0.5;
        let mut iterations = 0;
        let mut post = vec![0.0; pats.len()];
        // Expected record pairs per level among matches and non-matches (for the report and the floors).
        let mut seen: Vec<Vec<(f64, f64)>> = m.iter().map(|g| vec![(0.0, 0.0); g.len()]).collect();
        while iterations < EM_MAX_ITERATIONS {
            iterations += 1;
            // E: P(same person | pattern).
            for (pi, lv) in post.iter_mut().zip(&levels) {
                let (mut lm, mut lu) = (lambda.ln(), (1.0 - lambda).ln());
                for (g, l) in lv.iter().enumerate() {
                    if let Some(l) = *l {
                        lm += m[g][l].ln();
                        lu += u[g][l].ln();
                    }
                }
                *pi = 1.0 / (1.0 + (lu - lm).exp());
            }
            for (pi, &(differ, _)) in post.iter_mut().zip(&shown) {
                let bits = differ_bits(&fields, differ);
                if bits != 0.0 {
                    *pi = 1.0 / (1.0 + (1.0 / *pi - 1.0) * (-bits).exp2());
                }
            }
            // M: λ, then m and u per level from the expected classes.
            let matched: f64 = post.iter().zip(&pats).map(|(g, p)| g * p.2).sum();
            let new_lambda = (matched / total).clamp(1e-9, 1.0 - 1e-9);
            let mut change = (new_lambda - lambda).abs();
            lambda = new_lambda;
            for g in 0..self.groups.len() {
                let none = self.groups[g].len();
                let mut cnt = vec![(0.0, 0.0); none + 1];
                for ((pi, lv), p) in post.iter().zip(&levels).zip(&pats) {
                    if let Some(l) = lv[g] {
                        cnt[l].0 += pi * p.2;
                        cnt[l].1 += (1.0 - pi) * p.2;
                    }
                }
                cnt[none].1 += unblocked[g];
                let (msum, usum): (f64, f64) = cnt.iter().fold((0.0, 0.0), |a, c| (a.0 + c.0, a.1 + c.1));
                if msum >= MIN_COMPARED && usum >= MIN_COMPARED {
                    for (l, &(cm, cu)) in cnt.iter().enumerate() {
                        let vm = (cm / msum).max(M_FLOOR);
                        let vu = (cu / usum).max(0.5 / usum);
                        change = change.max((vm - m[g][l]).abs()).max((vu.ln() - u[g][l].ln()).abs() * 1e-3);
                        m[g][l] = vm;
                        u[g][l] = vu;
                    }
                }
                seen[g] = cnt;
            }
            // A field shown to differ: among pairs that show it either way.
            for f in fields.iter_mut() {
                let bit = field_bit(f.field);
                let (mut m_shown, mut m_differ, mut u_shown, mut u_differ) = (0.0, 0.0, 0.0, 0.0);
                for ((pi, &(differ, same)), p) in post.iter().zip(&shown).zip(&pats) {
                    if (differ | same) & bit != 0 {
                        m_shown += pi * p.2;
                        u_shown += (1.0 - pi) * p.2;
                        if differ & bit != 0 {
                            m_differ += pi * p.2;
                            u_differ += (1.0 - pi) * p.2;
                        }
                    }
                }
                let (vm, vu) = if m_shown >= MIN_COMPARED {
                    let vu = if u_shown >= MIN_COMPARED { (u_differ / u_shown).max(0.5 / u_shown) } else { 1.0 };
                    ((m_differ / m_shown).max(0.5 / m_shown), vu)
                } else {
                    (1.0, 1.0)
                };
                change = change.max((vm - f.m).abs()).max((vu - f.u).abs());
                *f = FieldEstimate {
                    field: f.field,
                    m: vm,
                    u: vu,
                    differ_bits: (vm / vu).log2().min(0.0),
                    counted: vm < vu,
                };
            }
            if change < EM_TOLERANCE {
                break;
            }
        }
        // The share of matches among all pairs with a token, not just among candidates.
        let share = (lambda * total / all_pairs).clamp(0.5 / all_pairs, 1.0 - 1e-9);
        let mut est = self.finish(&m, &u, &prior_m, &prior_u, Some(&seen), share, true, iterations);
        est.fields = fields;
        est
    }

    /// Weights per level; a level seen in no pair (expected count under half
    /// a pair in both classes) keeps its prior weight.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        m: &[Vec<f64>],
        u: &[Vec<f64>],
        prior_m: &[Vec<f64>],
        prior_u: &[Vec<f64>],
        seen: Option<&[Vec<(f64, f64)>]>,
        match_share: f64,
        estimated: bool,
        iterations: u32,
    ) -> Estimate {
        let mut levels: Vec<Vec<LevelEstimate>> = Vec::with_capacity(self.groups.len());
        for g in 0..self.groups.len() {
            let mut out = Vec::with_capacity(m[g].len());
            for l in 0..m[g].len() {
                let unseen = seen.map_or(true, |s| s[g][l].0 < 0.5 && s[g][l].1 < 0.5);
                let (mm, uu) = if unseen { (prior_m[g][l], prior_u[g][l]) } else { (m[g][l], u[g][l]) };
                out.push(LevelEstimate { m: mm, u: uu, bits: (mm / uu).log2(), from_prior: unseen || !estimated });
            }
            levels.push(out);
        }
        let mut schemes =
            vec![SchemeEstimate { group: 0, m: 0.0, u: 0.0, agree_bits: 0.0, from_prior: true }; self.n_schemes];
        let mut groups = Vec::with_capacity(self.groups.len());
        for (g, members) in self.groups.iter().enumerate() {
            for (l, &k) in members.iter().enumerate() {
                let e = levels[g][l];
                schemes[k] = SchemeEstimate { group: g, m: e.m, u: e.u, agree_bits: e.bits, from_prior: e.from_prior };
            }
            let none = levels[g][members.len()];
            groups.push(GroupEstimate {
                schemes: members.clone(),
                m_none: none.m,
                u_none: none.u,
                none_bits: none.bits,
            });
        }
        Estimate { schemes, groups, fields: Vec::new(), match_share, estimated, iterations }
    }

    /// A dense person number for every record, numbered in order of each
    /// person's first record: stable for a given input. The persons of
    /// [`Linker::link`], without its quality figures (what a query
    /// population needs, at less cost).
    pub fn persons(&self) -> Vec<u32> {
        self.cluster().persons
    }

    /// Estimate m/u, weigh every candidate pair, cluster, and say how it went.
    pub fn link(&self) -> Linkage {
        let c = self.cluster();
        let quality = self.quality(&c);
        Linkage { persons: c.persons, quality }
    }

    /// Estimate m/u, weigh every candidate pair and cluster.
    fn cluster(&self) -> Clustered {
        let est = self.estimate();
        // A match weight starts from the prior odds of a match among all
        // record pairs (Splink's); the older rule weighs evidence alone.
        let odds_bits = est.prior_bits();
        let prior_bits = if self.rule.with_prior { odds_bits } else { 0.0 };
        let weight_of = |agree: Mask, compared: Mask| -> f64 {
            let levels: f64 = (0..self.groups.len())
                .filter_map(|g| {
                    let l = self.level(g, agree, compared)?;
                    Some(match self.groups[g].get(l) {
                        Some(&k) => est.schemes[k].agree_bits,
                        None => est.groups[g].none_bits,
                    })
                })
                .sum();
            // Nothing differs where every compared scheme agrees (a profile with itself).
            let (differ, _) = if agree == compared { (0, 0) } else { self.shown(agree, compared) };
            prior_bits + levels + differ_bits(&est.fields, differ)
        };
        let weights: Vec<f64> = self.patterns.iter().map(|&(a, c)| weight_of(a, c)).collect();
        let (threshold, bridge) = (self.rule.threshold, self.rule.bridge);
        let to_odds = odds_bits - prior_bits;
        let posterior = |w: f64| 1.0 / (1.0 + (-(w + to_odds)).exp2());

        // Pairs bucketed by pattern, patterns from the heaviest down.
        let np = self.present.len();
        let mut start = vec![0usize; self.patterns.len() + 1];
        for &(_, _, id) in &self.pairs {
            start[id as usize + 1] += 1;
        }
        for i in 0..self.patterns.len() {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut by_pattern = vec![(0u32, 0u32); self.pairs.len()];
        for &(a, b, id) in &self.pairs {
            by_pattern[fill[id as usize]] = (a, b);
            fill[id as usize] += 1;
        }
        let mut order: Vec<usize> = (0..self.patterns.len()).filter(|&i| weights[i] >= threshold).collect();
        order.sort_by(|&x, &y| weights[y].total_cmp(&weights[x]).then(self.patterns[x].cmp(&self.patterns[y])));

        let mut parent: Vec<u32> = (0..np as u32).collect();
        let mut profiles: Vec<u32> = vec![1; np];
        let (mut links, mut not_bridged, mut merged_expect) = (0u64, 0u64, 0.0f64);
        let mut accepted: Vec<(u32, u32)> = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let w = weights[order[i]];
            let mut j = i;
            accepted.clear();
            while j < order.len() && weights[order[j]] == w {
                let id = order[j];
                for &(a, b) in &by_pattern[start[id]..start[id + 1]] {
                    if !self.profile_live(a) || !self.profile_live(b) {
                        continue;
                    }
                    links += 1;
                    let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                    if ra == rb {
                        continue;
                    }
                    if w >= bridge || profiles[ra as usize] == 1 || profiles[rb as usize] == 1 {
                        accepted.push((a, b));
                    } else {
                        not_bridged += 1;
                    }
                }
                j += 1;
            }
            for &(a, b) in &accepted {
                if union(&mut parent, &mut profiles, a, b) {
                    merged_expect += 1.0 - posterior(w);
                }
            }
            i = j;
        }

        // A profile that is no evidence on its own keeps its records apart unless linked.
        // Records with no token at all are never evidence of one person, whatever the prior.
        let self_weak: Vec<bool> =
            (0..np).map(|p| self.present[p] == 0 || weight_of(self.present[p], self.present[p]) < threshold).collect();
        // Persons numbered in order of their first record: a cluster's number
        // by its root profile, a weak lone profile's records one each.
        let mut root_number = vec![NONE; np];
        let mut next = 0u32;
        let mut persons = Vec::with_capacity(self.record_profile.len());
        for &p in &self.record_profile {
            if p == NONE {
                persons.push(u32::MAX);
                continue;
            }
            let root = find(&mut parent, p);
            let slot = if self_weak[p as usize] && profiles[root as usize] == 1 {
                None
            } else {
                Some(&mut root_number[root as usize])
            };
            let number = match slot {
                Some(n) if *n != NONE => *n,
                slot => {
                    if let Some(n) = slot {
                        *n = next;
                    }
                    next += 1;
                    next - 1
                }
            };
            persons.push(number);
        }
        Clustered {
            est,
            weights,
            to_odds,
            parent,
            persons,
            n_persons: u64::from(next),
            links,
            not_bridged,
            merged_expect,
        }
    }

    /// The quality figures of a clustering (see [`Quality`]).
    fn quality(&self, c: &Clustered) -> Quality {
        let Clustered { est, weights, persons: _, n_persons, links, not_bridged, merged_expect, .. } = c;
        let (n_persons, links, not_bridged, merged_expect) = (*n_persons, *links, *not_bridged, *merged_expect);
        let mut parent = c.parent.clone();
        let to_odds = c.to_odds;
        let posterior = |w: f64| 1.0 / (1.0 + (-(w + to_odds)).exp2());

        // Pairs of clusters left apart that the model thinks are one person.
        let mut apart: HashMap<(u32, u32), f64> = HashMap::new();
        for &(a, b, id) in &self.pairs {
            if !self.profile_live(a) || !self.profile_live(b) {
                continue;
            }
            let pr = posterior(weights[id as usize]);
            if pr < 0.5 {
                continue;
            }
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                let e = apart.entry((ra.min(rb), ra.max(rb))).or_insert(0.0);
                *e = e.max(pr);
            }
        }
        let mut split: Vec<f64> = apart.into_values().collect();
        split.sort_by(f64::total_cmp);
        let split_expect: f64 = split.iter().sum();

        let mut hist: Vec<(i64, u64)> = Vec::new();
        for (w, &c) in weights.iter().zip(&self.pattern_counts) {
            let bucket = (w / HISTOGRAM_BITS).floor() as i64;
            match hist.iter_mut().find(|(b, _)| *b == bucket) {
                Some(h) => h.1 += c,
                None => hist.push((bucket, c)),
            }
        }
        hist.sort_unstable();
        let share = |x: f64| if n_persons == 0 { 0.0 } else { (x / n_persons as f64).clamp(0.0, 1.0) + 0.0 };
        let records_without_token = self.records_without_token();
        Quality {
            records: self.live() as u64,
            profiles: self.present.len() as u64,
            persons: n_persons,
            candidate_pairs: self.pairs.len() as u64,
            estimated: est.estimated,
            em_iterations: est.iterations,
            match_share_of_pairs: est.match_share,
            prior_bits: est.prior_bits(),
            schemes: est.schemes.clone(),
            groups: est.groups.clone(),
            fields_shown_to_differ: est.fields.clone(),
            threshold_bits: self.rule.threshold,
            bridge_bits: self.rule.bridge,
            weights_include_prior: self.rule.with_prior,
            weight_histogram: hist
                .into_iter()
                .map(|(b, pairs)| WeightBucket { from_bits: b as f64 * HISTOGRAM_BITS, pairs })
                .collect(),
            links,
            links_not_bridged: not_bridged,
            estimated_merged_share: share(merged_expect),
            estimated_split_share: share(split_expect),
            records_without_token,
            estimated_split_share_with_tokenless: share(split_expect + records_without_token as f64),
            blocks_capped: self.blocks_capped,
        }
    }
}

/// What clustering leaves for the quality figures.
struct Clustered {
    est: Estimate,
    /// The weight of each agreement pattern, in bits.
    weights: Vec<f64>,
    /// Bits to add to a weight for the log2 posterior odds (the prior, when the rule leaves it out).
    to_odds: f64,
    /// The union-find forest over profiles after clustering.
    parent: Vec<u32>,
    persons: Vec<u32>,
    n_persons: u64,
    links: u64,
    not_bridged: u64,
    merged_expect: f64,
}

/// A field's bit in a set of identity fields (as [`LinkageRule::fields`] has them).
fn field_bit(field: usize) -> u64 {
    1 << (field % 64)
}

/// The bits (none, or negative) of the fields in `differ` that count.
fn differ_bits(fields: &[FieldEstimate], differ: u64) -> f64 {
    fields.iter().filter(|f| differ & field_bit(f.field) != 0).map(|f| f.differ_bits).sum()
}

/// The parts of an unordered group, sorted: two schemes' groups of the same parts compare equal.
fn sorted_parts(parts: &[Part], positions: &[usize]) -> Vec<Part> {
    let mut v: Vec<Part> = positions.iter().filter_map(|&i| parts.get(i).copied()).collect();
    v.sort_unstable();
    v
}

/// Whether parts `known` to agree imply that `p` agrees too: a whole value
/// implies its transforms, a date's year, month and day imply the date, a
/// longer prefix or suffix a shorter one.
fn implied(known: &[Part], p: Part) -> bool {
    let has = |t: Transform| known.iter().any(|k| k.field == p.field && k.transform == t);
    let any = |f: &dyn Fn(Transform) -> bool| known.iter().any(|k| k.field == p.field && f(k.transform));
    if has(p.transform) || has(Transform::Full) {
        return true;
    }
    let year_month = has(Transform::YearMonth) || (has(Transform::Year) && has(Transform::Month));
    match p.transform {
        Transform::Full => year_month && has(Transform::Day),
        Transform::Initial => any(&|t| matches!(t, Transform::Prefix(_))),
        Transform::Prefix(n) => any(&|t| matches!(t, Transform::Prefix(m) if m >= n)),
        Transform::Suffix(n) => any(&|t| matches!(t, Transform::Suffix(m) if m >= n)),
        Transform::Year | Transform::Month => has(Transform::YearMonth),
        Transform::YearMonth => year_month,
        Transform::Soundex | Transform::Day => false,
    }
}

/// Comparison groups: schemes joined when they share an identity field
/// (transitively), each group's members in schema order. One recording
/// error breaks every scheme holding the field, so a group counts as one
/// comparison whose level is its first agreeing scheme, and groups are taken
/// as independent (Splink's comparisons and comparison levels).
pub fn group_schemes(fields: &[u64]) -> Vec<Vec<usize>> {
    let n = fields.len();
    let mut group: Vec<usize> = (0..n).collect();
    // Few schemes: join until nothing changes.
    let mut changed = true;
    while changed {
        changed = false;
        for a in 0..n {
            for b in 0..n {
                if fields[a] & fields[b] != 0 && group[b] > group[a] {
                    group[b] = group[a];
                    changed = true;
                }
            }
        }
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut ids: Vec<usize> = Vec::new();
    for (k, &g) in group.iter().enumerate() {
        match ids.iter().position(|&x| x == g) {
            Some(i) => out[i].push(k),
            None => {
                ids.push(g);
                out.push(vec![k]);
            }
        }
    }
    out
}

const _: () = assert!(TOKEN_LEN == 16, "a token is kept as a u128");

/// The root of `x` in the union-find forest `parent` (each node its parent,
/// a root itself), halving the path on the way.
pub fn find(parent: &mut [u32], mut x: u32) -> u32 {
    // Path halving: every visited node points to its grandparent.
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = parent[x as usize];
    }
    x
}

/// Join the clusters of `a` and `b`; false if they were one already. The
/// smaller index becomes the root, so the result does not depend on the
/// order unions are made in.
fn union(parent: &mut [u32], profiles: &mut [u32], a: u32, b: u32) -> bool {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra == rb {
        return false;
    }
    let (root, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
    parent[child as usize] = root;
    profiles[root as usize] += profiles[child as usize];
    true
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
    let by_found = group_sizes(found.iter().copied());
    let by_true = group_sizes(truth.iter().copied());
    let by_both = group_sizes(found.iter().copied().zip(truth.iter().copied()));
    let (pairs_found, pairs_true, pairs_correct) = (pairs_in(&by_found), pairs_in(&by_true), pairs_in(&by_both));
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

/// Pairwise figures over the pairs of records from two different sources only.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CrossSource {
    pub pairs_true: u64,
    pub pairs_found: u64,
    pub precision: f64,
    pub recall: f64,
}

/// [`pairwise_metrics`] over the pairs whose two records come from two
/// sources: `sources` gives each record's source.
pub fn cross_source_metrics(found: &[u32], truth: &[u32], sources: &[u16]) -> CrossSource {
    // The pairs of a group minus those within one source of it.
    fn across<K: std::hash::Hash + Eq + Copy>(keys: impl Iterator<Item = K> + Clone, sources: &[u16]) -> u64 {
        pairs_in(&group_sizes(keys.clone())) - pairs_in(&group_sizes(keys.zip(sources.iter().copied())))
    }
    let (f, t) = (found.iter().copied(), truth.iter().copied());
    let pairs_true = across(t.clone(), sources);
    let pairs_found = across(f.clone(), sources);
    let correct = across(f.zip(t), sources);
    CrossSource { pairs_true, pairs_found, precision: ratio(correct, pairs_found), recall: ratio(correct, pairs_true) }
}

/// How many records fall in each group.
fn group_sizes<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = K>) -> HashMap<K, u64> {
    let mut sizes: HashMap<K, u64> = HashMap::new();
    for k in keys {
        *sizes.entry(k).or_default() += 1;
    }
    sizes
}

/// Record pairs within groups of these sizes.
fn pairs_in<K>(sizes: &HashMap<K, u64>) -> u64 {
    sizes.values().map(|&n| pairs_of(n)).sum()
}

/// With no pairs to find (or none found), the ratio is vacuously perfect.
/// Pairs among `n` records.
pub fn pairs_of(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A rule over schemes of these estimated bits, each on its own identity field
    /// (so each is a group of its own) unless `fields` says otherwise.
    fn rule(bits: &[f64], threshold: f64, bridge: f64) -> LinkageRule {
        let fields: Vec<u64> = (0..bits.len()).map(|i| 1 << i).collect();
        LinkageRule::new(threshold, bridge, bits, &fields)
    }

    fn t(x: u8) -> Option<Token> {
        Some([x; TOKEN_LEN])
    }

    fn same(p: &[u32], a: u32, b: u32) -> bool {
        p[a as usize] == p[b as usize]
    }

    #[test]
    fn a_strong_scheme_links_alone_a_weak_one_does_not() {
        // Prior weights: scheme 0 agreeing ≈ +29.7 bits, scheme 1 ≈ +11.8, a group with nothing agreeing ≈ −3.3.
        let r = rule(&[30.0, 12.0], 15.0, 15.0);
        let mut l = Linker::new(&r, 2);
        let a = l.add(1, 0, &[t(1), t(2)]).unwrap();
        let b = l.add(1, 0, &[t(1), None]).unwrap(); // the strong token agrees: links
        let c = l.add(1, 0, &[t(9), t(2)]).unwrap(); // only the weak one, the strong differs: does not
        let d = l.add(1, 0, &[None, t(2)]).unwrap(); // only the weak one: does not
        let e = l.add(1, 0, &[None, t(2)]).unwrap(); // the same weak-only profile is no evidence either
        let f = l.add(2, 0, &[t(1), t(2)]).unwrap(); // another epoch never agrees
        let link = l.link();
        let p = &link.persons;
        assert!(same(p, a, b));
        assert!(!same(p, a, c) && !same(p, a, d) && !same(p, d, e) && !same(p, a, f));
        assert!(!link.quality.estimated, "four pairs: the prior is used");
        assert_eq!(link.quality.persons, 5);
    }

    /// Records with no token are persons of their own; the quality figures
    /// count them, and say how much they could add to the split share.
    #[test]
    fn records_with_no_token_are_counted_as_possible_splits() {
        let r = rule(&[30.0, 12.0], 15.0, 15.0);
        let mut l = Linker::new(&r, 2);
        let a = l.add(1, 0, &[t(1), t(2)]).unwrap();
        let b = l.add(1, 0, &[t(1), t(2)]).unwrap();
        let c = l.add(1, 0, &[None, None]).unwrap();
        let d = l.add(1, 0, &[None, None]).unwrap();
        let e = l.add(1, 0, &[None, t(5)]).unwrap(); // a token, even a weak one: not counted
        let q = l.link();
        assert!(same(&q.persons, a, b) && !same(&q.persons, c, d) && !same(&q.persons, a, c));
        assert_eq!((q.quality.persons, q.quality.records_without_token), (4, 2));
        let extra = q.quality.estimated_split_share_with_tokenless - q.quality.estimated_split_share;
        assert!((extra - 2.0 / 4.0).abs() < 1e-12, "{extra}");
        assert!(!same(&q.persons, e, c));
        l.remove(d);
        assert_eq!(l.link().quality.records_without_token, 1, "a removed record no longer counts");
    }

    /// Under the shipped rule (match weight 0, prior included) with too few
    /// pairs to estimate, the prior is 0 bits: records with no token must
    /// still stay apart, not become one person through their empty profile.
    #[test]
    fn records_with_no_token_stay_apart_under_the_shipped_rule() {
        let schema = crate::schema::Schema::default_schema().unwrap();
        let n = schema.schemes.len();
        let mut l = Linker::new(&schema.linkage, n);
        let none = vec![None; n];
        let (c, d) = (l.add(1, 0, &none).unwrap(), l.add(1, 0, &none).unwrap());
        let q = l.link();
        assert!(!same(&q.persons, c, d), "two records with no token are two persons");
        assert_eq!((q.quality.persons, q.quality.records_without_token), (2, 2));
    }

    #[test]
    fn a_per_source_scheme_compares_only_records_of_one_source() {
        // Scheme 0: a state id; scheme 1: an agency's own person number (per source).
        let mut r = LinkageRule::new(15.0, 15.0, &[30.0, 30.0], &[0b01, 0b10]);
        r.per_source = vec![false, true];
        let mut l = Linker::new(&r, 2);
        let a = l.add(1, 0, &[t(1), t(5)]).unwrap();
        // Another source's number with the same token (never so with real tokens, which
        // hash the source): not compared, so no evidence and no link.
        let b = l.add(1, 1, &[None, t(5)]).unwrap();
        // The same source's number agrees: links, with no state id to say otherwise.
        let c = l.add(1, 0, &[None, t(5)]).unwrap();
        // The state id agrees; the numbers differ but are of two sources: not evidence against.
        let d = l.add(1, 1, &[t(2), t(6)]).unwrap();
        let e = l.add(1, 0, &[t(2), t(7)]).unwrap();
        let p = l.link().persons;
        assert!(same(&p, a, c) && same(&p, d, e), "{p:?}");
        assert!(!same(&p, a, b) && !same(&p, b, c), "{p:?}");
        // Only same-source pairs are compared on the number: d–e compares the state id alone.
        let pats = l.record_pair_patterns();
        assert!(pats.iter().any(|&(agree, compared, _)| agree == 0b01 && compared == 0b01), "{pats:?}");
        assert!(pats.iter().all(|&(agree, compared, _)| !(compared & 0b10 != 0 && agree & 0b10 == 0)), "{pats:?}");
    }

    #[test]
    fn a_pair_found_by_one_scheme_agrees_on_a_capped_block_it_is_not_listed_in() {
        // Scheme 1's token is shared by more profiles than a block lists, so
        // later profiles are not listed in its block. Two later profiles that
        // share scheme 0's token are found through scheme 0 alone; whether
        // they agree on scheme 1 is read from their tokens.
        let r = rule(&[30.0, 12.0, 12.0], 15.0, 15.0);
        let crowd = |l: &mut Linker| {
            for i in 0..MAX_BLOCK + 10 {
                let mut own = [0u8; TOKEN_LEN];
                own[..4].copy_from_slice(&i.to_le_bytes());
                own[15] = 1;
                l.add(1, 0, &[Some(own), t(2), None]).unwrap();
            }
        };
        let mut l = Linker::new(&r, 3);
        crowd(&mut l);
        assert_eq!(l.blocks_capped, 1);
        let before = l.pairs.len();
        l.add(1, 0, &[t(7), t(2), t(5)]).unwrap();
        l.add(1, 0, &[t(7), t(2), t(6)]).unwrap(); // agrees on 0 and the capped 1, differs on 2
        l.add(1, 0, &[t(8), t(3), t(5)]).unwrap();
        l.add(1, 0, &[t(8), t(4), t(5)]).unwrap(); // agrees on 0 and 2, differs on 1 (not capped)
        let found: Vec<(Mask, Mask)> = l.pairs[before..].iter().map(|&(_, _, id)| l.patterns[id as usize]).collect();
        assert!(found.contains(&(0b011, 0b111)), "{found:?}");
        assert!(found.contains(&(0b101, 0b111)), "{found:?}");
        // No two of them agree on all three.
        assert!(found.iter().all(|&(agree, _)| agree != 0b111), "{found:?}");
    }

    #[test]
    fn a_snapshot_links_as_the_linker_does_and_takes_no_records() {
        let r = rule(&[30.0, 12.0], 15.0, 15.0);
        let mut l = Linker::new(&r, 2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..3_000 {
            let a = rng.gen_range(0..400u16);
            l.add(1, 0, &[Some([(a % 251) as u8; TOKEN_LEN]), t((a % 13) as u8)]).unwrap();
        }
        let snap = l.snapshot();
        let (live, frozen) = (l.link(), snap.link());
        assert_eq!(live.persons, frozen.persons);
        assert_eq!(live.quality, frozen.quality);
        let mut snap = snap;
        assert_eq!(snap.add(1, 0, &[t(1), t(2)]), Err(LinkError::Frozen));
        // The linker goes on; the snapshot stays as it was.
        l.add(1, 0, &[t(1), t(2)]).unwrap();
        assert_eq!(l.len(), snap.len() + 1);
    }

    #[test]
    fn weights_add_up_and_a_disagreement_counts_against() {
        // Two medium schemes (≈ +19.8 each), a strong-ish third in its own group.
        let r = rule(&[20.0, 20.0, 26.0], 30.0, 30.0);
        let mut l = Linker::new(&r, 3);
        let a = l.add(1, 0, &[t(1), t(2), None]).unwrap();
        let b = l.add(1, 0, &[t(1), None, None]).unwrap(); // one medium scheme: 19.8 < 30
        let c = l.add(1, 0, &[t(1), t(2), None]).unwrap(); // both: 39.6 (same profile as a)
        let d = l.add(1, 0, &[t(1), t(2), t(7)]).unwrap(); // both, third absent on a: 39.6
        let e = l.add(1, 0, &[t(5), t(2), t(8)]).unwrap(); // one medium and the third disagreeing with d: no
        let p = l.persons();
        assert!(!same(&p, a, b));
        assert!(same(&p, a, c) && same(&p, a, d));
        assert!(!same(&p, a, e));
        // Lower the threshold: a single medium scheme now links.
        let mut low = l.clone();
        low.rule.threshold = 15.0;
        low.rule.bridge = 15.0;
        let p = low.persons();
        assert!(same(&p, a, b) && same(&p, a, e));
    }

    #[test]
    fn schemes_sharing_a_field_are_one_comparison() {
        // Schemes 0 and 1 share field 0: a pair agreeing on 1 only is at level 1, with
        // no penalty for 0 disagreeing (one error breaks both).
        let r = LinkageRule::new(15.0, 15.0, &[30.0, 25.0, 20.0], &[0b01, 0b01, 0b10]);
        let l = Linker::new(&r, 3);
        assert_eq!(l.groups, vec![vec![0, 1], vec![2]]);
        let mut l = l;
        let a = l.add(1, 0, &[t(1), t(2), None]).unwrap();
        let b = l.add(1, 0, &[t(9), t(2), None]).unwrap();
        assert!(same(&l.persons(), a, b), "level 1 alone weighs ≈ 24.8 bits");
    }

    #[test]
    fn one_weak_link_does_not_chain_two_persons() {
        // Scheme 0 strong (+39.8), scheme 1 medium (+19.8), own groups; a link on scheme 1
        // alone with scheme 0 disagreeing weighs 19.8 − 3.3 = 16.5: above the threshold, below the bridge.
        let r = rule(&[40.0, 20.0], 15.0, 30.0);
        let mut l = Linker::new(&r, 2);
        let a1 = l.add(1, 0, &[t(1), t(11)]).unwrap();
        let a2 = l.add(1, 0, &[t(1), t(12)]).unwrap();
        let b1 = l.add(1, 0, &[t(2), t(12)]).unwrap(); // weakly like a2
        let b2 = l.add(1, 0, &[t(2), t(14)]).unwrap();
        let c = l.add(1, 0, &[t(3), t(11)]).unwrap(); // weakly like a1, and alone
        let link = l.link();
        let p = &link.persons;
        assert!(same(p, a1, a2) && same(p, b1, b2));
        assert!(!same(p, a2, b1), "two established persons are not joined by one weak link");
        assert!(same(p, a1, c), "a single record is attached by a weak link");
        assert_eq!(link.quality.links_not_bridged, 1);
        // With the bridge at the threshold, the weak link chains them.
        let mut chained = l.clone();
        chained.rule.bridge = 15.0;
        let p = chained.persons();
        assert!(same(&p, a2, b1));
    }

    #[test]
    fn a_field_the_tokens_show_to_differ_counts_against() {
        // Fields 0 name, 1 birth date, 2 address; scheme 0 = name and date, scheme 1 =
        // date and address: one comparison group (they share the date).
        let part = |field, transform| Part { field, transform };
        let mut r = LinkageRule::new(15.0, 15.0, &[30.0, 30.0], &[0b011, 0b110]);
        r.parts = vec![
            vec![part(0, Transform::Full), part(1, Transform::Full)],
            vec![part(1, Transform::Full), part(2, Transform::Full)],
        ];
        let mut l = Linker::new(&r, 2);
        let tok = |s: u8, v: u32| {
            let mut x = [s; TOKEN_LEN];
            x[1..5].copy_from_slice(&v.to_le_bytes());
            Some(x)
        };
        // 400 persons of two records each; one in four moved between them. A
        // moved pair agrees on scheme 0 and not on scheme 1, whose date agrees:
        // the tokens show the address to differ.
        for e in 0..400u32 {
            l.add(1, 0, &[tok(0, e), tok(1, e)]).unwrap();
            l.add(1, 0, &[tok(0, e), tok(1, if e % 4 == 0 { e + 10_000 } else { e })]).unwrap();
        }
        let q = l.link().quality;
        let address = q.fields_shown_to_differ.iter().find(|f| f.field == 2).copied();
        let Some(address) = address else { panic!("{q:?}") };
        assert!(address.counted && (0.2..0.3).contains(&address.m), "{address:?}");
        assert!(address.differ_bits < -1.5, "{address:?}");
        // Name and date are the level's own fields: the level already counts them.
        assert!(q.fields_shown_to_differ.iter().all(|f| f.field == 2 || !f.counted), "{q:?}");
        // Between the two weights, a moved person's records stay apart, the others are one.
        l.rule.threshold = q.schemes[0].agree_bits + address.differ_bits / 2.0;
        l.rule.bridge = l.rule.threshold;
        let p = l.persons();
        assert!(same(&p, 2, 3), "person 1 did not move");
        assert!(!same(&p, 0, 1), "person 0 moved");
        // Without the parts nothing is inferred: the moved pair links at the level's weight.
        l.rule.parts = Vec::new();
        let p = l.persons();
        assert!(same(&p, 0, 1));
    }

    #[test]
    fn schemes_past_the_sixteenth_count() {
        let r = rule(&[30.0; MAX_SCHEMES], 15.0, 15.0);
        let mut l = Linker::new(&r, MAX_SCHEMES);
        let only = |k: usize, x: u8| {
            let mut v = vec![None; MAX_SCHEMES];
            v[k] = t(x);
            v
        };
        let a = l.add(1, 0, &only(MAX_SCHEMES - 1, 1)).unwrap();
        let b = l.add(1, 0, &only(MAX_SCHEMES - 1, 1)).unwrap();
        let c = l.add(1, 0, &only(20, 2)).unwrap();
        let mut v = only(20, 2);
        v[MAX_SCHEMES - 1] = t(3);
        let d = l.add(1, 0, &v).unwrap();
        let p = l.persons();
        assert!(same(&p, a, b) && same(&p, c, d) && !same(&p, a, c), "{p:?}");
        let mut too_many = vec![None; MAX_SCHEMES + 1];
        too_many[0] = t(1);
        assert!(Linker::new(&rule(&[30.0; MAX_SCHEMES + 1], 15.0, 15.0), MAX_SCHEMES + 1)
            .add(1, 0, &too_many)
            .is_err());
    }

    #[test]
    fn swapped_names_agree_as_a_set_and_blame_nothing_else() {
        // Fields 0 given, 1 family, 2 birth date, 3 postal code. Scheme 0: the two
        // names (unordered) and the date; scheme 1: given name, date and postal code.
        let part = |field| Part { field, transform: Transform::Full };
        let mut r = LinkageRule::new(15.0, 15.0, &[30.0, 30.0], &[0b0111, 0b1101]);
        r.parts = vec![vec![part(0), part(1), part(2)], vec![part(0), part(2), part(3)]];
        r.unordered = vec![vec![vec![0, 1]], Vec::new()];
        let l = Linker::new(&r, 2);
        // Scheme 0 agrees, scheme 1 does not: with the names possibly swapped, the
        // given name is not known to agree, so the postal code is not blamed.
        assert_eq!(l.shown(0b01, 0b11), (0, 0));
        // Ordered, the same pattern would blame the postal code.
        let mut ordered = r.clone();
        ordered.unordered = vec![Vec::new(), Vec::new()];
        assert_eq!(Linker::new(&ordered, 2).shown(0b01, 0b11), (1 << 3, 0));
        // Another scheme with the same unordered set is satisfied by it: scheme 2
        // (the names, unordered, and the postal code) disagreeing blames the postal code.
        let mut r3 = LinkageRule::new(15.0, 15.0, &[30.0, 30.0, 30.0], &[0b0111, 0b1101, 0b1011]);
        r3.parts =
            vec![vec![part(0), part(1), part(2)], vec![part(0), part(2), part(3)], vec![part(0), part(1), part(3)]];
        r3.unordered = vec![vec![vec![0, 1]], Vec::new(), vec![vec![0, 1]]];
        let l3 = Linker::new(&r3, 3);
        assert_eq!(l3.shown(0b001, 0b101), (1 << 3, 0));
    }

    #[test]
    fn what_agreeing_parts_imply() {
        let p = |field, transform| Part { field, transform };
        let ymd = [p(1, Transform::Year), p(1, Transform::Month), p(1, Transform::Day)];
        assert!(implied(&ymd, p(1, Transform::Full)));
        assert!(implied(&[p(1, Transform::YearMonth), p(1, Transform::Day)], p(1, Transform::Full)));
        assert!(!implied(&ymd[..2], p(1, Transform::Full)));
        assert!(implied(&[p(1, Transform::YearMonth)], p(1, Transform::Year)));
        assert!(implied(&[p(0, Transform::Full)], p(0, Transform::Soundex)));
        assert!(implied(&[p(0, Transform::Prefix(3))], p(0, Transform::Initial)));
        assert!(!implied(&[p(0, Transform::Initial)], p(0, Transform::Prefix(3))));
        assert!(!implied(&[p(0, Transform::Suffix(2))], p(0, Transform::Suffix(3))));
        assert!(!implied(&[p(0, Transform::Full)], p(1, Transform::Full)), "another field");
    }

    #[test]
    fn the_prior_is_the_share_of_matches_among_all_record_pairs() {
        // 300 persons of two identical records each: 300 matching pairs among C(600, 2).
        let mut r = rule(&[30.0], 0.0, 0.0);
        r.with_prior = true;
        let mut l = Linker::new(&r, 1);
        for e in 0..300u32 {
            let mut x = [7u8; TOKEN_LEN];
            x[..4].copy_from_slice(&e.to_le_bytes());
            l.add(1, 0, &[Some(x)]).unwrap();
            l.add(1, 0, &[Some(x)]).unwrap();
        }
        let link = l.link();
        let want = (300.0f64 / (600.0 * 599.0 / 2.0 - 300.0)).log2();
        assert!((link.quality.prior_bits - want).abs() < 0.01, "{} vs {want}", link.quality.prior_bits);
        assert_eq!(link.quality.persons, 300, "each person's records are one person at 0 bits");
        // The prior counts: a rule asking for more than the evidence minus the prior links none.
        let evidence = link.quality.schemes[0].agree_bits;
        l.rule.threshold = evidence + want + 1.0;
        l.rule.bridge = l.rule.threshold;
        assert_eq!(l.link().quality.persons, 600);
    }

    /// Records of `entities` persons with recording noise: each token is sometimes
    /// missing or wrong, as exact tokens of a name or date with a typo would be.
    fn noisy(seed: u64, entities: u32, per: u32) -> (Vec<[Option<Token>; 4]>, Vec<u32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut recs = Vec::new();
        let mut truth = Vec::new();
        for e in 0..entities {
            for _ in 0..rng.gen_range(1..=per) {
                let mut r = [None; 4];
                for (s, slot) in r.iter_mut().enumerate() {
                    let mut v = [0u8; TOKEN_LEN];
                    v[..4].copy_from_slice(&e.to_le_bytes());
                    v[4] = s as u8;
                    let roll: f64 = rng.gen();
                    if roll < 0.1 {
                        continue; // missing
                    } else if roll < 0.2 {
                        v[5] = rng.gen_range(1..=255); // wrong
                    }
                    *slot = Some(v);
                }
                recs.push(r);
                truth.push(e);
            }
        }
        (recs, truth)
    }

    #[test]
    fn estimated_from_the_data_and_good_on_it() {
        let (recs, truth) = noisy(7, 600, 6);
        let r = LinkageRule::new(15.0, 30.0, &[30.0, 30.0, 30.0, 24.0], &[1, 2, 4, 8]);
        let mut l = Linker::new(&r, 4);
        for x in &recs {
            l.add(1, 0, x).unwrap();
        }
        let link = l.link();
        let q = &link.quality;
        assert!(q.estimated && q.em_iterations > 1, "{q:?}");
        // Each token agrees for the same person about (0.9·0.8)² / 0.9² ≈ 0.8 of compared pairs.
        for s in &q.schemes {
            assert!((0.7..0.9).contains(&s.m), "{q:?}");
            assert!(s.agree_bits > 15.0);
        }
        let m = pairwise_metrics(&link.persons, &truth);
        assert!(m.precision == 1.0 && m.recall > 0.95, "{m:?}");
        assert_eq!(l.persons(), link.persons, "persons without the quality figures are the same persons");
        assert!((0.0..=1.0).contains(&q.estimated_split_share) && (0.0..=1.0).contains(&q.estimated_merged_share));
        assert!(q.weight_histogram.iter().map(|b| b.pairs).sum::<u64>() == q.candidate_pairs);
    }

    #[test]
    fn incremental_equals_batch_at_once_and_arrival_order_does_not_matter() {
        let (recs, _) = noisy(11, 500, 8);
        let mut r = LinkageRule::new(15.0, 30.0, &[30.0, 30.0, 30.0, 24.0], &[1, 2, 4, 8]);
        // The last scheme per source, the records spread over three sources.
        r.per_source = vec![false, false, false, true];
        let scope = |i: usize| (i % 3) as u32;
        let mut whole = Linker::new(&r, 4);
        for (i, x) in recs.iter().enumerate() {
            whole.add(1, scope(i), x).unwrap();
        }
        let once = whole.link();
        // Batch by batch, linking (and estimating) after every batch as the steward does.
        let mut inc = Linker::new(&r, 4);
        let mut at = 0;
        for size in [1, 7, 100, 3, 500, 64].iter().cycle() {
            if at >= recs.len() {
                break;
            }
            for (i, x) in recs.iter().enumerate().take((at + size).min(recs.len())).skip(at) {
                inc.add(1, scope(i), x).unwrap();
            }
            at += size;
            let _ = inc.link();
        }
        let batched = inc.link();
        assert_eq!(once.persons, batched.persons);
        assert_eq!(once.quality, batched.quality);
        // The same input twice: the same persons.
        assert_eq!(whole.link().persons, once.persons);
        // Reversed arrival: the same partition.
        let mut rev = Linker::new(&r, 4);
        for (i, x) in recs.iter().enumerate().rev() {
            rev.add(1, scope(i), x).unwrap();
        }
        let mut p = rev.persons();
        p.reverse();
        let m = pairwise_metrics(&p, &once.persons);
        assert_eq!((m.precision, m.recall), (1.0, 1.0));
    }

    #[test]
    fn a_removed_record_links_as_if_it_never_came() {
        let (recs, _) = noisy(5, 300, 6);
        let r = LinkageRule::new(15.0, 30.0, &[30.0, 30.0, 30.0, 24.0], &[1, 2, 4, 8]);
        // Bridges: records with two entities' tokens, later removed (a version corrected).
        let bridges: Vec<[Option<Token>; 4]> = (0..40)
            .map(|i| {
                let (a, b) = (recs[i * 7], recs[i * 7 + 300]);
                [a[0], a[1], b[2], b[3]]
            })
            .collect();
        let mut with = Linker::new(&r, 4);
        let mut removed = Vec::new();
        for (i, x) in recs.iter().enumerate() {
            with.add(1, 0, x).unwrap();
            if i % 10 == 0 && i / 10 < bridges.len() {
                removed.push(with.add(1, 0, &bridges[i / 10]).unwrap());
            }
        }
        let merged = with.link().quality.persons;
        for &b in &removed {
            assert!(with.remove(b));
            assert!(!with.remove(b), "removed twice");
        }
        assert_eq!(with.live(), recs.len());
        let mut fresh = Linker::new(&r, 4);
        for x in &recs {
            fresh.add(1, 0, x).unwrap();
        }
        let (a, b) = (with.link(), fresh.link());
        let kept: Vec<u32> = a.persons.iter().copied().filter(|&p| p != u32::MAX).collect();
        assert_eq!(kept.len(), recs.len());
        assert_eq!(a.persons.iter().filter(|&&p| p == u32::MAX).count(), removed.len());
        let m = pairwise_metrics(&kept, &b.persons);
        assert_eq!((m.precision, m.recall), (1.0, 1.0));
        assert_eq!(a.quality.persons, b.quality.persons);
        assert!(merged < b.quality.persons, "the bridges merged persons ({merged} vs {})", b.quality.persons);
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
