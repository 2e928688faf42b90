//! The program's PKI end to end: `divert ca` on real files, checked with rustls, x509-parser and openssl.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use divert::pki::{self, PkiError, Role, SpiffeId};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

const PROGRAM: &str = "santa-fe-lead";

fn divert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_divert")).args(args).output().expect("run divert")
}

/// Run divert and insist it succeeded; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let out = divert(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "divert {args:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Run divert and insist it failed; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = divert(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "divert {args:?} unexpectedly succeeded");
    stderr
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

fn crl_der(path: &Path) -> CertificateRevocationListDer<'static> {
    CertificateRevocationListDer::from_pem_file(path).unwrap()
}

/// A fresh CA made through the library.
fn new_ca() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    pki::init_ca(&ca, PROGRAM, 30).unwrap();
    (tmp, ca)
}

fn ski(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let found = cert.iter_extensions().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    });
    found
}

fn aki(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let found = cert.iter_extensions().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(k) => k.key_identifier.as_ref().map(|k| k.0.to_vec()),
        _ => None,
    });
    found
}

/// (serverAuth, clientAuth) of a certificate's extended key usage.
fn eku(der: &[u8]) -> (bool, bool) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let eku = cert.extended_key_usage().unwrap().expect("EKU present").value;
    (eku.server_auth, eku.client_auth)
}

fn client_verifier(ca_dir: &Path) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_der(&ca_dir.join("ca.pem"))).unwrap();
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(rustls::crypto::ring::default_provider()))
        .with_crls(vec![crl_der(&ca_dir.join("crl.pem"))])
        .build()
        .unwrap()
}

/// `openssl verify -CAfile ca.pem -crl_check -CRLfile crl.pem cert.pem` succeeded?
fn openssl_verify(ca_dir: &Path, cert: &Path) -> bool {
    Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca_dir.join("ca.pem"))
        .arg("-crl_check")
        .arg("-CRLfile")
        .arg(ca_dir.join("crl.pem"))
        .arg(cert)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn cli_init_and_issue_each_role() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let (stdout, _) = ok(&["ca", "init", "--program", PROGRAM, "--dir", p(&ca)]);
    assert!(stdout.contains(PROGRAM), "{stdout}");
    for f in ["ca.pem", "ca.key", "ca.toml", "members.json", "crl.pem"] {
        assert!(ca.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    assert_eq!(mode(&ca), 0o700);
    let ca_der = cert_der(&ca.join("ca.pem"));
    let ca_ski = ski(&ca_der).expect("CA has a subject key identifier");

    // A second init into the same directory must not clobber the CA.
    let err = fails(&["ca", "init", "--program", PROGRAM, "--dir", p(&ca)]);
    assert!(err.contains("already holds a CA"), "{err}");

    for (role, name, serves) in [("source", "police", true), ("steward", "broker", true), ("evaluator", "unm", false)] {
        let out = tmp.path().join(name);
        let (stdout, stderr) = ok(&["ca", "issue", "--ca", p(&ca), "--role", role, "--name", name, "--out", p(&out)]);
        let id = format!("spiffe://{PROGRAM}/{role}/{name}");
        assert!(stdout.contains(&id), "{stdout}");
        // Serving roles get localhost by default and are told so; evaluators serve nothing.
        assert_eq!(stderr.contains("localhost"), serves, "{stderr}");
        for f in ["cert.pem", "key.pem", "ca.pem", "crl.pem"] {
            assert!(out.join(f).is_file(), "{role}: {f} missing");
        }
        assert_eq!(mode(&out.join("key.pem")), 0o600);
        assert!(fs::read_to_string(out.join("key.pem")).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!stdout.contains("PRIVATE KEY"), "key material printed");
        assert_eq!(fs::read(out.join("ca.pem")).unwrap(), fs::read(ca.join("ca.pem")).unwrap());

        let der = cert_der(&out.join("cert.pem"));
        let got = pki::spiffe_id_of(&der).unwrap();
        assert_eq!(got, id.parse::<SpiffeId>().unwrap());
        assert_eq!(got.to_string(), id);
        assert_eq!(aki(&der).as_ref(), Some(&ca_ski), "{role}: AKI does not match the CA's SKI");
        assert_eq!(eku(&der), (serves, true), "{role}: EKU");
        let not_after = pki::cert_not_after(&der).unwrap();
        let left = not_after - time::OffsetDateTime::now_utc();
        assert!(left.whole_days() >= 364 && left.whole_days() <= 365, "{left}");
    }
    let members = pki::members(&ca).unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.revoked_at.is_none()));
}

#[test]
fn issue_with_explicit_names_and_crl_aki() {
    let (tmp, ca) = new_ca();
    let out = tmp.path().join("steward");
    let issued = pki::issue(
        &ca,
        Role::Steward,
        "broker",
        &out,
        10,
        &["Steward.Example.org".to_string()],
        &["10.0.0.7".parse().unwrap()],
    )
    .unwrap();
    assert!(!issued.default_sans);
    assert!(!issued.replaced);
    assert_eq!(issued.dns, vec!["steward.example.org".to_string()]);
    let der = cert_der(&out.join("cert.pem"));
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let shown: Vec<String> = san.general_names.iter().map(|g| g.to_string()).collect();
    assert!(shown.iter().any(|s| s.contains("steward.example.org")), "{shown:?}");
    assert!(!shown.iter().any(|s| s.contains("localhost")), "{shown:?}");
    assert_eq!(cert.subject().to_string(), "CN=steward/broker");

    // The CRL names the CA by the same key identifier as ca.pem.
    let ca_ski = ski(&cert_der(&ca.join("ca.pem"))).unwrap();
    let crl_bytes = crl_der(&ca.join("crl.pem"));
    let (_, crl) =
        <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(
            &crl_bytes,
        )
        .unwrap();
    let crl_aki = crl.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(k) => {
            k.key_identifier.as_ref().map(|k| k.0.to_vec())
        }
        _ => None,
    });
    assert_eq!(crl_aki, Some(ca_ski));

    // The CA was made for 30 days: a certificate outliving it is refused.
    let err = pki::issue(&ca, Role::Source, "police", &tmp.path().join("p"), 60, &[], &[]).unwrap_err();
    assert!(matches!(err, PkiError::CaExpiresFirst { .. }), "{err}");
}

#[test]
fn loose_ca_key_is_refused_naming_the_file() {
    let (tmp, ca) = new_ca();
    let key = ca.join("ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = pki::issue(&ca, Role::Source, "police", &tmp.path().join("police"), 10, &[], &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(p(&key)), "{msg}");
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(!tmp.path().join("police").exists(), "nothing may be written when the CA key is refused");

    let stderr = fails(&[
        "ca",
        "issue",
        "--ca",
        p(&ca),
        "--role",
        "source",
        "--name",
        "police",
        "--out",
        p(&tmp.path().join("police")),
    ]);
    assert!(stderr.contains(p(&key)), "{stderr}");
}

#[test]
fn rustls_accepts_then_refuses_after_revoke() {
    let (tmp, ca) = new_ca();
    let out = tmp.path().join("unm");
    pki::issue(&ca, Role::Evaluator, "unm", &out, 10, &[], &[]).unwrap();
    let other = tmp.path().join("jail");
    pki::issue(&ca, Role::Source, "jail", &other, 10, &[], &[]).unwrap();
    let leaf = cert_der(&out.join("cert.pem"));
    let jail = cert_der(&other.join("cert.pem"));

    client_verifier(&ca).verify_client_cert(&leaf, &[], UnixTime::now()).expect("issued client cert accepted");

    let revoked = pki::revoke(&ca, "unm", None, None, 7).unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].role, Role::Evaluator);

    let err = client_verifier(&ca).verify_client_cert(&leaf, &[], UnixTime::now()).unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)),
        "expected Revoked, got {err:?}"
    );
    // Revocation is per certificate: the others still pass.
    client_verifier(&ca).verify_client_cert(&jail, &[], UnixTime::now()).expect("unrevoked cert still accepted");
}

#[test]
fn openssl_verifies_before_and_refuses_after_revoke() {
    let (tmp, ca) = new_ca();
    let out = tmp.path().join("police");
    pki::issue(&ca, Role::Source, "police", &out, 10, &[], &[]).unwrap();
    crate::util::require_tool("openssl", "version");
    assert!(openssl_verify(&ca, &out.join("cert.pem")), "openssl refused a fresh certificate");
    ok(&["ca", "revoke", "--ca", p(&ca), "--name", "police", "--role", "source"]);
    assert!(!openssl_verify(&ca, &out.join("cert.pem")), "openssl accepted a revoked certificate");
}

#[test]
fn bad_names_program_and_days_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let too_long = "x".repeat(64);
    for program in ["Santa-Fe", "santa fe", "", "a/b", too_long.as_str()] {
        let err = fails(&["ca", "init", "--program", program, "--dir", p(&ca)]);
        assert!(err.contains("lowercase a-z, 0-9"), "{program:?}: {err}");
        assert!(!ca.join("ca.key").exists());
    }
    let err = fails(&["ca", "init", "--program", PROGRAM, "--dir", p(&ca), "--days", "0"]);
    assert!(err.contains("between 1 and"), "{err}");

    ok(&["ca", "init", "--program", PROGRAM, "--dir", p(&ca)]);
    let out = tmp.path().join("out");
    for name in ["Police", "po.lice", "a/b", "", too_long.as_str()] {
        let err = fails(&["ca", "issue", "--ca", p(&ca), "--role", "source", "--name", name, "--out", p(&out)]);
        assert!(err.contains("lowercase a-z, 0-9, '-' and '_'"), "{name:?}: {err}");
    }
    for days in ["0", "826"] {
        let err = fails(&[
            "ca",
            "issue",
            "--ca",
            p(&ca),
            "--role",
            "source",
            "--name",
            "x",
            "--out",
            p(&out),
            "--days",
            days,
        ]);
        assert!(err.contains("between 1 and 825"), "{days}: {err}");
    }
    let err = fails(&["ca", "issue", "--ca", p(&ca), "--role", "admin", "--name", "x", "--out", p(&out)]);
    assert!(err.contains("source") && err.contains("evaluator"), "{err}");
    let err =
        fails(&["ca", "issue", "--ca", p(&ca), "--role", "steward", "--name", "x", "--out", p(&out), "--dns", "a b"]);
    assert!(err.contains("DNS name"), "{err}");
    assert!(!out.exists(), "nothing written for refused requests");
    assert!(pki::members(&ca).unwrap().is_empty());

    // Issuing into the CA directory itself would mix leaf keys with the CA's.
    let err = pki::issue(&ca, Role::Evaluator, "x", &ca, 10, &[], &[]).unwrap_err();
    assert!(matches!(err, PkiError::OutIsCaDir { .. }), "{err}");

    let err = fails(&["ca", "revoke", "--ca", p(&ca), "--name", "nobody"]);
    assert!(err.contains("no unrevoked certificate"), "{err}");
    let err = fails(&["ca", "list", "--ca", p(&tmp.path().join("nowhere"))]);
    assert!(err.contains("divert ca init"), "{err}");
}

#[test]
fn list_json_shows_revoked() {
    let (tmp, ca) = new_ca();
    pki::issue(&ca, Role::Evaluator, "unm", &tmp.path().join("unm"), 10, &[], &[]).unwrap();
    pki::issue(&ca, Role::Source, "police", &tmp.path().join("police"), 10, &[], &[]).unwrap();
    ok(&["ca", "revoke", "--ca", p(&ca), "--name", "unm"]);

    let (stdout, _) = ok(&["ca", "list", "--ca", p(&ca), "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let unm = rows.iter().find(|r| r["name"] == "unm").unwrap();
    assert_eq!(unm["status"], "revoked");
    assert_eq!(unm["role"], "evaluator");
    assert!(unm["revoked_at"].is_string());
    assert_eq!(unm["spiffe_id"], format!("spiffe://{PROGRAM}/evaluator/unm"));
    let police = rows.iter().find(|r| r["name"] == "police").unwrap();
    assert_eq!(police["status"], "valid");
    assert!(police["revoked_at"].is_null());
    assert!(police["days_left"].as_i64().unwrap() >= 9);

    let (table, _) = ok(&["ca", "list", "--ca", p(&ca)]);
    assert!(table.contains("revoked"), "{table}");
    assert!(table.contains("police"), "{table}");

    // Revoking again finds nothing left to revoke, and says why.
    let err = fails(&["ca", "revoke", "--ca", p(&ca), "--name", "unm"]);
    assert!(err.contains("already revoked"), "{err}");
}

#[test]
fn reissue_rotates_atomically_and_records_both_serials() {
    let (tmp, ca) = new_ca();
    let out = tmp.path().join("police");
    let first = pki::issue(&ca, Role::Source, "police", &out, 10, &[], &[]).unwrap();
    let key1 = fs::read(out.join("key.pem")).unwrap();
    let cert1 = fs::read(out.join("cert.pem")).unwrap();
    let second = pki::issue(&ca, Role::Source, "police", &out, 10, &[], &[]).unwrap();
    assert!(second.replaced);
    assert_ne!(first.member.serial, second.member.serial);
    assert_ne!(fs::read(out.join("key.pem")).unwrap(), key1, "rotation must make a new key");
    assert_ne!(fs::read(out.join("cert.pem")).unwrap(), cert1);
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    // No temporary files left behind by the atomic replace.
    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["ca.pem", "cert.pem", "crl.pem", "key.pem"]);

    let members = pki::members(&ca).unwrap();
    let serials: Vec<&str> = members.iter().filter(|m| m.name == "police").map(|m| m.serial.as_str()).collect();
    assert_eq!(serials, [first.member.serial.as_str(), second.member.serial.as_str()]);
    // The serial in the register is the one in the certificate.
    let der = cert_der(&out.join("cert.pem"));
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial_hex: String = cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(serial_hex, second.member.serial);

    // Revoking only the old serial leaves the new certificate working.
    let upper = first.member.serial.to_uppercase();
    let revoked = pki::revoke(&ca, "police", Some(Role::Source), Some(&upper), 7).unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial, first.member.serial);
    client_verifier(&ca).verify_client_cert(&cert_der(&out.join("cert.pem")), &[], UnixTime::now()).unwrap();
}

#[test]
fn crl_refresh_bumps_number_and_next_update() {
    let (_tmp, ca) = new_ca();
    let number = |ca: &Path| {
        let der = crl_der(&ca.join("crl.pem"));
        let (_, crl) =
            <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(
                &der,
            )
            .unwrap();
        let n = crl.crl_number().unwrap().to_string();
        let next = crl.next_update().unwrap().to_datetime();
        (n, next)
    };
    let (n1, _) = number(&ca);
    assert_eq!(n1, "1");
    ok(&["ca", "crl", "--ca", p(&ca), "--crl-days", "3"]);
    let (n2, next) = number(&ca);
    assert_eq!(n2, "2");
    let ahead = next - time::OffsetDateTime::now_utc();
    assert!(ahead.whole_hours() >= 71 && ahead.whole_hours() <= 72, "{ahead}");
    let err = fails(&["ca", "crl", "--ca", p(&ca), "--crl-days", "0"]);
    assert!(err.contains("between 1 and 365"), "{err}");
    assert_eq!(pki::ca_config(&ca).unwrap().crl_number, 2);
    assert!(!ca.join(pki::LOCK_FILE).exists(), "lock released");
}
