//! TLS for the aggregator sink: which servers to trust (`sink.ca_file`, else the system's
//! roots), and the client certificate for mutual TLS. Hostname verification is always on;
//! there is no switch to skip it.
//!
//! The material is read when the config is validated, so a bad file is a config error at
//! start or reload, not a failing request later. Two [`ClientTls`] are equal when they were
//! built from the same files with the same contents, so a SIGHUP after a certificate was
//! replaced in place rebuilds the sink, and one with nothing changed does not.

use std::path::PathBuf;
use std::sync::Arc;

use logship_common::tls::{KeyError, Sources};

/// A ready client TLS configuration and what it was built from.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    sources: Sources,
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.sources)
            .finish()
    }
}

impl ClientTls {
    /// Builds the client configuration from the files the config names.
    pub fn load(
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
    ) -> Result<ClientTls, KeyError> {
        let mut sources = Sources::default();
        let roots = match &ca_file {
            Some(p) => sources.roots("sink.ca_file", p)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!(error = %e, "reading the system's CA certificates");
                }
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err((
                        "sink.ca_file".into(),
                        "no system CA certificates found (install ca-certificates) and no ca_file given".into(),
                    ));
                }
                roots
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(logship_common::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("sink.url".to_owned(), format!("TLS setup: {e}")))?
            .with_root_certificates(roots);
        let config = match (&cert_file, &key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(c), Some(k)) => {
                let chain = sources.certificates("sink.client_cert_file", c)?;
                let key = sources.private_key("sink.client_key_file", k)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    (
                        "sink.client_key_file".to_owned(),
                        format!("does not match sink.client_cert_file: {e}"),
                    )
                })?
            }
            (Some(_), None) => {
                return Err((
                    "sink.client_key_file".into(),
                    "required with sink.client_cert_file".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "sink.client_cert_file".into(),
                    "required with sink.client_key_file".into(),
                ))
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            sources,
        })
    }
}

/// The TLS failure behind a request error, if that is what it was: a handshake the server or
/// the agent refused, a certificate that does not verify, an alert. None of these is the
/// batch's fault, so the sender parks instead of dead-lettering.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // io::Error hides its payload from `source()` (and hyper-rustls wraps tokio-rustls's
        // io::Error in another): look inside it.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        let found = tls_failure(&io).expect("found");
        let wrapped = std::io::Error::other(io);
        assert_eq!(tls_failure(&wrapped).as_deref(), Some(found.as_str()));
        assert!(found.contains("xpired"), "{found}");
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&plain), None);
    }

    #[test]
    fn bad_files_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").expect("write");
        let e = ClientTls::load(Some(ca.clone()), None, None).expect_err("bad ca");
        assert_eq!(e.0, "sink.ca_file");
        let e =
            ClientTls::load(Some(dir.path().join("missing.pem")), None, None).expect_err("missing");
        assert!(e.1.contains("cannot read"), "{e:?}");
    }
}
