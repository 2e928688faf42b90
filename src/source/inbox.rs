//! The inbox directory: which files are ready, the kind of each (from its name or a `FILE.kind` sidecar), and moving a file to done/ or rejected/ durably.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::schema::Schema;

/// The inbox and where its files go.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub inbox: PathBuf,
    pub done: PathBuf,
    pub rejected: PathBuf,
}

/// Suffix of a sidecar naming a file's kind.
pub const SIDECAR: &str = ".kind";

impl Dirs {
    pub fn new(inbox: &Path) -> Dirs {
        Dirs { inbox: inbox.to_path_buf(), done: inbox.join("done"), rejected: inbox.join("rejected") }
    }

    /// Create the three directories (0700) where missing; existing ones keep their modes.
    pub fn create(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for d in [&self.inbox, &self.done, &self.rejected] {
            if !d.is_dir() {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(d)?;
            }
        }
        Ok(())
    }

    /// Names of the files ready to ingest, sorted.
    pub fn ready(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.inbox)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if !is_candidate(&name) {
                continue;
            }
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// A name for `name` in done/ (or rejected/) that no earlier file has taken:
    /// `arrest.csv`, then `arrest~2.csv`, `arrest~3.csv`, ...
    pub fn unique_dest(&self, name: &str) -> String {
        let (stem, ext) = match name.find('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        let taken = |n: &str| {
            self.done.join(n).exists()
                || self.rejected.join(n).exists()
                || self.rejected.join(format!("{n}.reason")).exists()
                || self.rejected.join(format!("{n}.quarantine.csv")).exists()
        };
        if !taken(name) {
            return name.to_string();
        }
        (2u64..)
            .map(|i| format!("{stem}~{i}{ext}"))
            .find(|n| !taken(n))
            .unwrap_or_else(|| format!("{name}~{}", std::process::id()))
    }

    /// Move a file (and its sidecar) to done/`dest`, durably.
    pub fn move_done(&self, name: &str, dest: &str) -> io::Result<()> {
        self.move_to(&self.done, name, dest)
    }

    /// Write `rejected/dest.reason`, then move the file (and its sidecar) to rejected/`dest`, durably.
    pub fn move_rejected(&self, name: &str, dest: &str, reason: &str) -> io::Result<()> {
        super::file::write_durable(&self.rejected.join(format!("{dest}.reason")), &format!("{reason}\n"))?;
        self.move_to(&self.rejected, name, dest)
    }

    fn move_to(&self, to: &Path, name: &str, dest: &str) -> io::Result<()> {
        fs::rename(self.inbox.join(name), to.join(dest))?;
        let sidecar = self.inbox.join(format!("{name}{SIDECAR}"));
        if sidecar.exists() {
            fs::rename(sidecar, to.join(format!("{dest}{SIDECAR}")))?;
        }
        fsutil::sync_dir(to)?;
        fsutil::sync_dir(&self.inbox)
    }
}

/// Whether an inbox entry is a file to ingest: not hidden, not partial (`.tmp`,
/// `.part`: copy under such a name, then rename), not a sidecar.
pub fn is_candidate(name: &str) -> bool {
    !(name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") || name.ends_with(SIDECAR))
}

/// The longest kind that starts the name and is followed by `.`, `-` or `_`
/// (`arrest.csv`, `arrest-2019-03.csv`, `program_status_q1.jsonl`). Case-insensitive.
pub fn kind_from_name<'k>(name: &str, kinds: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_lowercase();
    let mut best: Option<&'k str> = None;
    for &k in kinds {
        let kl = k.to_lowercase();
        let fits = !kl.is_empty()
            && lower.starts_with(&kl)
            && matches!(lower.as_bytes().get(kl.len()), Some(b'.' | b'-' | b'_'));
        if fits && best.map_or(true, |b| k.len() > b.len()) {
            best = Some(k);
        }
    }
    best
}

/// The kind of inbox file `name`: from its sidecar if there is one, else from
/// its name. `Err` says why it cannot be told (for `FILE.reason`).
pub fn tell_kind(schema: &Schema, inbox: &Path, name: &str) -> Result<String, String> {
    let kinds = schema.kind_names();
    let sidecar = inbox.join(format!("{name}{SIDECAR}"));
    if sidecar.exists() {
        let mut text = String::new();
        fs::File::open(&sidecar)
            .and_then(|f| f.take(256).read_to_string(&mut text))
            .map_err(|e| format!("cannot read the sidecar {name}{SIDECAR}: {e}"))?;
        let k = text.trim();
        return match kinds.iter().find(|&&x| x == k) {
            Some(k) => Ok((*k).to_string()),
            None => Err(format!(
                "the sidecar {name}{SIDECAR} does not hold a record kind of the schema; write one of: {}",
                kinds.join(", ")
            )),
        };
    }
    kind_from_name(name, &kinds).map(str::to_string).ok_or_else(|| {
        format!(
            "cannot tell the record kind: the file name does not start with a kind followed by `.`, `-` or `_`, \
             and there is no sidecar {name}{SIDECAR}; kinds: {}",
            kinds.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_names() {
        let kinds = ["arrest", "program", "program_status", "charge"];
        assert_eq!(kind_from_name("arrest.csv", &kinds), Some("arrest"));
        assert_eq!(kind_from_name("Arrest-2019-03.csv", &kinds), Some("arrest"));
        assert_eq!(kind_from_name("arrest_q1.jsonl", &kinds), Some("arrest"));
        assert_eq!(kind_from_name("program_status.csv", &kinds), Some("program_status"), "longest wins");
        assert_eq!(kind_from_name("program_x.csv", &kinds), Some("program"));
        assert_eq!(kind_from_name("arrests.csv", &kinds), None);
        assert_eq!(kind_from_name("arrest", &kinds), None);
        assert_eq!(kind_from_name("export.csv", &kinds), None);
    }

    #[test]
    fn candidates() {
        assert!(is_candidate("arrest.csv"));
        for n in [".arrest.csv", "arrest.csv.tmp", "arrest.csv.part", "arrest.csv.kind"] {
            assert!(!is_candidate(n), "{n}");
        }
    }

    #[test]
    fn sidecar_and_unique_names() {
        let schema = Schema::default_schema().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path());
        dirs.create().unwrap();
        fs::write(dir.path().join("export1.csv"), "x").unwrap();
        assert!(tell_kind(&schema, dir.path(), "export1.csv").unwrap_err().contains("cannot tell"));
        fs::write(dir.path().join("export1.csv.kind"), "booking\n").unwrap();
        assert_eq!(tell_kind(&schema, dir.path(), "export1.csv").unwrap(), "booking");
        fs::write(dir.path().join("export1.csv.kind"), "nonsense").unwrap();
        assert!(tell_kind(&schema, dir.path(), "export1.csv").unwrap_err().contains("sidecar"));
        fs::write(dir.path().join("arrest.csv.kind"), "booking").unwrap();
        assert_eq!(tell_kind(&schema, dir.path(), "arrest.csv").unwrap(), "booking", "the sidecar wins");

        assert_eq!(dirs.ready().unwrap(), vec!["export1.csv".to_string()]);
        assert_eq!(dirs.unique_dest("export1.csv"), "export1.csv");
        dirs.move_done("export1.csv", "export1.csv").unwrap();
        assert!(dirs.done.join("export1.csv.kind").exists());
        assert_eq!(dirs.unique_dest("export1.csv"), "export1~2.csv");
    }
}
