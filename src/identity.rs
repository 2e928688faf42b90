//! The one type that holds a person's normalized identity values: no Display, no Serialize, a redacting Debug, zeroized on drop.

use std::fmt;

use zeroize::Zeroize;

/// Normalized identity values of one record, one slot per identity field of
/// the schema (same order). Reused across rows to avoid allocation; cleared
/// (zeroized) between rows and on drop.
pub struct Identity {
    values: Vec<String>,
    present: Vec<bool>,
    /// Slots handed out by [`Identity::slot`] since they were last wiped:
    /// only those can hold a value's bytes, so only those are wiped.
    written: Vec<bool>,
}

impl Identity {
    /// Empty slots for `n` identity fields.
    pub fn with_fields(n: usize) -> Identity {
        Identity {
            values: (0..n).map(|_| String::with_capacity(32)).collect(),
            present: vec![false; n],
            written: vec![false; n],
        }
    }

    /// The normalized value of field `i`, if present.
    pub fn get(&self, i: usize) -> Option<&str> {
        if self.present.get(i).copied().unwrap_or(false) {
            self.values.get(i).map(String::as_str)
        } else {
            None
        }
    }

    /// The buffer for field `i`, cleared, to normalize into; mark it with [`Identity::set_present`].
    pub fn slot(&mut self, i: usize) -> &mut String {
        self.present[i] = false;
        let s = &mut self.values[i];
        if std::mem::replace(&mut self.written[i], true) {
            wipe(s);
        }
        s
    }

    pub fn set_present(&mut self, i: usize, present: bool) {
        self.present[i] = present;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Forget every value (zeroizing the bytes) and keep the buffers.
    pub fn clear(&mut self) {
        for (v, written) in self.values.iter_mut().zip(&mut self.written) {
            if std::mem::take(written) {
                wipe(v);
            }
        }
        self.present.iter_mut().for_each(|p| *p = false);
    }
}

/// Empty `s` and zero its whole buffer, the bytes past its length too (a
/// normalizer may have written there and truncated): one fill over the
/// allocation, where `String::zeroize` makes two.
pub(crate) fn wipe(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    bytes.clear();
    bytes.spare_capacity_mut().zeroize();
    // An empty vector is valid UTF-8: this keeps the buffer, it never fails.
    *s = String::from_utf8(bytes).unwrap_or_default();
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Shows only which fields are present, never their values.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let present = self.present.iter().filter(|p| **p).count();
        write!(f, "Identity({present} of {} fields, redacted)", self.values.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let mut id = Identity::with_fields(2);
        id.slot(0).push_str("margaret");
        id.set_present(0, true);
        assert_eq!(id.get(0), Some("margaret"));
        assert_eq!(id.get(1), None);
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("margaret"), "{dbg}");
        id.clear();
        assert_eq!(id.get(0), None);
    }
}
