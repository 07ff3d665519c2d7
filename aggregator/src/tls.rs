//! TLS for the server: `[tls] cert_file` and `key_file` (PEM), and `client_ca_file`, which
//! makes a client certificate signed by that CA required (mutual TLS).
//!
//! The configuration is built when the config is validated, so a bad certificate fails the
//! start or the reload with the key at fault; a reload (SIGHUP) builds a new one from the
//! files and every connection accepted afterwards uses it, while connections already open
//! keep the session they have. The handshake runs in the connection's own task under
//! `header_read_timeout`, so a client that sends half a handshake and goes silent holds
//! only its own slot.

use std::path::Path;
use std::sync::Arc;

use logship_common::tls::{KeyError, Sources};

/// A ready server TLS configuration and the files it came from.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// Whether clients must present a certificate.
    pub mutual: bool,
    sources: Sources,
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .field("files", &self.sources)
            .finish()
    }
}

impl ServerTls {
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: Option<&Path>,
    ) -> Result<ServerTls, KeyError> {
        let mut sources = Sources::default();
        let chain = sources.certificates("tls.cert_file", cert_file)?;
        let key = sources.private_key("tls.key_file", key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(logship_common::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls".to_owned(), format!("TLS setup: {e}")))?;
        let builder = match client_ca_file {
            Some(ca) => {
                let roots = sources.roots("tls.client_ca_file", ca)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    logship_common::tls::provider(),
                )
                .build()
                .map_err(|e| ("tls.client_ca_file".to_owned(), e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            (
                "tls.key_file".to_owned(),
                format!("does not match tls.cert_file: {e}"),
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            mutual: client_ca_file.is_some(),
            sources,
        })
    }
}
