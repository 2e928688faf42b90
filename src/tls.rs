//! The rustls adapter: server and client configs for the program's mutual TLS (ring provider, client certificates required, CRLs enforced), and the peer's SPIFFE identity.
//!
//! The only module that builds rustls configs. Everything is loaded from
//! PEM files named in the daemon config, so a SIGHUP reload is "call
//! [`TlsMaterial::load`] again and swap".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};

use crate::fsutil;
use crate::spiffe::{self, Role, SpiffeId};

/// Why TLS material could not be loaded. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error(transparent)]
    Secret(#[from] fsutil::SecretFileError),
    #[error("{path}: {source}")]
    Certificate { path: PathBuf, source: Box<spiffe::SpiffeError> },
    #[error("building the TLS configuration: {0}")]
    Rustls(String),
    #[error(
        "{path}: the certificate says {found}, but the config says role `{role}`, name `{name}`, program `{program}`; \
         use the certificate issued for this daemon (`divert ca issue --role {role} --name {name}`)"
    )]
    IdentityMismatch { path: PathBuf, found: String, role: Role, name: String, program: String },
}

/// The `[tls]` table of one daemon or client: its TLS files and the lowest protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crl: PathBuf,
    pub min_version: MinVersion,
}

/// The lowest TLS version spoken (`[tls] min_version`). Every divert peer
/// speaks 1.3; "1.2" exists only for an agency whose TLS-intercepting proxy
/// cannot, and must be set on both ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum MinVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

impl MinVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static TLS13_AND_12: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            MinVersion::Tls13 => &TLS13_ONLY,
            MinVersion::Tls12 => &TLS13_AND_12,
        }
    }
}

/// Everything loaded from [`TlsPaths`], ready to serve or connect.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Our own identity, read from our certificate.
    pub identity: SpiffeId,
    /// When our certificate expires.
    pub not_after: time::OffsetDateTime,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), detail: detail.to_string() }
}

/// Read every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// Read a private key, refusing a file group or others could read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = zeroize::Zeroizing::new(fsutil::read_secret(path)?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| file_err(path, format!("not a PEM private key: {e}")))
}

/// Read the CRLs of a PEM file (at least one: without it revocation cannot be checked).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read the CRL: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a PEM CRL file: {e}")))?;
    if crls.is_empty() {
        return Err(file_err(path, "no X509 CRL block in the file (refresh it with `divert ca crl`)"));
    }
    Ok(crls)
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

impl TlsMaterial {
    /// Load certificate, key, CA and CRL and build both configs. Checks that
    /// the certificate's SPIFFE ID is `expected` when given.
    pub fn load(paths: &TlsPaths, expected: Option<&SpiffeId>) -> Result<TlsMaterial, TlsError> {
        let chain = load_certs(&paths.cert)?;
        let key = load_key(&paths.key)?;
        let identity = spiffe::spiffe_id_of(&chain[0])
            .map_err(|source| TlsError::Certificate { path: paths.cert.clone(), source: Box::new(source) })?;
        let not_after = spiffe::cert_not_after(&chain[0])
            .map_err(|source| TlsError::Certificate { path: paths.cert.clone(), source: Box::new(source) })?;
        if let Some(want) = expected {
            if &identity != want {
                return Err(TlsError::IdentityMismatch {
                    path: paths.cert.clone(),
                    found: identity.to_string(),
                    role: want.role,
                    name: want.name.clone(),
                    program: want.program.clone(),
                });
            }
        }
        let roots = roots(&paths.ca)?;
        let crls = load_crls(&paths.crl)?;

        // Clients must present a certificate of our CA, not revoked, and a
        // CRL past its next-update is treated as no CRL at all: refused.
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .with_crls(crls.clone())
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let client_verifier = Arc::new(RequirePurpose { inner: client_verifier, purpose: Purpose::ClientAuth });
        let versions = paths.min_version.versions();
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", paths.key.display())))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let server_verifier = Arc::new(RequirePurpose { inner: server_verifier, purpose: Purpose::ServerAuth });
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", paths.key.display())))?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];

        Ok(TlsMaterial { identity, not_after, server: Arc::new(server), client: Arc::new(client) })
    }

    /// Days until our certificate expires (negative once expired).
    pub fn days_left(&self) -> i64 {
        (self.not_after - time::OffsetDateTime::now_utc()).whole_days()
    }
}

/// How the handshake of a pending (unauthenticated) connection ended, short of success.
#[derive(Debug)]
pub enum HandshakeEnd {
    /// The daemon is stopping, or the connection was evicted to make room: close quietly.
    Dropped,
    /// Closed without sending a byte (a port scan, a peer that gave up): nothing to refuse.
    Closed,
    /// The TLS handshake failed (no certificate, unknown CA, revoked, wrong purpose, not TLS).
    Failed(std::io::Error),
    /// No verified certificate within the time allowed.
    TimedOut,
}

/// The server side of a handshake for a connection admitted as pending
/// (`accept`): within `timeout` of now, evictable, ended by `shutdown`.
/// The one place the steward and the key server shake hands.
pub async fn accept_pending(
    pending: &crate::accept::Pending,
    tcp: tokio::net::TcpStream,
    config: Arc<ServerConfig>,
    timeout: std::time::Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, HandshakeEnd> {
    use crate::accept::FirstBytes;
    let handshake = async {
        match pending.first_bytes(&tcp, timeout).await {
            FirstBytes::Sent => tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.map_err(HandshakeEnd::Failed),
            FirstBytes::Closed => Err(HandshakeEnd::Closed),
            FirstBytes::TimedOut => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err(HandshakeEnd::Dropped),
        _ = pending.evicted() => Err(HandshakeEnd::Dropped),
        r = tokio::time::timeout(timeout, handshake) => r.unwrap_or(Err(HandshakeEnd::TimedOut)),
    }
}

/// The one mutual-TLS client connect: TCP to `addr`, the handshake with
/// `client` under the TLS name `host` (each step within `timeout`), then the
/// server's SPIFFE identity, which `wanted` must accept before a byte of
/// application data is sent. Returns the stream and the identity found.
pub async fn connect(
    client: Arc<ClientConfig>,
    addr: &str,
    host: &str,
    timeout: std::time::Duration,
    wanted: impl Fn(&SpiffeId) -> bool,
) -> Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, SpiffeId), ConnectError> {
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Tcp("timed out".into()))?
        .map_err(|e| ConnectError::Tcp(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string()).map_err(|_| ConnectError::ServerName(host.to_string()))?;
    let stream = tokio::time::timeout(timeout, tokio_rustls::TlsConnector::from(client).connect(name, tcp))
        .await
        .map_err(|_| ConnectError::Handshake("the handshake timed out".into()))?
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    match peer_identity(stream.get_ref().1) {
        Some(id) if wanted(&id) => Ok((stream, id)),
        found => Err(ConnectError::Identity(found)),
    }
}

/// Why [`connect`] made no connection. Callers say which server they wanted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Tcp(String),
    #[error("`{0}` is not a valid server name")]
    ServerName(String),
    #[error("{0}")]
    Handshake(String),
    /// The server's identity (`None`: its certificate has none) is not the one wanted.
    #[error("{}", .0.as_ref().map_or_else(|| "a server without a SPIFFE identity".to_string(), |i| i.to_string()))]
    Identity(Option<SpiffeId>),
}

/// The SPIFFE ID of the peer of an established connection, from its first
/// certificate (already verified against our CA by the handshake).
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let cert = conn.peer_certificates()?.first()?;
    spiffe::spiffe_id_of(cert).ok()
}

/// The extended key usage a peer certificate must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    ClientAuth,
    ServerAuth,
}

/// webpki accepts a certificate *without* an extended-key-usage extension
/// for any purpose. A certificate of this program always has one (`divert ca
/// issue` sets clientAuth, and serverAuth for the roles that serve), so one
/// without it, or without the purpose the peer uses it for, was not made by
/// our tooling and is refused in the handshake. Everything else is webpki's
/// verdict, unchanged.
#[derive(Debug)]
struct RequirePurpose<V: ?Sized> {
    inner: Arc<V>,
    purpose: Purpose,
}

/// Whether `der` names `purpose` in an extended-key-usage extension.
fn has_purpose(der: &[u8], purpose: Purpose) -> Result<(), rustls::Error> {
    let refuse = || rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose);
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let eku = cert.extended_key_usage().map_err(|_| refuse())?.ok_or_else(refuse)?;
    let ok = match purpose {
        Purpose::ClientAuth => eku.value.client_auth,
        Purpose::ServerAuth => eku.value.server_auth,
    };
    if ok {
        Ok(())
    } else {
        Err(refuse())
    }
}

impl ClientCertVerifier for RequirePurpose<dyn ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        has_purpose(end_entity, self.purpose)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ServerCertVerifier for RequirePurpose<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        has_purpose(end_entity, self.purpose)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
