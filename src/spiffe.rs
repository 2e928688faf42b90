//! SPIFFE identities: who a certificate speaks for (`spiffe://<program>/<role>/<name>`), read from it on every daemon path, and the naming rules of programs and members.
//!
//! A peer's role and name come from its verified certificate only, never from
//! what it says about itself. The offline CA (`pki`) issues certificates
//! carrying these identities; this module reads them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Why an identity, a name or a certificate's identity is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum SpiffeError {
    #[error("program name {given:?} is not allowed: it must be {PROGRAM_RULE}")]
    InvalidProgram { given: String },
    #[error("name {given:?} is not allowed: it must be {NAME_RULE}")]
    InvalidName { given: String },
    #[error("role {given:?} is not allowed: it must be one of source, steward, evaluator")]
    InvalidRole { given: String },
    #[error("{given:?} is not a SPIFFE ID of this system: {reason} (expected spiffe://<program>/<role>/<name>)")]
    InvalidSpiffeId { given: String, reason: String },
    #[error("certificate has no usable identity: {reason}")]
    BadCertificate { reason: String },
}

const NAME_RULE: &str = "1 to 63 characters among lowercase a-z, 0-9, '-' and '_' (e.g. police)";
const PROGRAM_RULE: &str = "a SPIFFE trust domain: 1 to 63 characters among lowercase a-z, 0-9, '.', '-' and '_', \
                            not starting or ending with '.' (e.g. santa-fe-lead)";

/// What a certificate lets its holder do; comes from the SPIFFE ID, never from the peer's say-so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Steward,
    Evaluator,
}

impl Role {
    /// Every role, in display order.
    pub const ALL: [Role; 3] = [Role::Source, Role::Steward, Role::Evaluator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Steward => "steward",
            Role::Evaluator => "evaluator",
        }
    }

    /// Whether certificates of this role also serve TLS: the steward answers
    /// everyone and sources answer each other for key distribution;
    /// evaluators are clients only.
    pub fn serves(self) -> bool {
        matches!(self, Role::Source | Role::Steward)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| SpiffeError::InvalidRole { given: s.to_string() })
    }
}

/// `spiffe://<program>/<role>/<name>`: who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub program: String,
    pub role: Role,
    pub name: String,
}

impl SpiffeId {
    /// Build an ID from parts, validating each.
    pub fn new(program: &str, role: Role, name: &str) -> Result<Self, SpiffeError> {
        validate_program(program)?;
        validate_name(name)?;
        Ok(SpiffeId { program: program.to_string(), role, name: name.to_string() })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}/{}", self.program, self.role, self.name)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| SpiffeError::InvalidSpiffeId { given: s.to_string(), reason: reason.to_string() };
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| bad("it does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [program, role, name] = parts.as_slice() else {
            return Err(bad("it must have exactly a program, a role and a name"));
        };
        let role: Role = role.parse().map_err(|e: SpiffeError| bad(&e.to_string()))?;
        SpiffeId::new(program, role, name).map_err(|e| bad(&e.to_string()))
    }
}

/// Refuse a program name that is not a SPIFFE trust domain we accept.
pub fn validate_program(program: &str) -> Result<(), SpiffeError> {
    let ok = (1..=63).contains(&program.len())
        && program.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
        // A leading or trailing dot would make an odd URI authority and odd CN; refuse it.
        && !program.starts_with('.')
        && !program.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::InvalidProgram { given: program.to_string() })
    }
}

/// Refuse a member name (the last SPIFFE path segment) outside a-z 0-9 - _.
pub fn validate_name(name: &str) -> Result<(), SpiffeError> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::InvalidName { given: name.to_string() })
    }
}

/// The SPIFFE ID of a certificate: its one and only `spiffe://` URI SAN.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, SpiffeError> {
    use x509_parser::extensions::GeneralName;
    let bad = |reason: String| SpiffeError::BadCertificate { reason };
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("unreadable subjectAltName ({e})")))?
        .ok_or_else(|| bad("no subjectAltName extension".to_string()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => one.parse(),
        [] => Err(bad("no spiffe:// URI in subjectAltName".to_string())),
        _ => Err(bad(format!("{} spiffe:// URIs in subjectAltName; exactly one is allowed", uris.len()))),
    }
}

/// When a certificate stops being valid.
pub fn cert_not_after(cert_der: &[u8]) -> Result<OffsetDateTime, SpiffeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| SpiffeError::BadCertificate { reason: format!("not an X.509 certificate ({e})") })?;
    Ok(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert!(matches!("admin".parse::<Role>(), Err(SpiffeError::InvalidRole { .. })));
        assert!("Source".parse::<Role>().is_err());
    }

    #[test]
    fn spiffe_id_round_trips_and_validates() {
        let id: SpiffeId = "spiffe://santa-fe-lead/source/police".parse().unwrap();
        assert_eq!(id, SpiffeId { program: "santa-fe-lead".into(), role: Role::Source, name: "police".into() });
        assert_eq!(id.to_string(), "spiffe://santa-fe-lead/source/police");
        for bad in [
            "https://santa-fe-lead/source/police",
            "spiffe://santa-fe-lead/source",
            "spiffe://santa-fe-lead/source/police/extra",
            "spiffe://santa-fe-lead/admin/police",
            "spiffe://Santa/source/police",
            "spiffe://p/source/Police",
            "spiffe://p/source/",
            "spiffe:///source/x",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn program_and_name_rules() {
        for ok in ["a", "santa-fe-lead", "lead.nm_2", &"x".repeat(63)] {
            validate_program(ok).unwrap();
        }
        for bad in ["", "Santa", "santa fe", "a/b", ".lead", "lead.", &"x".repeat(64), "é"] {
            let err = validate_program(bad).unwrap_err().to_string();
            assert!(err.contains("lowercase a-z"), "{err}");
        }
        for ok in ["police", "da_2", &"n".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "Police", "a.b", "a/b", &"n".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad} accepted");
        }
    }
}
