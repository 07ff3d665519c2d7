//! TLS for the `--tls` runs: a CA and a server certificate for `localhost` generated in the
//! run's directory, the aggregator's `[tls]` table, the agent's `[sink]` keys, and the
//! client config the benchmark's own requests use to trust that CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;

/// Certificates of one run.
#[derive(Debug)]
pub struct BenchTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the benchmark's HTTP client trusts once [`BenchTls::generate`] ran.
static CLIENT_CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

impl BenchTls {
    /// Writes `ca.pem`, `server.pem` and `server.key` (for `localhost` and 127.0.0.1) into
    /// `dir`, and makes the benchmark's client trust the CA.
    pub fn generate(dir: &Path) -> anyhow::Result<BenchTls> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        std::fs::create_dir_all(dir)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "logship-bench CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        let t = BenchTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&t.ca, ca.pem())?;
        std::fs::write(&t.cert, cert.pem())?;
        std::fs::write(&t.key, key.serialize_pem())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_slice(
            ca.pem().as_bytes(),
        )?)?;
        let config = rustls::ClientConfig::builder_with_provider(logship_common::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let _ = CLIENT_CONFIG.set(Arc::new(config));
        Ok(t)
    }

    /// The aggregator's config file serving this certificate.
    pub fn aggregator_config(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let p = dir.join("aggregator-tls.toml");
        std::fs::write(
            &p,
            format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                self.cert.to_string_lossy(),
                self.key.to_string_lossy()
            ),
        )?;
        Ok(p)
    }

    /// The agent's `[sink]` line trusting the CA.
    pub fn sink_keys(&self) -> String {
        format!("ca_file = {:?}", self.ca.to_string_lossy())
    }
}

/// The client config for the benchmark's requests: the run's CA when there is one (an
/// empty store otherwise, unused by plain `http://` URLs).
pub fn client_config() -> rustls::ClientConfig {
    match CLIENT_CONFIG.get() {
        Some(c) => (**c).clone(),
        // The crate's one provider (ring) is the default.
        None => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    }
}
