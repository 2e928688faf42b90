//! Helpers for the network tests: a PKI per test run, a steward run in-process, mTLS clients (hyper and raw), odd certificates and CRLs made with rcgen, made-up records.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use divert::config::{Config, RoleConfig, StewardConfig};
use divert::daemon::Context;
use divert::pki::{self, Role};
use divert::record::PseudoRecord;
use divert::steward::Steward;
use divert::tls::{TlsMaterial, TlsPaths};
use divert::wire::{Batch, BATCH_PATH};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Ia5String,
    IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The program every test PKI is made for.
pub const PROGRAM: &str = "test-lead";

/// A CA made for one test, and the certificates issued from it, under `root`.
pub struct Pki {
    pub root: PathBuf,
    pub ca: PathBuf,
}

impl Pki {
    /// Make a CA in `<root>/ca` (library calls, no binary needed).
    pub fn new(root: &Path) -> Pki {
        let ca = root.join("ca");
        pki::init_ca(&ca, PROGRAM, 365).expect("init CA");
        Pki { root: root.to_path_buf(), ca }
    }

    /// Issue `role`/`name` into `<root>/certs/<role>-<name>` and return that directory.
    pub fn issue(&self, role: Role, name: &str) -> PathBuf {
        let out = self.root.join("certs").join(format!("{role}-{name}"));
        self.issue_into(role, name, &out);
        out
    }

    /// Issue `role`/`name` into `out` (cert.pem, key.pem, ca.pem, crl.pem).
    pub fn issue_into(&self, role: Role, name: &str, out: &Path) {
        pki::issue(&self.ca, role, name, out, 30, &[], &[]).expect("issue certificate");
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.ca.join(pki::CA_CERT_FILE)
    }

    /// The CA as an rcgen issuer, to sign odd certificates and CRLs the CLI would refuse to make.
    pub fn issuer(&self) -> (rcgen::Certificate, KeyPair) {
        let pem = std::fs::read_to_string(self.ca_pem()).expect("read ca.pem");
        let key_pem = std::fs::read_to_string(self.ca.join(pki::CA_KEY_FILE)).expect("read ca.key");
        let key = KeyPair::from_pem(&key_pem).expect("parse ca.key");
        let params = CertificateParams::from_ca_cert_pem(&pem).expect("parse ca.pem");
        let issuer = params.self_signed(&key).expect("rebuild issuer");
        (issuer, key)
    }

    /// A client certificate signed by this CA with any validity and SPIFFE ID,
    /// written as `cert.pem`/`key.pem` into `out`.
    pub fn custom_cert(&self, out: &Path, spiffe: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) {
        self.custom_cert_with(out, spiffe, not_before, not_after, vec![ExtendedKeyUsagePurpose::ClientAuth], None);
    }

    /// Like [`Pki::custom_cert`], with any extended key usages (none: no
    /// extension at all) and, for a server, a DNS name.
    pub fn custom_cert_with(
        &self,
        out: &Path,
        spiffe: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        dns: Option<&str>,
    ) {
        let (issuer, ca_key) = self.issuer();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "odd test certificate");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(spiffe.to_string()).expect("ia5"))];
        if let Some(d) = dns {
            params.subject_alt_names.push(SanType::DnsName(Ia5String::try_from(d.to_string()).expect("ia5")));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&[0x42, rand_byte(), rand_byte(), rand_byte()]));
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &issuer, &ca_key).expect("sign");
        std::fs::create_dir_all(out).expect("mkdir");
        write_file(&out.join(pki::CERT_FILE), cert.pem().as_bytes(), 0o644);
        write_file(&out.join(pki::KEY_FILE), key.serialize_pem().as_bytes(), 0o600);
    }

    /// A CRL of this CA (no revocations) whose next-update is already past.
    pub fn stale_crl_pem(&self) -> String {
        let (issuer, ca_key) = self.issuer();
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::days(3),
            next_update: now - time::Duration::days(1),
            crl_number: SerialNumber::from(1_000_000u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: issuer.params().key_identifier_method.clone(),
        };
        params.signed_by(&issuer, &ca_key).expect("sign CRL").pem().expect("CRL pem")
    }
}

fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() & 0x7f) as u8
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).expect("create file");
    f.write_all(bytes).expect("write file");
}

pub fn tls_paths(dir: &Path) -> TlsPaths {
    TlsPaths {
        cert: dir.join(pki::CERT_FILE),
        key: dir.join(pki::KEY_FILE),
        ca: dir.join(pki::CA_CERT_FILE),
        crl: dir.join(pki::CRL_FILE),
        min_version: Default::default(),
    }
}

/// The text of a steward config whose TLS files are in `tls_dir`, data in `data_dir`.
/// `extra` is appended to the `[steward]` table (e.g. `max_body_bytes = 4096`).
pub fn steward_config_text(tls_dir: &Path, data_dir: &Path, listen: &str, extra: &str) -> String {
    steward_config_text_with_tls(tls_dir, data_dir, listen, "", extra)
}

/// Like [`steward_config_text`], with `tls_extra` appended to the `[tls]` table (e.g. `min_version = "1.2"`).
pub fn steward_config_text_with_tls(
    tls_dir: &Path,
    data_dir: &Path,
    listen: &str,
    tls_extra: &str,
    extra: &str,
) -> String {
    let p = |x: &Path| x.display().to_string();
    let t = tls_paths(tls_dir);
    format!(
        r#"role = "steward"
name = "steward"
program = "{PROGRAM}"
data_dir = "{data}"

[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
crl = "{crl}"
{tls_extra}

[steward]
listen = "{listen}"
{extra}
"#,
        data = p(data_dir),
        cert = p(&t.cert),
        key = p(&t.key),
        ca = p(&t.ca),
        crl = p(&t.crl),
    )
}

/// Issue a steward certificate into `<dir>/tls` and write `<dir>/steward.toml`
/// (data in `<dir>/data`, listening on `listen`, e.g. `127.0.0.1:0`); returns
/// the config file. For running `divert serve --config` as a separate process.
pub fn write_steward_config(dir: &Path, pki: &Pki, listen: &str, extra: &str) -> PathBuf {
    let tls = dir.join("tls");
    pki.issue_into(Role::Steward, "steward", &tls);
    let path = dir.join("steward.toml");
    write_file(&path, steward_config_text(&tls, &dir.join("data"), listen, extra).as_bytes(), 0o644);
    path
}

/// The address a steward writes to `<data_dir>/listen.addr`, waiting up to `wait` for it.
pub fn read_listen_addr(data_dir: &Path, wait: Duration) -> Option<SocketAddr> {
    read_bound_addr(&data_dir.join(divert::config::LISTEN_ADDR_FILE), wait)
}

/// The address a daemon wrote to `file` once it bound its port (`IP:PORT`), waiting up to `wait` for it.
pub fn read_bound_addr(file: &Path, wait: Duration) -> Option<SocketAddr> {
    crate::util::poll_until(wait, || std::fs::read_to_string(file).ok()?.trim().parse().ok())
}

/// A steward running in this process, on 127.0.0.1 with port 0.
pub struct TestSteward {
    pub steward: Arc<Steward>,
    pub ctx: Arc<Context>,
    pub tls_tx: watch::Sender<Arc<TlsMaterial>>,
    pub config: Config,
    /// The steward's own TLS files (its CRL is `crl.pem` here).
    pub tls_dir: PathBuf,
    pub addr: SocketAddr,
}

impl TestSteward {
    /// Issue a steward certificate into `<dir>/tls` (unless there) and start a steward with data in `<dir>/data`.
    pub async fn start(pki: &Pki, dir: &Path, extra: &str) -> TestSteward {
        let st = TestSteward::try_start(pki, dir, extra).await.expect("start steward");
        let written = read_listen_addr(&st.config.data_dir, Duration::from_secs(1)).expect("listen.addr");
        assert_eq!(written, st.addr);
        st
    }

    pub fn steward_config(&self) -> StewardConfig {
        match &self.config.role {
            RoleConfig::Steward(s) => s.clone(),
            RoleConfig::Source(_) => unreachable!(),
        }
    }

    /// What SIGHUP does: load the TLS files again and publish them.
    pub fn reload(&self) {
        let m = TlsMaterial::load(&self.config.tls, Some(&self.config.spiffe_id)).expect("reload TLS material");
        self.tls_tx.send_replace(Arc::new(m));
    }

    /// Stop as the daemon does: cancel, drain, flush.
    pub async fn stop(self) {
        self.ctx.shutdown.cancel();
        self.ctx.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.ctx.tracker.wait()).await.expect("steward drained");
        self.steward.close().await;
    }

    /// Wait (up to 5 s) until the steward has counted `n` refusals in total;
    /// refusals are counted just after the peer is told, so a client can see its error first.
    pub async fn wait_refusals(&self, n: u64) {
        crate::util::wait_until_async(Duration::from_secs(5), &format!("{n} refusals"), || {
            let have = self.steward.refusals_total();
            crate::util::holds(have >= n, || format!("{have}: {}", self.steward.status()))
        })
        .await;
    }

    pub fn record_count(&self) -> usize {
        let mut n = 0;
        for r in self.steward.records() {
            r.expect("stored record");
            n += 1;
        }
        n
    }
}

/// A client TLS config trusting `ca_pem`, presenting the certificate in `cert_dir` (if any).
pub fn client_config(ca_pem: &Path, cert_dir: Option<&Path>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).expect("ca pem") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("verifier");
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_webpki_verifier(verifier);
    let mut cfg = match cert_dir {
        None => builder.with_no_client_auth(),
        Some(dir) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join(pki::CERT_FILE))
                .expect("cert pem")
                .collect::<Result<_, _>>()
                .expect("cert");
            let key = PrivateKeyDer::from_pem_file(dir.join(pki::KEY_FILE)).expect("key pem");
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// TCP + TLS to the steward (named `localhost` in its certificate).
pub async fn tls_connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))
}

/// An HTTP/1.1 connection to the steward (hyper client).
pub struct Client {
    send: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<Client, String> {
        let tls = tls_connect(addr, cfg).await?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("http: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { send, driver })
    }

    /// Send one request; the response status and body. Any failure (TLS alert, closed connection) is an `Err`.
    pub async fn request(&mut self, method: &str, path: &str, body: Vec<u8>) -> Result<(StatusCode, Vec<u8>), String> {
        self.request_typed(method, path, "application/json", body).await
    }

    /// [`Client::request`] with a body of content type `content_type`.
    pub async fn request_typed(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        self.send.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = self.send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
        Ok((status, body.to_vec()))
    }

    pub async fn post_batch(&mut self, batch: &Batch) -> Result<(StatusCode, Vec<u8>), String> {
        self.request("POST", BATCH_PATH, serde_json::to_vec(batch).expect("encode batch")).await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connect, post one batch, return status and body.
pub async fn post_batch(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    batch: &Batch,
) -> Result<(StatusCode, Vec<u8>), String> {
    Client::connect(addr, cfg).await?.post_batch(batch).await
}

/// Write raw bytes over TLS and read one HTTP response (head and a
/// Content-Length body); returns (status, head, body).
pub async fn raw_exchange(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    request: &[u8],
) -> Result<(u16, String, Vec<u8>), String> {
    let mut tls = tls_connect(addr, cfg).await?;
    tls.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    read_response(&mut tls).await
}

/// Read one HTTP/1.1 response with a Content-Length body.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<(u16, String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| "response timed out".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed before a response ({} bytes)", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((status, head, body))
}

/// `n` made-up records of `source` that fit the default schema's `arrest` kind (tokens `1:<32 hex>`), distinct by `rid`.
pub fn fake_records(source: &str, start: u64, n: u64) -> Vec<PseudoRecord> {
    (start..start + n)
        .map(|i| PseudoRecord {
            source: source.to_string(),
            kind: "arrest".to_string(),
            line: i + 2,
            epoch: 1,
            rid: format!("{:016x}{:016x}", i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            seq: 0,
            deleted: false,
            tokens: [
                ("names_dob".to_string(), format!("1:{:032x}", u128::from(i) * 7919)),
                ("family_dob".to_string(), format!("1:{:032x}", u128::from(i) * 104_729)),
                ("state_id".to_string(), format!("1:{:032x}", u128::from(i) * 1_299_709)),
            ]
            .into(),
            fields: [
                ("age".to_string(), serde_json::json!(20 + i % 50)),
                ("sex".to_string(), serde_json::json!(if i % 2 == 0 { "f" } else { "m" })),
                ("arrest_date".to_string(), serde_json::json!(format!("2024-{:02}-{:02}", 1 + i % 12, 1 + i % 28))),
                ("warrant".to_string(), serde_json::json!(i % 3 == 0)),
                ("violent".to_string(), serde_json::json!(i % 7 == 0)),
                ("felony".to_string(), serde_json::json!(i % 5 == 0)),
            ]
            .into(),
        })
        .collect()
}

pub fn batch(source: &str, batch_id: &str, records: Vec<PseudoRecord>) -> Batch {
    Batch { source: source.to_string(), batch_id: batch_id.to_string(), records }
}

/// Captured `tracing` output of the current thread (use with a current-thread runtime).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Start capturing; logs go here until the guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        // tracing caches, per call site, whether anyone listens. While only one
        // dispatcher exists it asks the *current thread's* default, so a call
        // site first reached by another test's thread (no subscriber) would be
        // cached as "never" and our thread-local capture would miss it. A
        // second, permanent dispatcher makes tracing ask every dispatcher.
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// ---- helpers added for the source tests (tests/it/source.rs) ----

impl TestSteward {
    /// Like [`TestSteward::start`], listening on `listen` (e.g. the port of a steward stopped earlier).
    pub async fn start_on(pki: &Pki, dir: &Path, listen: &str, extra: &str) -> TestSteward {
        TestSteward::try_start_on(pki, dir, listen, extra).await.expect("start steward")
    }

    /// Records held, from the steward's counters (cheap enough to poll).
    pub fn records_held(&self) -> u64 {
        self.steward.status()["records"].as_u64().unwrap_or(0)
    }
}

// ---- helpers added for the release tests (tests/it/release.rs) ----

impl TestSteward {
    /// Like [`TestSteward::start`] on port 0, returning the steward's error instead of panicking
    /// (to check that it refuses to start, e.g. on a damaged audit log).
    pub async fn try_start(pki: &Pki, dir: &Path, extra: &str) -> anyhow::Result<TestSteward> {
        TestSteward::try_start_on(pki, dir, "127.0.0.1:0", extra).await
    }

    /// Issue a steward certificate into `<dir>/tls` (unless there) and start a steward
    /// listening on `listen` with data in `<dir>/data`; the steward's error if it refuses to start.
    pub async fn try_start_on(pki: &Pki, dir: &Path, listen: &str, extra: &str) -> anyhow::Result<TestSteward> {
        TestSteward::try_start_full(pki, dir, listen, "", extra).await
    }

    /// Like [`TestSteward::start`], with `tls_extra` in the `[tls]` table.
    pub async fn start_with_tls(pki: &Pki, dir: &Path, tls_extra: &str, extra: &str) -> TestSteward {
        TestSteward::try_start_full(pki, dir, "127.0.0.1:0", tls_extra, extra).await.expect("start steward")
    }

    async fn try_start_full(
        pki: &Pki,
        dir: &Path,
        listen: &str,
        tls_extra: &str,
        extra: &str,
    ) -> anyhow::Result<TestSteward> {
        let tls_dir = dir.join("tls");
        if !tls_dir.join(pki::CERT_FILE).exists() {
            pki.issue_into(Role::Steward, "steward", &tls_dir);
        }
        let cfg_path = dir.join("steward.toml");
        let text = steward_config_text_with_tls(&tls_dir, &dir.join("data"), listen, tls_extra, extra);
        let config = Config::from_toml(&text, &cfg_path).unwrap_or_else(|p| panic!("config: {p:?}"));
        let (ctx, tls_tx) = Context::load(&config).expect("steward TLS material");
        let RoleConfig::Steward(sc) = config.role.clone() else { panic!("not a steward config") };
        let steward = Steward::start(ctx.clone(), sc).await?;
        let addr = steward.local_addr();
        Ok(TestSteward { steward, ctx, tls_tx, config, tls_dir, addr })
    }
}
