//! The operator's HTTPS client, used by the `driftwatch-collector` subcommands that
//! talk to a running collector (hosts, images, actions, approve/mark/unmark/revoke),
//! so that nobody needs curl.

use crate::tls::{load_certificates, provider, TlsError};
use driftwatch_protocol::wire::ErrorBody;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// Why an operator call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The collector could not be reached or the answer could not be read.
    #[error("cannot reach the collector at {url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The collector refused the call.
    #[error("the collector refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
}

/// A client of the operator API.
pub struct OperatorClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl OperatorClient {
    /// A client of the collector at `base` (`https://host:port`), trusting `ca_file`.
    pub fn new(base: &str, ca_file: &Path, token: String) -> Result<OperatorClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certificates(ca_file)? {
            roots.add(cert).map_err(TlsError::from)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::from)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.to_string(),
                message: e.to_string(),
            })?;
        Ok(OperatorClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        // A GET is safe to repeat, once: a kept-alive connection that the collector or a
        // load balancer closed between two pages fails the next request unanswered.
        match self.send(self.http.get(self.url(path))).await {
            Err(ClientError::Transport { .. }) => self.send(self.http.get(self.url(path))).await,
            answer => answer,
        }
    }

    /// `POST path` with a JSON body.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// `POST path` with raw bytes.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        self.send(
            self.http
                .post(self.url(path))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body),
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: self.base.clone(),
            message: e.to_string(),
        };
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            message: format!("unreadable answer: {e}"),
        })
    }
}
