//! The inbox directory: which files are ready, the kind of each (from its name or a `FILE.kind` sidecar), retiring an ingested file (a receipt in done/, the export itself overwritten and deleted), and moving a refused one to rejected/ durably.
//!
//! Nothing readable stays after ingest: an export's rows live on only in
//! the source's encrypted raw store. What the operator keeps in `done/` is a
//! receipt per file (`NAME.receipt`: kind, counts, time; no value). A file
//! refused whole (its kind or format cannot be told, its header does not fit
//! the schema) was not ingested and waits in `rejected/` with its reason for
//! the operator to fix or delete; `divert status` counts them and the daemon
//! warns at start while any are there.

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
/// Suffix of the receipt left in done/ for an ingested file.
pub const RECEIPT: &str = ".receipt";
/// Prefix of an ingested file in done/ on its way to deletion.
const SHREDDING: &str = ".shred-";

/// How an ingested file's bytes were disposed of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shredded {
    /// Overwritten with zeros (and synced), then unlinked.
    Overwritten,
    /// Only unlinked: another hard link to the same bytes exists (the
    /// operator's own copy), which is not ours to destroy.
    UnlinkedOnly,
}

/// Overwrite a file with zeros, sync it, and delete it. Best effort against
/// reading the disk afterwards: copy-on-write and log-structured file
/// systems and SSD wear levelling may keep old blocks; the threat model says
/// to put the inbox on an encrypted volume. A file with other hard links is
/// only unlinked.
pub fn shred(path: &Path) -> io::Result<Shredded> {
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path)?;
    let how = if meta.is_file() && meta.nlink() == 1 {
        let mut f = fs::OpenOptions::new().write(true).open(path)?;
        f.seek(io::SeekFrom::Start(0))?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = meta.len();
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_data()?;
        Shredded::Overwritten
    } else {
        Shredded::UnlinkedOnly
    };
    fs::remove_file(path)?;
    Ok(how)
}

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
                || self.done.join(format!("{n}{RECEIPT}")).exists()
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

    /// Retire an ingested file: write its receipt `done/dest.receipt` (durably),
    /// move the file out of the inbox under a hidden name, then overwrite it
    /// and delete it ([`shred`]); its sidecar is deleted. A crash part-way
    /// leaves either the whole file in the inbox (ingested again: recognised
    /// as already ingested) or a hidden `done/.shred-*` file that
    /// [`Dirs::finish_shredding`] completes — never a half-overwritten file
    /// that would be read as an export.
    pub fn retire_ingested(&self, name: &str, dest: &str, receipt: &str) -> io::Result<Shredded> {
        fsutil::write_public(&self.done.join(format!("{dest}{RECEIPT}")), receipt.as_bytes())
            .map_err(io::Error::other)?;
        let hidden = self.done.join(format!("{SHREDDING}{dest}"));
        fs::rename(self.inbox.join(name), &hidden)?;
        let sidecar = self.inbox.join(format!("{name}{SIDECAR}"));
        if sidecar.exists() {
            fs::remove_file(sidecar)?;
        }
        fsutil::sync_dir(&self.done)?;
        fsutil::sync_dir(&self.inbox)?;
        let how = shred(&hidden)?;
        fsutil::sync_dir(&self.done)?;
        Ok(how)
    }

    /// Complete retirements a crash interrupted, and retire export files an
    /// earlier version left in done/ in clear (every file there was
    /// ingested). Returns how many files were deleted.
    pub fn finish_shredding(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.done)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) || name.ends_with(RECEIPT) {
                continue;
            }
            let leftover = name.starts_with(SHREDDING);
            let legacy = !name.starts_with('.') && !name.ends_with(SIDECAR);
            if leftover || legacy || name.ends_with(SIDECAR) {
                if leftover || legacy {
                    shred(&entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
                n += 1;
            }
        }
        if n > 0 {
            fsutil::sync_dir(&self.done)?;
        }
        Ok(n)
    }

    /// Files waiting in rejected/ (not counting their `.reason` and quarantine reports).
    pub fn rejected_waiting(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.rejected)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false)
                && !name.starts_with('.')
                && !name.ends_with(".reason")
                && !name.ends_with(".quarantine.csv")
                && !name.ends_with(SIDECAR)
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Write `rejected/dest.reason`, then move the file (and its sidecar) to rejected/`dest`, durably.
    pub fn move_rejected(&self, name: &str, dest: &str, reason: &str) -> io::Result<()> {
        fsutil::write_public(&self.rejected.join(format!("{dest}.reason")), format!("{reason}\n").as_bytes())
            .map_err(io::Error::other)?;
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
pub fn tell_kind(schema: &Schema, inbox: &Path, name: &str) -> Result<String, KindError> {
    let kinds = schema.kind_names();
    let sidecar = inbox.join(format!("{name}{SIDECAR}"));
    let (name, kinds_list) = (name.to_string(), kinds.join(", "));
    if sidecar.exists() {
        let mut text = String::new();
        fs::File::open(&sidecar)
            .and_then(|f| f.take(256).read_to_string(&mut text))
            .map_err(|error| KindError::Sidecar { name: name.clone(), error })?;
        let k = text.trim();
        return match kinds.iter().find(|&&x| x == k) {
            Some(k) => Ok((*k).to_string()),
            None => Err(KindError::SidecarKind { name, kinds: kinds_list }),
        };
    }
    match kind_from_name(&name, &kinds) {
        Some(k) => Ok(k.to_string()),
        None => Err(KindError::Unnamed { name, kinds: kinds_list }),
    }
}

/// Why the record kind of an inbox file cannot be told (what `FILE.reason` says).
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error("cannot read the sidecar {name}{SIDECAR}: {error}")]
    Sidecar { name: String, error: std::io::Error },
    #[error("the sidecar {name}{SIDECAR} does not hold a record kind of the schema; write one of: {kinds}")]
    SidecarKind { name: String, kinds: String },
    #[error(
        "cannot tell the record kind: the file name does not start with a kind followed by `.`, `-` or `_`, \
         and there is no sidecar {name}{SIDECAR}; kinds: {kinds}"
    )]
    Unnamed { name: String, kinds: String },
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
        assert!(tell_kind(&schema, dir.path(), "export1.csv").unwrap_err().to_string().contains("cannot tell"));
        fs::write(dir.path().join("export1.csv.kind"), "booking\n").unwrap();
        assert_eq!(tell_kind(&schema, dir.path(), "export1.csv").unwrap(), "booking");
        fs::write(dir.path().join("export1.csv.kind"), "nonsense").unwrap();
        assert!(tell_kind(&schema, dir.path(), "export1.csv").unwrap_err().to_string().contains("sidecar"));
        fs::write(dir.path().join("arrest.csv.kind"), "booking").unwrap();
        assert_eq!(tell_kind(&schema, dir.path(), "arrest.csv").unwrap(), "booking", "the sidecar wins");

        assert_eq!(dirs.ready().unwrap(), vec!["export1.csv".to_string()]);
        assert_eq!(dirs.unique_dest("export1.csv"), "export1.csv");
        let how = dirs.retire_ingested("export1.csv", "export1.csv", "{}").unwrap();
        assert_eq!(how, Shredded::Overwritten);
        assert!(!dirs.inbox.join("export1.csv").exists() && !dirs.inbox.join("export1.csv.kind").exists());
        assert_eq!(names(&dirs.done), vec!["export1.csv.receipt".to_string()], "only the receipt stays");
        assert_eq!(dirs.unique_dest("export1.csv"), "export1~2.csv");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn shred_overwrites_unless_another_link_holds_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        fs::write(&a, "given_name\nZelda\n").unwrap();
        // Keep a handle: after the unlink it still reads the inode, which must hold zeros.
        let mut held = fs::File::open(&a).unwrap();
        assert_eq!(shred(&a).unwrap(), Shredded::Overwritten);
        assert!(!a.exists());
        let mut bytes = Vec::new();
        held.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 17);
        assert!(bytes.iter().all(|&b| b == 0), "the bytes were not overwritten");

        let b = dir.path().join("b.csv");
        let operator_copy = dir.path().join("archive.csv");
        fs::write(&b, "Zelda").unwrap();
        fs::hard_link(&b, &operator_copy).unwrap();
        assert_eq!(shred(&b).unwrap(), Shredded::UnlinkedOnly);
        assert!(!b.exists());
        assert_eq!(fs::read_to_string(&operator_copy).unwrap(), "Zelda", "another link's bytes are not ours");
    }

    #[test]
    fn interrupted_and_legacy_files_in_done_are_finished() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path());
        dirs.create().unwrap();
        fs::write(dirs.done.join(".shred-arrest.csv"), "Zelda").unwrap();
        fs::write(dirs.done.join("booking.csv"), "Zelda").unwrap(); // an earlier version's done/ file
        fs::write(dirs.done.join("booking.csv.kind"), "booking").unwrap();
        fs::write(dirs.done.join("arrest.csv.receipt"), "{}").unwrap();
        assert_eq!(dirs.finish_shredding().unwrap(), 3);
        assert_eq!(names(&dirs.done), vec!["arrest.csv.receipt".to_string()]);
        fs::write(dirs.rejected.join("x.csv"), "Zelda").unwrap();
        fs::write(dirs.rejected.join("x.csv.reason"), "why").unwrap();
        assert_eq!(dirs.rejected_waiting().unwrap(), 1);
    }
}
