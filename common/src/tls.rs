//! PEM material for TLS, read the same way by both binaries: certificates and keys from
//! files, each file remembered with a hash of its contents so a reload can tell whether a
//! certificate was replaced in place. The crypto provider is ring (no OpenSSL, no C
//! toolchain beyond ring's own).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A config error: the key at fault and what is wrong.
pub type KeyError = (String, String);

/// The files a TLS configuration was built from, with a hash of each one's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(Vec<(PathBuf, u64)>);

impl Sources {
    /// Reads `path` (named by `key` in errors) and remembers its contents' hash.
    pub fn read(&mut self, key: &str, path: &Path) -> Result<Vec<u8>, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| {
            (
                key.to_owned(),
                format!("{}: cannot read: {e}", path.display()),
            )
        })?;
        self.0
            .push((path.to_path_buf(), xxhash_rust::xxh3::xxh3_64(&bytes)));
        Ok(bytes)
    }

    /// Every PEM certificate in `path`; at least one.
    pub fn certificates(
        &mut self,
        key: &str,
        path: &Path,
    ) -> Result<Vec<CertificateDer<'static>>, KeyError> {
        let bytes = self.read(key, path)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                (
                    key.to_owned(),
                    format!("{}: not PEM certificates: {e}", path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err((
                key.to_owned(),
                format!("{}: holds no PEM certificate", path.display()),
            ));
        }
        Ok(certs)
    }

    /// The PEM private key in `path` (PKCS#8, PKCS#1 or SEC1).
    pub fn private_key(
        &mut self,
        key: &str,
        path: &Path,
    ) -> Result<PrivateKeyDer<'static>, KeyError> {
        let bytes = self.read(key, path)?;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
            (
                key.to_owned(),
                format!("{}: no PEM private key: {e}", path.display()),
            )
        })
    }

    /// A root store of every certificate in `path`.
    pub fn roots(&mut self, key: &str, path: &Path) -> Result<rustls::RootCertStore, KeyError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in self.certificates(key, path)? {
            roots
                .add(cert)
                .map_err(|e| (key.to_owned(), format!("{}: {e}", path.display())))?;
        }
        Ok(roots)
    }
}

/// The crypto provider both sides use.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
