//! The evaluator's side: its config file (certificate and the steward's address) and an mTLS client for the steward's query API.
//!
//! An evaluator is a client, not a daemon: it holds an `evaluator`
//! certificate of the program CA and can reach only the steward's
//! `/v1/catalog`, `/v1/query`, `/v1/budget` and `/v1/releases`.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::config::{parse_https_url, read_text, resolver, RawTls};
use crate::schema::{toml_problem, Problem};
use crate::spiffe::{Role, SpiffeId};
use crate::tls::{self, ConnectError, TlsMaterial, TlsPaths};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvaluatorConfig {
    role: String,
    name: String,
    program: String,
    steward_url: String,
    tls: RawTls,
}

/// A validated evaluator config.
#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    pub spiffe_id: SpiffeId,
    pub steward_addr: String,
    pub steward_host: String,
    pub tls: TlsPaths,
}

impl EvaluatorConfig {
    pub fn load(path: &Path) -> Result<EvaluatorConfig, Vec<Problem>> {
        EvaluatorConfig::from_toml(&read_text(path)?, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<EvaluatorConfig, Vec<Problem>> {
        let raw: RawEvaluatorConfig = toml::from_str(text).map_err(|e| vec![toml_problem(&e)])?;
        let resolve = &resolver(path);
        let mut problems = Vec::new();
        if raw.role != "evaluator" {
            problems.push(Problem {
                key: "role".into(),
                message: format!("`{}`: an evaluator config has role = \"evaluator\"", raw.role),
            });
        }
        let identity = SpiffeId::new(&raw.program, Role::Evaluator, &raw.name);
        if let Err(e) = &identity {
            problems.push(Problem { key: "name".into(), message: e.to_string() });
        }
        let url = parse_https_url(&raw.steward_url);
        if url.is_none() {
            problems.push(Problem {
                key: "steward_url".into(),
                message: format!("`{}` is not https://HOST:PORT", raw.steward_url),
            });
        }
        match (identity, url, problems.is_empty()) {
            (Ok(spiffe_id), Some((steward_addr, steward_host)), true) => {
                Ok(EvaluatorConfig { spiffe_id, steward_addr, steward_host, tls: raw.tls.resolve(resolve) })
            }
            _ => Err(problems),
        }
    }
}

/// Why a request to the steward failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("connecting to the steward at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("the server at {addr} is {found}, not a steward of program {program}: refusing to send a query")]
    NotSteward { addr: String, found: String, program: String },
    #[error("talking to the steward: {0}")]
    Http(String),
    #[error("the steward did not answer within {0} s")]
    Timeout(u64),
}

/// One HTTP response from the steward.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// An mTLS client for the steward's evaluator API.
pub struct Client {
    config: EvaluatorConfig,
    material: TlsMaterial,
}

impl Client {
    /// Load the evaluator's certificate, key, CA and CRL.
    pub fn new(config: EvaluatorConfig) -> Result<Client, ClientError> {
        let material = TlsMaterial::load(&config.tls, Some(&config.spiffe_id))?;
        Ok(Client { config, material })
    }

    /// Send one request on a fresh connection; the status and body.
    pub async fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Reply, ClientError> {
        let addr = self.config.steward_addr.clone();
        let program = &self.config.spiffe_id.program;
        let wanted = |id: &SpiffeId| id.role == Role::Steward && &id.program == program;
        let client = self.material.client.clone();
        let stream = match tls::connect(client, &addr, &self.config.steward_host, CONNECT_TIMEOUT, wanted).await {
            Ok((stream, _)) => stream,
            Err(ConnectError::Identity(found)) => {
                let found = ConnectError::Identity(found).to_string();
                return Err(ClientError::NotSteward { addr, found, program: program.clone() });
            }
            Err(e @ ConnectError::Handshake(_)) => {
                return Err(ClientError::Connect { addr, detail: format!("TLS: {e}") })
            }
            Err(e) => return Err(ClientError::Connect { addr, detail: e.to_string() }),
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.config.steward_host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = send.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
            Ok::<_, ClientError>(Reply { status, body: body.to_vec() })
        })
        .await;
        driver.abort();
        result.map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT.as_secs()))?
    }
}
