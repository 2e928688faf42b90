//! The crate's one hex codec: lower-case out, either case in.
//!
//! Hex is how keyed hashes, key fingerprints, certificate serials and audit
//! hashes are written in text (JSON, key files, logs of non-identifying
//! values). Decoding never allocates for fixed-length values.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    push_hex(bytes, &mut out);
    out
}

/// The two lower-case hex digits of one byte.
fn pair(b: u8) -> [u8; 2] {
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]
}

/// Append the lower-case hex of `bytes` to `out` (no allocation beyond `out`'s growth).
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&pair(b));
    }
}

/// Append the lower-case hex of `bytes` to the string `out`.
pub fn push_hex(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.extend(pair(b).map(char::from));
    }
}

/// Write the lower-case hex of `bytes` into `out`, on the stack: as many
/// bytes as fit (`out.len() / 2`); returns the digits written.
pub fn encode_to_slice(bytes: &[u8], out: &mut [u8]) -> usize {
    let mut n = 0;
    for (o, &b) in out.chunks_exact_mut(2).zip(bytes) {
        o.copy_from_slice(&pair(b));
        n += 2;
    }
    n
}

/// Not a hex digit, in [`VALUE`] and [`LOWER_VALUE`].
const NOT_HEX: u8 = 0xff;

/// A table of digit values: either case, or lower case only.
const fn digit_table(upper: bool) -> [u8; 256] {
    let mut t = [NOT_HEX; 256];
    let mut i = 0u8;
    while i < 16 {
        let c = DIGITS[i as usize];
        t[c as usize] = i;
        if upper {
            t[c.to_ascii_uppercase() as usize] = i;
        }
        i += 1;
    }
    t
}

/// The value of each byte as a hex digit (either case), or [`NOT_HEX`].
const VALUE: [u8; 256] = digit_table(true);
/// The value of each byte as a lower-case hex digit, or [`NOT_HEX`].
const LOWER_VALUE: [u8; 256] = digit_table(false);

fn digit(c: u8) -> Option<u8> {
    match VALUE[usize::from(c)] {
        NOT_HEX => None,
        v => Some(v),
    }
}

/// `2 * N` digits by `table` into `N` bytes, one check for all of them.
fn decode_with<const N: usize>(h: &[u8], table: &[u8; 256]) -> Option<[u8; N]> {
    if h.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0u8;
    for (o, c) in out.iter_mut().zip(h.chunks_exact(2)) {
        let (hi, lo) = (table[usize::from(c[0])], table[usize::from(c[1])]);
        // NOT_HEX has its high bit set; no digit value has.
        bad |= hi | lo;
        *o = hi << 4 | (lo & 0xf);
    }
    (bad & 0x80 == 0).then_some(out)
}

/// The bytes of hex of any even length; `None` for an odd length or a non-hex digit.
pub fn decode(hex: &str) -> Option<Vec<u8>> {
    let h = hex.as_bytes();
    if h.len() % 2 != 0 {
        return None;
    }
    h.chunks_exact(2).map(|c| Some(digit(c[0])? << 4 | digit(c[1])?)).collect()
}

/// The `N` bytes of exactly `2 * N` hex digits; `None` otherwise.
pub fn decode_array<const N: usize>(hex: &str) -> Option<[u8; N]> {
    decode_with(hex.as_bytes(), &VALUE)
}

/// [`decode_array`] of lower-case digits only (the one spelling [`encode`] writes); `None` otherwise.
pub fn decode_lower_array<const N: usize>(hex: &str) -> Option<[u8; N]> {
    decode_with(hex.as_bytes(), &LOWER_VALUE)
}

/// Whether `s` is exactly `digits` hex digits.
pub fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digit_tables_agree_with_the_ascii_rules() {
        for c in 0..=255u8 {
            let s = [c, b'0'];
            let s = std::str::from_utf8(&s).ok();
            let either = s.and_then(decode_array::<1>);
            let lower = s.and_then(decode_lower_array::<1>);
            assert_eq!(either.is_some(), c.is_ascii_hexdigit(), "{c}");
            assert_eq!(lower.is_some(), c.is_ascii_digit() || (b'a'..=b'f').contains(&c), "{c}");
            if let Some([v]) = either {
                assert_eq!(u32::from(v >> 4), char::from(c).to_digit(16).unwrap());
            }
        }
        let h = "0123456789abcdefABCDEF0123456789";
        assert_eq!(decode_array::<16>(h).map(|b| encode(&b)), Some(h.to_lowercase()));
        assert_eq!(decode_lower_array::<16>(h), None);
        assert_eq!(decode_lower_array::<16>(&h.to_lowercase()), decode_array::<16>(h));
    }

    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = encode(&bytes);
        assert_eq!(text.len(), 512);
        assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(decode(&text).unwrap(), bytes);
        assert_eq!(decode(&text.to_uppercase()).unwrap(), bytes);
        assert_eq!(decode_array::<2>("0aFf"), Some([0x0a, 0xff]));
        let mut out = b"x".to_vec();
        encode_into(&[0xab, 0x01], &mut out);
        assert_eq!(out, b"xab01");
        let mut text = String::from("7:");
        push_hex(&[0xab, 0x01], &mut text);
        assert_eq!(text, "7:ab01");
        let mut slice = [b'.'; 5];
        assert_eq!(encode_to_slice(&[0xab, 0x01, 0xff], &mut slice), 4, "as many bytes as fit");
        assert_eq!(&slice, b"ab01.");
        for bad in ["abc", "0g", "+1", " 1", "é1"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode_array::<2>("0aff00"), None);
        assert_eq!(decode_array::<2>("0af"), None);
        assert!(is_hex("00aF", 4) && !is_hex("00aF", 6) && !is_hex("00aG", 4));
    }
}
