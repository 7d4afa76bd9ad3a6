//! The certificates HTTPS serves, chosen by the name a client asks for (SNI): those ordered
//! from an ACME server for domains with `"https": true` ([`acme`]), kept in the store so every
//! node serves them, and the certificate of `--tls-cert` for the names it covers. A name
//! without a certificate gets a handshake failure, never another name's certificate; a
//! client that names nothing (one that connects by address) gets the `--tls-cert` one.
//!
//! Also here: the answers to ACME challenges while an order waits for them, served by every
//! node (TLS-ALPN-01 in the handshake, HTTP-01 at `/.well-known/acme-challenge/{token}`).
//!
//! Settings in the store: `cert.{name}` (a [`CertificateRecord`]), `acme-http.{token}` (a
//! key authorization), `acme-tls.{name}` (a challenge certificate and its key, PEM).

pub mod acme;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::now_ms,
    store::{
        Backend, SharedStore, StoreError,
        records::{CertificateRecord, CertificateStatus, decode_certificate},
    },
};

/// The ALPN name of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// How often a cluster node reads the certificates and challenge answers again.
pub const REFRESH: Duration = Duration::from_secs(2);
/// A certificate that ends sooner than this is reported (metric and `/healthz`).
pub const EXPIRING_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);

pub const CERT: &str = "cert.";
pub(crate) const HTTP_ANSWER: &str = "acme-http.";
pub(crate) const TLS_ANSWER: &str = "acme-tls.";

/// A stored certificate record and its key, ready for handshakes.
#[derive(Clone)]
struct Issued {
    record: Arc<CertificateRecord>,
    certified: Option<Arc<CertifiedKey>>,
}

/// Every certificate this node serves, and the challenge answers.
#[derive(Default)]
pub struct Certificates {
    /// `--tls-cert`, with its end.
    file: Option<(Arc<CertifiedKey>, i64)>,
    issued: RwLock<HashMap<String, Issued>>,
    tls_answers: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    http_answers: RwLock<HashMap<String, String>>,
}

impl Certificates {
    /// With the certificate of `--tls-cert`, if any.
    pub fn new(file: Option<Arc<CertifiedKey>>) -> Self {
        let file = file.map(|c| {
            let ends = c
                .end_entity_cert()
                .ok()
                .and_then(|der| validity(der))
                .map_or(0, |(_, ends)| ends);
            (c, ends)
        });
        Self {
            file,
            ..Self::default()
        }
    }

    /// Reads every certificate and challenge answer in `store`.
    pub fn load(&self, store: &dyn Backend) -> Result<(), StoreError> {
        let mut issued = HashMap::new();
        for (_, value) in store.settings(CERT)? {
            match decode_certificate(&value) {
                Ok(record) => {
                    issued.insert(record.name.clone(), issue(record));
                }
                Err(e) => tracing::warn!(cause = %e, "an unreadable certificate record"),
            }
        }
        let mut tls = HashMap::new();
        for (name, pem) in store.settings(TLS_ANSWER)? {
            if let Some(certified) = challenge_from_pem(&String::from_utf8_lossy(&pem)) {
                tls.insert(name[TLS_ANSWER.len()..].to_owned(), Arc::new(certified));
            }
        }
        let http = store
            .settings(HTTP_ANSWER)?
            .into_iter()
            .map(|(name, v)| {
                (
                    name[HTTP_ANSWER.len()..].to_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        if let Ok(mut map) = self.issued.write() {
            *map = issued;
        }
        if let Ok(mut map) = self.tls_answers.write() {
            *map = tls;
        }
        if let Ok(mut map) = self.http_answers.write() {
            *map = http;
        }
        Ok(())
    }

    /// Takes a record just stored by this node.
    pub fn set(&self, record: CertificateRecord) {
        if let Ok(mut map) = self.issued.write() {
            map.insert(record.name.clone(), issue(record));
        }
    }

    /// Forgets a domain's certificate (the domain was removed).
    pub fn remove(&self, name: &str) {
        if let Ok(mut map) = self.issued.write() {
            map.remove(name);
        }
    }

    /// The stored record of `name`'s certificate.
    pub fn record(&self, name: &str) -> Option<Arc<CertificateRecord>> {
        Some(self.issued.read().ok()?.get(name)?.record.clone())
    }

    /// The end of the `--tls-cert` certificate when it covers `name` (ms since the epoch).
    pub fn file_covering(&self, name: &str) -> Option<i64> {
        let (certified, ends) = self.file.as_ref()?;
        crate::http::tls::covers(certified, name).then_some(*ends)
    }

    /// The names whose served certificate ends within [`EXPIRING_WITHIN`], sorted, of the
    /// domains that still want one (`wanted`).
    pub fn expiring(&self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let soon = now_ms() + i64::try_from(EXPIRING_WITHIN.as_millis()).unwrap_or(i64::MAX);
        let mut names: Vec<String> = self
            .issued
            .read()
            .map(|map| {
                map.values()
                    .filter(|i| i.certified.is_some() && i.record.not_after < soon)
                    .filter(|i| wanted(&i.record.name))
                    .map(|i| i.record.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Takes a challenge answer this node just stored.
    pub fn set_http_answer(&self, token: &str, answer: Option<String>) {
        if let Ok(mut map) = self.http_answers.write() {
            match answer {
                Some(answer) => map.insert(token.to_owned(), answer),
                None => map.remove(token),
            };
        }
    }

    pub fn set_tls_answer(&self, name: &str, answer: Option<Arc<CertifiedKey>>) {
        if let Ok(mut map) = self.tls_answers.write() {
            match answer {
                Some(answer) => map.insert(name.to_owned(), answer),
                None => map.remove(name),
            };
        }
    }

    /// The key authorization for an HTTP-01 `token`.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http_answers.read().ok()?.get(token).cloned()
    }

    /// The certificate for a handshake asking for `name` (`None`: no name asked).
    fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.file.as_ref().map(|(c, _)| c.clone());
        };
        let name = name.to_ascii_lowercase();
        let ordered = self.issued.read().ok().and_then(|map| {
            let issued = map.get(&name)?;
            (issued.record.not_after > now_ms()).then(|| issued.certified.clone())?
        });
        ordered.or_else(|| {
            self.file
                .as_ref()
                .filter(|(c, _)| crate::http::tls::covers(c, &name))
                .map(|(c, _)| c.clone())
        })
    }

    /// Reads the certificates again every [`REFRESH`] until `stop` (a cluster node: another
    /// node may have ordered one).
    pub async fn follow(self: Arc<Self>, store: SharedStore, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            let store = store.clone();
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.load(store.as_ref())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(cause = %e, "cannot read the certificates again"),
                Err(_) => return,
            }
        }
    }
}

fn issue(record: CertificateRecord) -> Issued {
    let certified = match (&record.status, &record.chain_pem, &record.key_pem) {
        (CertificateStatus::Valid, Some(chain), Some(key)) => {
            certified_from_pem(&format!("{chain}\n{key}")).map(Arc::new)
        }
        _ => None,
    };
    Issued {
        record: Arc::new(record),
        certified,
    }
}

/// A certificate chain and its key from PEM text holding both.
pub fn certified_from_pem(pem: &str) -> Option<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    CertifiedKey::from_der(chain, key, &ring::default_provider()).ok()
}

/// The certificate of a TLS-ALPN-01 answer and its key, from PEM text holding both. Its
/// critical `acmeIdentifier` extension is one a certificate check refuses (it is meant for
/// the ACME server alone), so the key is not matched against the certificate here.
pub fn challenge_from_pem(pem: &str) -> Option<CertifiedKey> {
    let cert = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let key = ring::default_provider()
        .key_provider
        .load_private_key(key)
        .ok()?;
    Some(CertifiedKey::new(vec![cert], key))
}

/// A certificate's validity as (not before, not after), ms since the epoch.
pub fn validity(der: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let v = cert.validity();
    Some((
        v.not_before.timestamp().saturating_mul(1000),
        v.not_after.timestamp().saturating_mul(1000),
    ))
}

/// The certificate resolver of the HTTPS listener.
#[derive(Debug)]
pub struct Resolver(pub Arc<Certificates>);

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME server's check offers this protocol alone (RFC 8737); a client offering it
        // among others is served as any other.
        let challenge = hello.alpn().is_some_and(|offered| {
            let offered: Vec<&[u8]> = offered.collect();
            offered == [ACME_TLS_ALPN]
        });
        if challenge {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.0.tls_answers.read().ok()?.get(&name).cloned();
        }
        self.0.for_name(hello.server_name())
    }
}
