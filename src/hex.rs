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

/// Append the lower-case hex of `bytes` to `out` (no allocation beyond `out`'s growth).
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

/// Append the lower-case hex of `bytes` to the string `out`.
pub fn push_hex(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
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
    let h = hex.as_bytes();
    if h.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, c) in out.iter_mut().zip(h.chunks_exact(2)) {
        *o = digit(c[0])? << 4 | digit(c[1])?;
    }
    Some(out)
}

/// Whether `s` is exactly `digits` hex digits.
pub fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for bad in ["abc", "0g", "+1", " 1", "é1"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode_array::<2>("0aff00"), None);
        assert_eq!(decode_array::<2>("0af"), None);
        assert!(is_hex("00aF", 4) && !is_hex("00aF", 6) && !is_hex("00aG", 4));
    }
}
