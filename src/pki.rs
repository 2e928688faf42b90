//! The program's certificate authority (offline, `divert ca`): CA, leaf certificates, revocation, CRLs, in PEM files. The identities they carry are `spiffe`'s.
//!
//! A CA directory holds:
//!
//! | file | mode | what |
//! |---|---|---|
//! | `ca.pem` | 0644 | the self-signed CA certificate (the trust anchor every daemon loads) |
//! | `ca.key` | 0600 | its P-256 private key (PKCS#8); refused when group/world-accessible |
//! | `ca.toml` | 0644 | program name, next serial, last CRL number, default CRL validity |
//! | `members.json` | 0644 | the register of every certificate ever issued, revoked or not |
//! | `crl.pem` | 0644 | the current certificate revocation list |
//!
//! An issued directory holds `cert.pem`, `key.pem` (0600), `ca.pem` and `crl.pem`.
//!
//! The register, not the CRL, is the source of truth: a CRL is always rebuilt
//! from `members.json`, so an interrupted `revoke` is repaired by `refresh_crl`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::days::format_time;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::fsutil::{self, SecretFileError};
pub use crate::spiffe::{cert_not_after, spiffe_id_of, validate_name, validate_program, Role, SpiffeError, SpiffeId};

/// The CA certificate in a CA directory, and the trust-anchor copy in an issued directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA's bookkeeping (program, serial counter, CRL number).
pub const CA_CONFIG_FILE: &str = "ca.toml";
/// The register of issued certificates.
pub const MEMBERS_FILE: &str = "members.json";
/// The current CRL, in the CA directory and copied into each issued directory.
pub const CRL_FILE: &str = "crl.pem";
/// A leaf certificate in an issued directory.
pub const CERT_FILE: &str = "cert.pem";
/// A leaf private key in an issued directory.
pub const KEY_FILE: &str = "key.pem";
/// Held while a command changes the CA directory, so two admins cannot hand out one serial twice.
pub const LOCK_FILE: &str = "ca.lock";

/// Default CA validity, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Longest CA validity accepted, in days (20 years).
pub const MAX_CA_DAYS: u32 = 7300;
/// Default leaf validity, in days.
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// Longest leaf validity accepted (the CA/Browser Forum's former ceiling; longer certs outlive their keys' hygiene).
pub const MAX_CERT_DAYS: u32 = 825;
/// Default CRL validity, in days.
pub const DEFAULT_CRL_DAYS: u32 = 7;
/// Longest CRL validity accepted: a longer one would keep a stale list trusted for too long.
pub const MAX_CRL_DAYS: u32 = 365;

/// Certificates and CRLs start this far in the past so that a verifier whose
/// clock is a little behind ours does not see them as not yet valid.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Why a PKI operation failed; every message names the file involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what} {given} is out of range: it must be between {min} and {max}")]
    InvalidDays { what: &'static str, given: u32, min: u32, max: u32 },
    #[error(
        "DNS name {given:?} is not allowed: use letters, digits, '-' and '.', \
         optionally starting with '*.' (at most 253 characters)"
    )]
    InvalidDnsName { given: String },
    #[error("serial {given:?} is not allowed: give it in hex, as `divert ca list` shows it")]
    InvalidSerial { given: String },
    #[error(
        "{dir}: already holds a CA ({file} exists); choose another --dir, \
         or if an earlier init was interrupted remove the directory and run init again"
    )]
    CaExists { dir: PathBuf, file: &'static str },
    #[error("{dir}: no CA here ({file} is missing); create one with `divert ca init --program NAME --dir {dir}`")]
    NotACa { dir: PathBuf, file: &'static str },
    #[error(
        "{path}: another `divert ca` command is changing this CA; \
         wait for it, or if none is running (it was killed) remove {path}"
    )]
    Locked { path: PathBuf },
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error(transparent)]
    Spiffe(#[from] SpiffeError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: cannot be read as {what}: {detail}; restore it from a backup of the CA directory")]
    Corrupt { path: PathBuf, what: &'static str, detail: String },
    #[error(
        "{path}: the CA key does not belong to the CA certificate {cert}; restore the matching pair from a backup"
    )]
    KeyMismatch { path: PathBuf, cert: PathBuf },
    #[error(
        "the CA certificate {path} expires on {ca_not_after}, before the requested certificate would \
         ({not_after}); ask for fewer --days or make a new CA"
    )]
    CaExpiresFirst { path: PathBuf, ca_not_after: String, not_after: String },
    #[error("--out {out} is the CA directory; put leaf keys elsewhere so the CA directory holds only the CA")]
    OutIsCaDir { out: PathBuf },
    #[error(
        "{path}: no unrevoked certificate matches name {name:?}{filter}{already}; see `divert ca list --ca {dir}`"
    )]
    NoMatch { path: PathBuf, dir: PathBuf, name: String, filter: String, already: String },
    #[error("cannot {what}: {source}")]
    Crypto { what: &'static str, source: rcgen::Error },
}

/// Shorthand for turning an `io::Error` into a `PkiError` that names the path.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn crypto(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Crypto { what, source }
}

fn validate_days(what: &'static str, given: u32, max: u32) -> Result<(), PkiError> {
    if (1..=max).contains(&given) {
        Ok(())
    } else {
        Err(PkiError::InvalidDays { what, given, min: 1, max })
    }
}

/// Lowercase and check a DNS SAN; a bad one would otherwise only fail at handshake time.
fn validate_dns(name: &str) -> Result<String, PkiError> {
    let lower = name.to_ascii_lowercase();
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok = !body.is_empty()
        && lower.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(lower)
    } else {
        Err(PkiError::InvalidDnsName { given: name.to_string() })
    }
}

/// `ca.toml`: the CA's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaConfig {
    /// The SPIFFE trust domain every issued ID lives in.
    pub program: String,
    /// Counter forming the low 64 bits of the next serial number.
    pub next_serial: u64,
    /// Number of the CRL last written; the next one gets this plus one.
    pub crl_number: u64,
    /// Validity of a CRL when no `--crl-days` is given.
    pub crl_days: u32,
}

/// One issued certificate in `members.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Serial number, lowercase hex, as in the certificate.
    pub serial: String,
    pub role: Role,
    pub name: String,
    pub spiffe_id: String,
    #[serde(with = "rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(with = "rfc3339_opt")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl Member {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// What `issue` wrote.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub member: Member,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_path: PathBuf,
    pub crl_path: PathBuf,
    /// The DNS/IP names in the certificate.
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// True when no DNS/IP name was given and localhost/127.0.0.1 were put in for a serving role.
    pub default_sans: bool,
    /// True when an earlier cert.pem in the output directory was replaced (rotation).
    pub replaced: bool,
}

// members.json keeps times as RFC 3339 strings so admins can read and grep it;
// the `time` crate is built without its serde feature, hence these adapters.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Now, to the second: X.509 times have no fractions, and the register should
/// hold exactly what the certificate says.
fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now - Duration::nanoseconds(i64::from(now.nanosecond()))
}

/// A serial number: 64 random bits (top bit clear so the DER integer stays
/// positive without padding, first byte nonzero so it is never shortened) then
/// the CA's 64-bit counter. Unique through the counter, unpredictable through
/// the random half.
fn make_serial(counter: u64) -> Vec<u8> {
    let mut high: [u8; 8] = rand::random();
    high[0] = high[0] % 0x7f + 1;
    let mut serial = high.to_vec();
    serial.extend_from_slice(&counter.to_be_bytes());
    serial
}

/// Canonical form of a serial given by an admin: lowercase hex, no colons, no leading zeros.
fn normalize_serial(given: &str) -> Result<String, PkiError> {
    let hex: String = given.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    let hex = hex.strip_prefix("0x").unwrap_or(&hex);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PkiError::InvalidSerial { given: given.to_string() });
    }
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0".to_string() } else { trimmed.to_string() })
}

/// Held while one command changes a CA directory; removed on drop.
struct CaLock {
    path: PathBuf,
}

impl CaLock {
    fn acquire(dir: &Path) -> Result<Self, PkiError> {
        let path = dir.join(LOCK_FILE);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                // The pid helps an admin judge whether a leftover lock is stale.
                let _ = writeln!(f, "{}", std::process::id());
                Ok(CaLock { path })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(PkiError::Locked { path }),
            Err(e) => Err(PkiError::Io { path, source: e }),
        }
    }
}

impl Drop for CaLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The CA loaded for signing.
struct LoadedCa {
    dir: PathBuf,
    config: CaConfig,
    /// The CA certificate as written at init (this is what is copied out for trust).
    pem: String,
    /// A re-signed twin of the CA certificate (same subject, key and key identifier):
    /// rcgen needs a `Certificate` as issuer, and only the subject and key matter for that.
    issuer: rcgen::Certificate,
    key: KeyPair,
    not_after: OffsetDateTime,
}

fn require_file(dir: &Path, file: &'static str) -> Result<PathBuf, PkiError> {
    let path = dir.join(file);
    if path.exists() {
        Ok(path)
    } else {
        Err(PkiError::NotACa { dir: dir.to_path_buf(), file })
    }
}

/// Read `ca.toml`.
pub fn ca_config(dir: &Path) -> Result<CaConfig, PkiError> {
    let path = require_file(dir, CA_CONFIG_FILE)?;
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    toml::from_str(&text).map_err(|e| PkiError::Corrupt { path, what: "the CA configuration", detail: e.to_string() })
}

fn write_config(dir: &Path, config: &CaConfig) -> Result<(), PkiError> {
    let path = dir.join(CA_CONFIG_FILE);
    let text = toml::to_string(config).map_err(|e| PkiError::Corrupt {
        path: path.clone(),
        what: "the CA configuration",
        detail: e.to_string(),
    })?;
    let body = format!("# divert CA bookkeeping: edited by `divert ca`, do not change by hand.\n{text}");
    Ok(fsutil::write_public(&path, body.as_bytes())?)
}

fn load_ca(dir: &Path) -> Result<LoadedCa, PkiError> {
    let config = ca_config(dir)?;
    let cert_path = require_file(dir, CA_CERT_FILE)?;
    let key_path = require_file(dir, CA_KEY_FILE)?;
    let pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    let corrupt_cert =
        |detail: String| PkiError::Corrupt { path: cert_path.clone(), what: "a PEM CA certificate", detail };

    let key_bytes = Zeroizing::new(fsutil::read_secret(&key_path)?);
    let key_text = std::str::from_utf8(&key_bytes).map_err(|e| PkiError::Corrupt {
        path: key_path.clone(),
        what: "a PEM private key",
        detail: e.to_string(),
    })?;
    let key = KeyPair::from_pem(key_text).map_err(|e| PkiError::Corrupt {
        path: key_path.clone(),
        what: "a PEM private key",
        detail: e.to_string(),
    })?;

    let (_, parsed_pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| corrupt_cert(e.to_string()))?;
    let parsed = parsed_pem.parse_x509().map_err(|e| corrupt_cert(e.to_string()))?;
    // Signing with a key that is not the CA's would produce certificates nobody
    // can verify; catch a mixed-up pair here rather than at every handshake.
    if parsed.public_key().raw != key.public_key_der().as_slice() {
        return Err(PkiError::KeyMismatch { path: key_path, cert: cert_path });
    }
    let not_after = parsed.validity().not_after.to_datetime();

    let params = CertificateParams::from_ca_cert_pem(&pem).map_err(|e| corrupt_cert(e.to_string()))?;
    if !matches!(params.is_ca, IsCa::Ca(_)) {
        return Err(corrupt_cert("it is not a CA certificate (basicConstraints CA is not set)".to_string()));
    }
    let issuer = params.self_signed(&key).map_err(crypto("load the CA certificate for signing"))?;
    Ok(LoadedCa { dir: dir.to_path_buf(), config, pem, issuer, key, not_after })
}

/// Read `members.json`.
pub fn members(ca_dir: &Path) -> Result<Vec<Member>, PkiError> {
    let path = require_file(ca_dir, MEMBERS_FILE)?;
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text).map_err(|e| PkiError::Corrupt {
        path,
        what: "the register of issued certificates",
        detail: e.to_string(),
    })
}

fn write_members(dir: &Path, members: &[Member]) -> Result<(), PkiError> {
    let path = dir.join(MEMBERS_FILE);
    let mut text = serde_json::to_string_pretty(members).map_err(|e| PkiError::Corrupt {
        path: path.clone(),
        what: "the register of issued certificates",
        detail: e.to_string(),
    })?;
    text.push('\n');
    Ok(fsutil::write_public(&path, text.as_bytes())?)
}

/// Sign a CRL listing every revoked member.
fn build_crl(ca: &LoadedCa, members: &[Member], crl_number: u64, crl_days: u32) -> Result<String, PkiError> {
    let now = now_seconds();
    let mut revoked_certs = Vec::new();
    for m in members {
        let Some(at) = m.revoked_at else { continue };
        let serial = crate::hex::decode(&m.serial).ok_or_else(|| PkiError::Corrupt {
            path: ca.dir.join(MEMBERS_FILE),
            what: "the register of issued certificates",
            detail: format!("serial {:?} of {} is not hex", m.serial, m.spiffe_id),
        })?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: at,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        // Back-dated like certificates, so a verifier with a slow clock does not find it "not yet valid".
        this_update: now - CLOCK_SKEW,
        next_update: now + Duration::days(i64::from(crl_days)),
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        // The same identifier the CA certificate carries, so the CRL's AKI matches ca.pem's SKI.
        key_identifier_method: ca.issuer.params().key_identifier_method.clone(),
    };
    let crl = params.signed_by(&ca.issuer, &ca.key).map_err(crypto("sign the CRL"))?;
    crl.pem().map_err(crypto("encode the CRL"))
}

/// Make a new CA in `dir` for program `program`, valid `days` days.
pub fn init_ca(dir: &Path, program: &str, days: u32) -> Result<(), PkiError> {
    validate_program(program)?;
    validate_days("CA validity (--days)", days, MAX_CA_DAYS)?;
    for file in [CA_KEY_FILE, CA_CERT_FILE, CA_CONFIG_FILE, MEMBERS_FILE] {
        if dir.join(file).exists() {
            return Err(PkiError::CaExists { dir: dir.to_path_buf(), file });
        }
    }
    fsutil::create_private_dir(dir)?;
    let _lock = CaLock::acquire(dir)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto("generate the CA key"))?;
    let now = now_seconds();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{program} divert CA"));
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - CLOCK_SKEW;
    let not_after = now + Duration::days(i64::from(days));
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&make_serial(0)));
    let cert = params.self_signed(&key).map_err(crypto("sign the CA certificate"))?;
    let pem = cert.pem();

    let config = CaConfig { program: program.to_string(), next_serial: 1, crl_number: 1, crl_days: DEFAULT_CRL_DAYS };
    let key_pem = Zeroizing::new(key.serialize_pem());
    fsutil::write_secret(&dir.join(CA_KEY_FILE), key_pem.as_bytes(), false)?;
    fsutil::write_public(&dir.join(CA_CERT_FILE), pem.as_bytes())?;
    write_members(dir, &[])?;
    let ca = LoadedCa { dir: dir.to_path_buf(), config: config.clone(), pem, issuer: cert, key, not_after };
    let crl = build_crl(&ca, &[], config.crl_number, config.crl_days)?;
    fsutil::write_public(&dir.join(CRL_FILE), crl.as_bytes())?;
    // ca.toml last: its presence is what marks the directory as a usable CA.
    write_config(dir, &config)?;
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Issue a new key and certificate for `role`/`name` into `out`.
pub fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    out: &Path,
    days: u32,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<IssuedCert, PkiError> {
    validate_name(name)?;
    validate_days("certificate validity (--days)", days, MAX_CERT_DAYS)?;
    let mut dns: Vec<String> = dns.iter().map(|d| validate_dns(d)).collect::<Result<_, _>>()?;
    let mut ips: Vec<IpAddr> = ips.to_vec();
    let default_sans = role.serves() && dns.is_empty() && ips.is_empty();
    if default_sans {
        // A serving daemon with no name would fail every handshake; localhost
        // makes a single-machine setup work and the caller says so on stderr.
        dns.push("localhost".to_string());
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    if same_dir(ca_dir, out) {
        return Err(PkiError::OutIsCaDir { out: out.to_path_buf() });
    }

    let _lock = CaLock::acquire(ca_dir)?;
    let mut ca = load_ca(ca_dir)?;
    let id = SpiffeId::new(&ca.config.program, role, name)?;
    let now = now_seconds();
    let not_before = now - CLOCK_SKEW;
    let not_after = now + Duration::days(i64::from(days));
    if not_after > ca.not_after {
        return Err(PkiError::CaExpiresFirst {
            path: ca_dir.join(CA_CERT_FILE),
            ca_not_after: format_time(ca.not_after),
            not_after: format_time(not_after),
        });
    }
    let mut register = members(ca_dir)?;

    // Consume the serial before signing, so a crash can never hand the same one out twice.
    let serial = make_serial(ca.config.next_serial);
    ca.config.next_serial = ca.config.next_serial.saturating_add(1);
    write_config(ca_dir, &ca.config)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto("generate the key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{role}/{name}"));
    params.distinguished_name = dn;
    let ia5 = |s: String| Ia5String::try_from(s).map_err(crypto("encode a subjectAltName"));
    params.subject_alt_names.push(SanType::URI(ia5(id.to_string())?));
    for d in &dns {
        params.subject_alt_names.push(SanType::DnsName(ia5(d.clone())?));
    }
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if role.serves() {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &ca.issuer, &ca.key).map_err(crypto("sign the certificate"))?;

    let member = Member {
        serial: crate::hex::encode(&serial),
        role,
        name: name.to_string(),
        spiffe_id: id.to_string(),
        not_before,
        not_after,
        revoked_at: None,
    };
    // Recorded before the files go out: a certificate that exists but is not in
    // the register could never be revoked by name.
    register.push(member.clone());
    write_members(ca_dir, &register)?;

    let crl_src = ca_dir.join(CRL_FILE);
    let crl = fs::read(&crl_src).map_err(io_err(&crl_src))?;
    if !out.exists() {
        fsutil::create_private_dir(out)?;
    }
    let cert_path = out.join(CERT_FILE);
    let key_path = out.join(KEY_FILE);
    let ca_path = out.join(CA_CERT_FILE);
    let crl_path = out.join(CRL_FILE);
    let replaced = cert_path.exists();
    let key_pem = Zeroizing::new(key.serialize_pem());
    // Each file is replaced atomically; the key goes first so that a reader
    // never pairs a new certificate with the key of the old one for long.
    fsutil::write_secret(&key_path, key_pem.as_bytes(), true)?;
    fsutil::write_public(&cert_path, cert.pem().as_bytes())?;
    fsutil::write_public(&ca_path, ca.pem.as_bytes())?;
    fsutil::write_public(&crl_path, &crl)?;
    Ok(IssuedCert { member, cert_path, key_path, ca_path, crl_path, dns, ips, default_sans, replaced })
}

/// Revoke every unrevoked certificate named `name` (narrowed by `role` and
/// `serial` when given) and rewrite the CRL valid `crl_days` days.
pub fn revoke(
    ca_dir: &Path,
    name: &str,
    role: Option<Role>,
    serial: Option<&str>,
    crl_days: u32,
) -> Result<Vec<Member>, PkiError> {
    validate_name(name)?;
    validate_days("CRL validity (--crl-days)", crl_days, MAX_CRL_DAYS)?;
    let serial = serial.map(normalize_serial).transpose()?;
    let _lock = CaLock::acquire(ca_dir)?;
    let mut ca = load_ca(ca_dir)?;
    let mut register = members(ca_dir)?;
    let now = now_seconds();
    let mut revoked = Vec::new();
    let mut already = 0usize;
    for m in register.iter_mut() {
        let matches = m.name == name
            && role.map_or(true, |r| r == m.role)
            && serial.as_ref().map_or(true, |s| normalize_serial(&m.serial).is_ok_and(|ms| &ms == s));
        if matches && m.is_revoked() {
            already += 1;
        } else if matches {
            m.revoked_at = Some(now);
            revoked.push(m.clone());
        }
    }
    if revoked.is_empty() {
        let mut filter = String::new();
        if let Some(r) = role {
            filter.push_str(&format!(" with role {r}"));
        }
        if let Some(s) = &serial {
            filter.push_str(&format!(" with serial {s}"));
        }
        return Err(PkiError::NoMatch {
            path: ca_dir.join(MEMBERS_FILE),
            dir: ca_dir.to_path_buf(),
            name: name.to_string(),
            filter,
            already: if already > 0 { format!(" ({already} matching already revoked)") } else { String::new() },
        });
    }
    ca.config.crl_number = ca.config.crl_number.saturating_add(1);
    let crl = build_crl(&ca, &register, ca.config.crl_number, crl_days)?;
    // Register first: if we stop before crl.pem is written, `divert ca crl`
    // rebuilds the list from the register and nothing revoked is lost.
    write_members(ca_dir, &register)?;
    write_config(ca_dir, &ca.config)?;
    fsutil::write_public(&ca_dir.join(CRL_FILE), crl.as_bytes())?;
    Ok(revoked)
}

/// Re-issue the CRL (same revocations, new number, fresh next_update `crl_days` ahead).
pub fn refresh_crl(ca_dir: &Path, crl_days: u32) -> Result<(), PkiError> {
    validate_days("CRL validity (--crl-days)", crl_days, MAX_CRL_DAYS)?;
    let _lock = CaLock::acquire(ca_dir)?;
    let mut ca = load_ca(ca_dir)?;
    let register = members(ca_dir)?;
    ca.config.crl_number = ca.config.crl_number.saturating_add(1);
    let crl = build_crl(&ca, &register, ca.config.crl_number, crl_days)?;
    write_config(ca_dir, &ca.config)?;
    fsutil::write_public(&ca_dir.join(CRL_FILE), crl.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_rules() {
        assert_eq!(validate_dns("Steward.Example.org").unwrap(), "steward.example.org");
        assert_eq!(validate_dns("*.example.org").unwrap(), "*.example.org");
        for bad in ["", "a..b", "-a.b", "a b", "a_b", "*."] {
            assert!(validate_dns(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serials_are_positive_unique_and_normalized() {
        let a = make_serial(1);
        let b = make_serial(2);
        assert_eq!(a.len(), 16);
        assert!(a[0] >= 1 && a[0] < 0x80);
        assert_ne!(a, b);
        assert_eq!(crate::hex::decode(&crate::hex::encode(&a)).unwrap(), a);
        assert_eq!(normalize_serial("00:AB:0c").unwrap(), "ab0c");
        assert_eq!(normalize_serial("0xab0c").unwrap(), "ab0c");
        assert!(normalize_serial("xyz").is_err());
        assert!(crate::hex::decode("abc").is_none());
    }

    #[test]
    fn member_json_round_trips() {
        let t = now_seconds();
        let m = Member {
            serial: "0102".into(),
            role: Role::Evaluator,
            name: "uni".into(),
            spiffe_id: "spiffe://p/evaluator/uni".into(),
            not_before: t,
            not_after: t + Duration::days(1),
            revoked_at: None,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains("\"revoked_at\":null"), "{text}");
        assert_eq!(serde_json::from_str::<Member>(&text).unwrap(), m);
        let r = Member { revoked_at: Some(t), ..m };
        assert_eq!(serde_json::from_str::<Member>(&serde_json::to_string(&r).unwrap()).unwrap(), r);
    }
}
