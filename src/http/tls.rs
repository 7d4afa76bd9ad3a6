//! HTTPS: the certificate of `--tls-cert` and `--tls-key`, loaded and checked at start, and the
//! TLS settings of the HTTPS listener (`--https-listen`): TLS 1.2 and 1.3 by rustls, HTTP/2 and
//! HTTP/1.1 offered by ALPN. Which certificate a handshake gets is [`crate::certs`]' choice.

use std::{path::Path, sync::Arc};

use anyhow::{Context, bail};
use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    sign::CertifiedKey,
};

use crate::certs::{Certificates, Resolver};

/// ALPN names offered, most preferred first (the last only for ACME's TLS-ALPN-01 check).
const ALPN: [&[u8]; 3] = [b"h2", b"http/1.1", crate::certs::ACME_TLS_ALPN];

/// The certificate chain in `cert` and its private key in `key` (PEM files). Every way they
/// can be wrong is an error naming the file.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read a certificate from {}", cert.display()))?;
    if chain.is_empty() {
        bail!(
            "{} holds no certificate (PEM, BEGIN CERTIFICATE)",
            cert.display()
        );
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(ring::default_provider());
    let certified = CertifiedKey::from_der(chain, private, &provider).with_context(|| {
        format!(
            "the private key in {} does not fit the certificate in {}",
            key.display(),
            cert.display()
        )
    })?;
    // Read once here, so a certificate the handshake could not use is refused at start.
    webpki::EndEntityCert::try_from(certified.end_entity_cert()?)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("cannot read the certificate in {}", cert.display()))?;
    Ok(Arc::new(certified))
}

/// The TLS settings of the HTTPS listener: certificates chosen by `certificates`.
pub fn server_config(certificates: Arc<Certificates>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS settings")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certificates)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Whether `certified`'s certificate is valid for the DNS name `name` (wildcards included).
pub fn covers(certified: &CertifiedKey, name: &str) -> bool {
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    let Ok(der) = certified.end_entity_cert() else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Whether a TLS connection agreed on HTTP/2.
pub fn is_h2(alpn: Option<&[u8]>) -> bool {
    alpn == Some(b"h2".as_slice())
}
