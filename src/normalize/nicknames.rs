//! The given-name nickname table (`nicknames.txt`), parsed once.
//!
//! Each line of the table is a group, canonical form first. A name that
//! appears in several groups belongs to the first one; a line whose
//! canonical form already belongs to an earlier group extends that group,
//! so the mapping is always idempotent (a canonical form maps to itself).
//! Parsing is infallible: malformed entries (anything but `a-z`) are
//! skipped, and a unit test checks that the shipped table has none.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The shipped table.
pub(crate) const TABLE_TEXT: &str = include_str!("nicknames.txt");

pub(crate) struct Table {
    /// name → index into `groups`.
    map: HashMap<&'static str, usize>,
    /// Each group: canonical first, then the names that resolve to it.
    groups: Vec<Vec<&'static str>>,
}

static TABLE: OnceLock<Table> = OnceLock::new();

fn table() -> &'static Table {
    TABLE.get_or_init(|| parse(TABLE_TEXT))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase())
}

/// Parse table text (see the module docs). Never fails and never panics.
pub(crate) fn parse(text: &'static str) -> Table {
    let mut map: HashMap<&'static str, usize> = HashMap::new();
    let mut groups: Vec<Vec<&'static str>> = Vec::new();
    for line in text.lines() {
        let line = match line.find('#') {
            Some(i) => line.get(..i).unwrap_or_default(),
            None => line,
        };
        let mut names = line.split(',').map(str::trim).filter(|n| valid_name(n));
        let Some(first) = names.next() else {
            continue;
        };
        let group = match map.get(first) {
            Some(&g) => g,
            None => {
                let g = groups.len();
                groups.push(vec![first]);
                map.insert(first, g);
                g
            }
        };
        for name in names {
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(name) {
                e.insert(group);
                if let Some(members) = groups.get_mut(group) {
                    members.push(name);
                }
            }
        }
    }
    Table { map, groups }
}

impl Table {
    fn group_of(&self, name: &str) -> Option<&[&'static str]> {
        let g = *self.map.get(name)?;
        self.groups.get(g).map(Vec::as_slice)
    }
}

/// Canonical given name for a normalized name, if it is in the table.
pub(crate) fn canonical(name: &str) -> Option<&'static str> {
    table().group_of(name)?.first().copied()
}

/// The group `name` belongs to (canonical first), or an empty slice.
pub(crate) fn group(name: &str) -> &'static [&'static str] {
    table().group_of(name).unwrap_or_default()
}

/// All groups, in table order.
pub(crate) fn groups() -> impl Iterator<Item = &'static [&'static str]> {
    table().groups.iter().map(Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_is_clean() {
        let mut lines = 0;
        for (n, line) in TABLE_TEXT.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            lines += 1;
            let names: Vec<&str> = line.split(',').map(str::trim).collect();
            for name in &names {
                assert!(valid_name(name), "line {}: bad entry {name:?}", n + 1);
            }
            // every canonical form maps to itself
            assert_eq!(canonical(names[0]), Some(names[0]), "line {}", n + 1);
        }
        assert_eq!(groups().count(), lines);
        assert!(lines >= 150, "only {lines} groups");
    }

    #[test]
    fn idempotent_and_grouped() {
        for g in groups() {
            let c = g[0];
            for name in g {
                assert_eq!(canonical(name), Some(c));
                assert_eq!(group(name), g);
            }
        }
        assert!(group("zzz").is_empty());
        assert_eq!(canonical("zzz"), None);
    }

    #[test]
    fn first_group_wins() {
        assert_eq!(canonical("pat"), Some("patricia"));
        assert_eq!(canonical("patrick"), Some("patrick"));
        assert!(!group("patrick").contains(&"pat"));
        assert_eq!(canonical("ted"), Some("edward"));
        assert_eq!(canonical("chris"), Some("christopher"));
        assert_eq!(canonical("kathy"), Some("katherine"));
    }

    #[test]
    fn parse_tolerates_junk() {
        let t = parse("# c\n\n,,\nAbc,def\nfoo, bar ,foo,\nbar,baz\nx#y,z\n  \t\n");
        assert_eq!(t.groups, vec![vec!["def"], vec!["foo", "bar", "baz"], vec!["x"]]);
        assert_eq!(t.map.get("baz"), Some(&1));
    }
}
