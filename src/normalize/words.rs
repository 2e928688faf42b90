//! Byte-level word splitting shared by the name, address and place rules.
//!
//! Input is ASCII (raw ASCII input, or the output of `fold`). A word is a
//! maximal run of ASCII letters, digits and apostrophes; apostrophes belong
//! to the word but are never written out, so `O'Brien` is one word whose
//! letters are `obrien`. Everything else separates words. Optionally `#` is a
//! word of its own (addresses: `#4` means apartment 4).

/// One word of the input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Word<'a> {
    /// The raw bytes: letters (any case), digits, apostrophes; or `#`.
    pub bytes: &'a [u8],
    /// The separator run before this word contained a hyphen (`Mary-Ann`).
    pub hyphen_before: bool,
}

/// Iterator over the words of an ASCII byte string.
#[derive(Debug, Clone)]
pub(crate) struct Words<'a> {
    s: &'a [u8],
    i: usize,
    hash_is_word: bool,
}

impl<'a> Words<'a> {
    /// Words for names and places: `#` is a separator.
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Words { s, i: 0, hash_is_word: false }
    }

    /// Words for addresses: `#` is a one-byte word.
    pub(crate) fn with_hash(s: &'a [u8]) -> Self {
        Words { s, i: 0, hash_is_word: true }
    }
}

#[inline]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'\''
}

impl<'a> Iterator for Words<'a> {
    type Item = Word<'a>;

    #[inline]
    fn next(&mut self) -> Option<Word<'a>> {
        let s = self.s;
        let mut hyphen_before = false;
        while let Some(&b) = s.get(self.i) {
            if is_word_byte(b) || (self.hash_is_word && b == b'#') {
                break;
            }
            hyphen_before |= b == b'-';
            self.i += 1;
        }
        let start = self.i;
        match s.get(start) {
            None => return None,
            Some(b'#') => {
                self.i += 1;
            }
            Some(_) => {
                while s.get(self.i).is_some_and(|&b| is_word_byte(b)) {
                    self.i += 1;
                }
            }
        }
        Some(Word { bytes: s.get(start..self.i).unwrap_or_default(), hyphen_before })
    }
}

/// Lowercased word, for comparison against short word lists (titles,
/// suffixes, abbreviations). Apostrophes are kept, so a word with an
/// apostrophe never matches a list entry (`M'iss` is a name, not `Miss`).
/// Words longer than `KEY_MAX` have no key (no list entry is that long).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    buf: [u8; KEY_MAX],
    len: usize,
}

const KEY_MAX: usize = 12;

impl Key {
    /// The key of a word, or `None` if it is longer than any listed word.
    #[inline]
    pub(crate) fn of(word: &[u8]) -> Option<Key> {
        let mut k = Key { buf: [0; KEY_MAX], len: 0 };
        for &b in word {
            let slot = k.buf.get_mut(k.len)?;
            *slot = b.to_ascii_lowercase();
            k.len += 1;
        }
        Some(k)
    }

    /// Like [`Key::of`] but without the apostrophes (`St'reet` → `street`),
    /// for addresses and places, where an apostrophe carries no meaning.
    #[inline]
    pub(crate) fn of_unquoted(word: &[u8]) -> Option<Key> {
        let mut k = Key { buf: [0; KEY_MAX], len: 0 };
        for &b in word.iter().filter(|&&b| b != b'\'') {
            let slot = k.buf.get_mut(k.len)?;
            *slot = b.to_ascii_lowercase();
            k.len += 1;
        }
        Some(k)
    }

    /// The key bytes (lowercase letters, digits, apostrophes, or `#`).
    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// The key bytes of a word, or an empty slice for over-long words (which
/// match no list entry).
#[inline]
pub(crate) fn key_bytes(k: &Option<Key>) -> &[u8] {
    match k {
        Some(k) => k.as_bytes(),
        None => &[],
    }
}

/// Whether the word contains at least one ASCII letter.
#[inline]
pub(crate) fn has_letter(word: &[u8]) -> bool {
    word.iter().any(|b| b.is_ascii_alphabetic())
}

/// Append the word's letters, lowercased (digits and apostrophes dropped).
#[inline]
pub(crate) fn push_letters(word: &[u8], out: &mut String) {
    for &b in word {
        if b.is_ascii_alphabetic() {
            out.push(b.to_ascii_lowercase() as char);
        }
    }
}

/// Append the word's letters and digits, lowercased (apostrophes dropped).
#[inline]
pub(crate) fn push_alnum(word: &[u8], out: &mut String) {
    for &b in word {
        if b.is_ascii_alphanumeric() {
            out.push(b.to_ascii_lowercase() as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<(String, bool)> {
        Words::new(s.as_bytes()).map(|w| (String::from_utf8_lossy(w.bytes).into_owned(), w.hyphen_before)).collect()
    }

    #[test]
    fn splits_words() {
        assert_eq!(split(" O'Brien, Jr. "), vec![("O'Brien".into(), false), ("Jr".into(), false)]);
        assert_eq!(split("Mary - Ann Lee"), vec![("Mary".into(), false), ("Ann".into(), true), ("Lee".into(), false)]);
        assert!(split(" .,- ").is_empty());
        let addr: Vec<_> =
            Words::with_hash(b"1 Main St #4B").map(|w| String::from_utf8_lossy(w.bytes).into_owned()).collect();
        assert_eq!(addr, vec!["1", "Main", "St", "#", "4B"]);
    }

    #[test]
    fn keys() {
        assert_eq!(key_bytes(&Key::of(b"JR")), b"jr");
        assert_eq!(key_bytes(&Key::of(b"J'R")), b"j'r");
        assert_eq!(key_bytes(&Key::of_unquoted(b"J'R")), b"jr");
        assert_eq!(key_bytes(&Key::of(b"abcdefghijklm")), b"");
        assert_eq!(key_bytes(&Key::of(b"abcdefghijkl")), b"abcdefghijkl");
    }
}
