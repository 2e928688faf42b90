//! Keyed universal hashing for the hash tables whose keys arrive from
//! outside: tokens and record-id hashes, chosen by whoever holds a source's
//! key. std's default (SipHash-1-3) is a keyed PRF and costs 15–25 ns a key;
//! these tables are probed a dozen times per record at the steward, and
//! their keys are short and fixed in length, so a cheaper keyed family does.
//!
//! The family is the vector multiply-add-shift of Dietzfelbinger (1996; see
//! Thorup, "High Speed Hashing for Integers and Strings", 2015, §3.4): for a
//! key of 64-bit words `x_i`,
//!
//! `h(x) = ((Σ a_i·x_i + b) mod 2^128) >> 64`
//!
//! with `a_i` and `b` random 128-bit numbers. It is strongly universal: two
//! keys whose words differ (up to [`WORDS`] words; std's `Hash` writes a
//! slice's length first) collide on any chosen bits of the result with
//! probability 2^-bits over the choice of the numbers, whatever the keys.
//! So a sender who does not know the numbers cannot, in expectation, choose
//! tokens that pile into one bucket (hash-flooding). That is a bound on
//! pairs, weaker than SipHash's random-function behaviour: it does not
//! bound probe runs in the worst case (Pătrașcu and Thorup, 2010; measured:
//! 65,536 consecutive keys over 4,096 buckets, mean 16, put 48 or more in
//! one bucket under about one draw of the numbers in a hundred, at worst
//! 338 in 1,000 draws), and the
//! function is linear, so a party that saw many hashes or a table's order
//! could solve for the numbers. Nothing shows either: no table under it is
//! printed or iterated where a peer sees the order. The numbers are drawn
//! once per process, from std's own OS-seeded `RandomState` (SipHash under
//! a random key, a PRF), and never leave it.
//!
//! Keys longer than [`WORDS`] words would reuse the numbers and lose the
//! guarantee (a debug build stops there); the longest key hashed here is 5
//! words (a rid key: epoch, scope, the 16 bytes' length and the 16 bytes).
//!
//! This is not cryptography: it protects a table's shape, not a secret.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// Words of a key the guarantee covers.
pub const WORDS: usize = 8;

struct Numbers {
    a: [u128; WORDS],
    b: u128,
}

fn numbers() -> &'static Numbers {
    static NUMBERS: OnceLock<Numbers> = OnceLock::new();
    NUMBERS.get_or_init(draw)
}

/// Fresh random numbers (see the module docs).
fn draw() -> Numbers {
    let seed = RandomState::new();
    let mut count = 0u64..;
    let mut next = move || {
        let hi = seed.hash_one(count.next().unwrap_or_default());
        let lo = seed.hash_one(count.next().unwrap_or_default());
        (u128::from(hi) << 64) | u128::from(lo)
    };
    let mut a = [0u128; WORDS];
    a.iter_mut().for_each(|x| *x = next());
    Numbers { a, b: next() }
}

/// The [`BuildHasher`] of a table keyed by outside data: `HashMap<K, V, Keyed>`.
#[derive(Clone, Copy)]
pub struct Keyed {
    numbers: &'static Numbers,
}

impl Default for Keyed {
    fn default() -> Keyed {
        Keyed { numbers: numbers() }
    }
}

impl std::fmt::Debug for Keyed {
    // The numbers are the table's secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyed")
    }
}

impl BuildHasher for Keyed {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher { numbers: self.numbers, sum: self.numbers.b, word: 0 }
    }
}

/// One key's hash under [`Keyed`]: each word written is multiplied by its
/// position's number and added.
pub struct KeyedHasher {
    numbers: &'static Numbers,
    sum: u128,
    word: usize,
}

impl KeyedHasher {
    #[inline]
    fn word(&mut self, x: u64) {
        debug_assert!(self.word < WORDS, "a key longer than the guarantee covers");
        let a = self.numbers.a[self.word % WORDS];
        self.sum = self.sum.wrapping_add(a.wrapping_mul(u128::from(x)));
        self.word += 1;
    }
}

impl Hasher for KeyedHasher {
    #[inline]
    fn finish(&self) -> u64 {
        (self.sum >> 64) as u64
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The rest's length in the top byte: "ab" and "ab\0" differ.
            w[7] ^= 0x80 | rest.len() as u8;
            self.word(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.word(u64::from(x));
    }
    #[inline]
    fn write_u16(&mut self, x: u16) {
        self.word(u64::from(x));
    }
    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.word(u64::from(x));
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.word(x);
    }
    #[inline]
    fn write_u128(&mut self, x: u128) {
        self.word(x as u64);
        self.word((x >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.word(x as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn equal_keys_hash_equal_and_a_changed_bit_moves_the_hash() {
        let k = Keyed::default();
        let t: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        assert_eq!(k.hash_one(t), Keyed::default().hash_one(t));
        for bit in 0..128 {
            assert_ne!(k.hash_one(t), k.hash_one(t ^ (1u128 << bit)), "bit {bit}");
        }
        assert_ne!(k.hash_one((1u32, 2u32, t)), k.hash_one((2u32, 1u32, t)));
        assert_ne!(k.hash_one([1u8, 2, 3].as_slice()), k.hash_one([1u8, 2, 3, 0].as_slice()));
    }

    #[test]
    fn keys_differing_in_few_bits_spread_over_the_buckets() {
        // Tokens a sender might choose to crowd a table: consecutive
        // numbers, and numbers differing only above bit 64. Each set of
        // 2^16 keys over 2^12 buckets (mean 16). The guarantee is over the
        // draw of the numbers, and an arithmetic run of keys meets an unlucky
        // draw (a multiplier near a fraction of small denominator) about
        // once in a hundred: of 1,000 draws, 5 to 12 per step had a bucket
        // of 48 or more, the worst 338. So over 33 draws, the median draw's
        // fullest bucket must stay under 48 (a hash blind to a word puts
        // every key in one bucket; a single draw failed CI once).
        for step in [1u128, 1 << 64, 1 << 100] {
            let mut most: Vec<u32> = (0..33)
                .map(|_| {
                    let k = Keyed { numbers: Box::leak(Box::new(draw())) };
                    let mut buckets = vec![0u32; 1 << 12];
                    for i in 0..(1u128 << 16) {
                        buckets[(k.hash_one(i * step) & 0xfff) as usize] += 1;
                    }
                    buckets.iter().copied().max().unwrap_or(0)
                })
                .collect();
            most.sort_unstable();
            assert!(most[16] < 48, "step {step:#x}: the median draw's fullest bucket holds {} of 65536 keys (mean 16); all draws: {most:?}", most[16]);
        }
    }

    #[test]
    fn a_map_under_it_works_as_any_map() {
        let mut m: HashMap<u128, u32, Keyed> = HashMap::default();
        for i in 0..10_000u32 {
            m.insert(u128::from(i) << 70 | u128::from(i), i);
        }
        for i in 0..10_000u32 {
            assert_eq!(m.get(&(u128::from(i) << 70 | u128::from(i))), Some(&i));
        }
        assert_eq!(m.get(&1), None);
    }
}
