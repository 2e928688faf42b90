//! Process hardening at start: no core dumps (a core of a source holds its raw-store data key and the linkage key's HMAC states), not ptrace-attachable by the same user, and enough file descriptors for the connection limits.
//!
//! Every `divert` process calls [`process`] first, before it reads a key:
//! the soft *and* hard core-size limits go to zero, so a shell's
//! `ulimit -c unlimited` cannot bring dumps back, and the process is made
//! non-dumpable (`PR_SET_DUMPABLE` 0), which also stops core handlers that
//! ignore the size limit (a `core_pattern` pipe such as systemd-coredump)
//! and ptrace by other processes of the same user. Both go through
//! `rustix`'s safe wrappers; the crate keeps `#![forbid(unsafe_code)]`.

use rustix::process::{self as rp, DumpableBehavior, Resource, Rlimit};

/// What [`process`] achieved, for `divert status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// The core-size limit is 0 (soft and hard).
    pub core_limit_zero: bool,
    /// `PR_GET_DUMPABLE` says the process is not dumpable.
    pub not_dumpable: bool,
    /// The soft limit on open files after raising it to the hard limit.
    pub open_files: Option<u64>,
}

/// Harden the current process; an error names what the kernel refused.
/// Callers that hold secrets treat an error as fatal.
pub fn process() -> Result<Hardening, HardenError> {
    rp::setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })
        .map_err(|e| HardenError::CoreLimit(e.into()))?;
    rp::set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| HardenError::Dumpable(e.into()))?;
    // A steward under a flood of connections needs descriptors: take what the
    // hard limit allows (best effort; the defaults still work without it).
    let nofile = rp::getrlimit(Resource::Nofile);
    if nofile.maximum != nofile.current {
        let _ = rp::setrlimit(Resource::Nofile, Rlimit { current: nofile.maximum, maximum: nofile.maximum });
    }
    Ok(current())
}

/// The process's state now (what `process` set, or not).
pub fn current() -> Hardening {
    let core = rp::getrlimit(Resource::Core);
    Hardening {
        core_limit_zero: core.current == Some(0) && core.maximum == Some(0),
        not_dumpable: matches!(rp::dumpable_behavior(), Ok(DumpableBehavior::NotDumpable)),
        open_files: rp::getrlimit(Resource::Nofile).current,
    }
}

impl Hardening {
    /// For `divert status`.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "core_dumps": if self.core_limit_zero && self.not_dumpable { "disabled" } else { "ALLOWED" },
            "core_limit_zero": self.core_limit_zero,
            "not_dumpable": self.not_dumpable,
            "open_files_limit": self.open_files,
        })
    }
}

/// Why the process could not be hardened.
#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("cannot set the core-size limit to 0 (setrlimit RLIMIT_CORE): {0}")]
    CoreLimit(std::io::Error),
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    Dumpable(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_sticks() {
        let h = process().unwrap();
        assert!(h.core_limit_zero && h.not_dumpable, "{h:?}");
        assert_eq!(current(), h);
        // The hard limit is 0 too: raising it again is refused (without CAP_SYS_RESOURCE)
        // or, as root, at least not done by us; the soft limit cannot exceed it.
        let core = rp::getrlimit(Resource::Core);
        assert_eq!((core.current, core.maximum), (Some(0), Some(0)));
        assert_eq!(h.to_json()["core_dumps"], "disabled");
    }
}
