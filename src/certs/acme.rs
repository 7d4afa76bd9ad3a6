//! Certificates ordered from an ACME server (RFC 8555) for every domain with `"https": true`:
//! one order at a time in the whole installation (the node holding the lease `acme` in the
//! store orders; on one node that is the node), answered by TLS-ALPN-01 on the HTTPS port or
//! HTTP-01 on the plain one (`--acme-challenge`), the answers stored so that whichever node the
//! ACME server reaches answers it. Renewal starts two thirds into a certificate's lifetime; a
//! failed order is tried again after a backoff that doubles from [`FIRST_BACKOFF`] up to
//! [`LAST_BACKOFF`], and its reason shows on the domain (`certificate.error`).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, anyhow, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    Certificates, HTTP_ANSWER, TLS_ANSWER, certified_from_pem, challenge_from_pem, validity,
};
use crate::{
    domain::now_ms,
    http::domains::Domains,
    store::{
        SharedStore,
        records::{
            CertificateRecord, CertificateStatus, RECORD_VERSION, decode_certificate,
            encode_certificate,
        },
    },
};

/// Let's Encrypt's production directory, the default of `--acme-directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// How often the domains are looked over for a certificate to order.
const TICK: Duration = Duration::from_secs(1);
/// The lease's length; its holder renews it at every look.
const LEASE: Duration = Duration::from_secs(120);
/// The longest an order may take before it is abandoned (and tried again later).
const ORDER_TIMEOUT: Duration = Duration::from_secs(150);
/// The longest the ACME server may take to check a challenge, or to issue once asked.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The wait after a first failure, doubled after each further one up to [`LAST_BACKOFF`]:
/// Let's Encrypt allows 5 failed checks of a name an hour, which this stays under.
const FIRST_BACKOFF: Duration = Duration::from_secs(5 * 60);
const LAST_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// Which challenge answers an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Challenge {
    /// `/.well-known/acme-challenge/{token}` on the plain listener (port 80 in public).
    #[value(name = "http-01")]
    Http01,
    /// A certificate made for the check, in the handshake on the HTTPS listener (port 443).
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
}

/// The ACME server and how to talk to it.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    pub ca_root: Option<PathBuf>,
    pub challenge: Challenge,
}

/// Orders certificates for the domains that want one.
pub struct Acme {
    settings: AcmeSettings,
    store: SharedStore,
    domains: Arc<Domains>,
    certificates: Arc<Certificates>,
    /// Who this process is, for the lease.
    holder: String,
    /// Whether other nodes serve the same store (challenge answers must reach them first).
    shared: bool,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Acme {
    pub fn new(
        settings: AcmeSettings,
        store: SharedStore,
        domains: Arc<Domains>,
        certificates: Arc<Certificates>,
    ) -> Self {
        let shared = store.shared_by_nodes();
        Self {
            settings,
            store,
            domains,
            certificates,
            holder: format!("{:016x}", rand::random::<u64>()),
            shared,
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// Looks over the domains every [`TICK`] until `stop`, ordering what is due.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            for name in self.due() {
                // The lease is taken (or renewed) before each order, so a node whose list
                // outlasts it stops, and the record is read again: another node may have
                // ordered it since this node last read the certificates.
                if !self.hold_lease().await || !self.still_due(&name).await {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.order_one(&name) => {}
                }
            }
        }
    }

    /// Takes or renews the lease `acme`: whether this node may order.
    async fn hold_lease(&self) -> bool {
        let store = self.store.clone();
        let holder = self.holder.clone();
        match tokio::task::spawn_blocking(move || store.take_lease("acme", &holder, LEASE)).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                warn!(cause = %e, "cannot take the ACME lease");
                false
            }
            Err(_) => false,
        }
    }

    /// Whether `name` is due by its record as stored now (a cluster's other nodes write it).
    async fn still_due(&self, name: &str) -> bool {
        if !self.shared {
            return true;
        }
        let store = self.store.clone();
        let key = format!("{}{name}", super::CERT);
        let stored = tokio::task::spawn_blocking(move || store.setting(&key)).await;
        let Ok(Ok(stored)) = stored else {
            return false;
        };
        let record = stored.and_then(|v| decode_certificate(&v).ok());
        if let Some(record) = &record {
            self.certificates.set(record.clone());
        }
        is_due(record.as_ref(), now_ms())
    }

    /// The domains whose certificate is to be ordered now.
    fn due(&self) -> Vec<String> {
        let now = now_ms();
        self.domains
            .list()
            .iter()
            .filter(|d| d.https && is_due(self.certificates.record(&d.name).as_deref(), now))
            .map(|d| d.name.clone())
            .collect()
    }

    /// Orders `name`'s certificate and stores what came of it.
    async fn order_one(&self, name: &str) {
        let before = self.certificates.record(name);
        let had = before
            .as_ref()
            .filter(|r| r.status == CertificateStatus::Valid && r.not_after > now_ms());
        let mut record = match had {
            Some(r) => (**r).clone(),
            None => CertificateRecord {
                v: RECORD_VERSION,
                name: name.to_owned(),
                status: CertificateStatus::Pending,
                chain_pem: None,
                key_pem: None,
                not_before: 0,
                not_after: 0,
                error: None,
                failures: before.as_ref().map_or(0, |r| r.failures),
                retry_at: 0,
            },
        };
        // Marked first, so the API shows the order and no other node starts one meanwhile.
        record.retry_at = now_ms() + millis(ORDER_TIMEOUT) * 2;
        if had.is_none() {
            record.error = before.as_ref().and_then(|r| r.error.clone());
        }
        if !self.save(record.clone()).await {
            // Not ordered while the store cannot say so: tried again after the mark's time.
            return;
        }
        info!(
            domain = name,
            renewal = had.is_some(),
            "ordering a certificate"
        );
        let mut answered = Vec::new();
        let ordered = tokio::time::timeout(ORDER_TIMEOUT, self.order(name, &mut answered))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow!(
                    "the order took longer than {}s",
                    ORDER_TIMEOUT.as_secs()
                ))
            });
        self.forget_answers(answered).await;
        match ordered {
            Ok((chain, key, (not_before, not_after))) => {
                info!(domain = name, not_after = %crate::domain::format_ms(not_after), "certificate issued");
                record.status = CertificateStatus::Valid;
                record.chain_pem = Some(chain);
                record.key_pem = Some(key);
                record.not_before = not_before;
                record.not_after = not_after;
                record.error = None;
                record.failures = 0;
                record.retry_at = 0;
            }
            Err(e) => {
                record.failures = record.failures.saturating_add(1);
                let wait = backoff(record.failures);
                let reason = format!("{e:#}");
                warn!(domain = name, cause = %reason, retry_in = ?wait, "cannot order a certificate");
                record.retry_at = now_ms() + millis(wait);
                if had.is_some() {
                    record.error = Some(format!("renewal failed: {reason}"));
                } else {
                    record.status = CertificateStatus::Failed;
                    record.error = Some(reason);
                }
            }
        }
        self.save(record).await;
    }

    /// Stores `record` and takes it in; this node keeps it in memory even when the store
    /// refuses (so its backoff holds). Whether it was stored. A domain removed meanwhile gets
    /// none.
    async fn save(&self, record: CertificateRecord) -> bool {
        if self.domains.get(&record.name).is_none() {
            return false;
        }
        let store = self.store.clone();
        let bytes = encode_certificate(&record);
        let key = format!("{}{}", super::CERT, record.name);
        let stored = tokio::task::spawn_blocking(move || store.put_setting(&key, &bytes)).await;
        let name = record.name.clone();
        self.certificates.set(record);
        match stored {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(cause = %e, domain = %name, "cannot store a certificate");
                false
            }
            Err(_) => false,
        }
    }

    /// The ACME account: the stored one for this directory, or one made now and stored.
    async fn account(&self) -> anyhow::Result<Account> {
        let mut held = self.account.lock().await;
        if let Some(account) = held.as_ref() {
            return Ok(account.clone());
        }
        let setting = format!(
            "acme-account.{}",
            &hex::encode(Sha256::digest(self.settings.directory.as_bytes()))[..16]
        );
        let store = self.store.clone();
        let name = setting.clone();
        let stored = tokio::task::spawn_blocking(move || store.setting(&name))
            .await
            .context("shutting down")??;
        let builder = || match &self.settings.ca_root {
            Some(root) => Account::builder_with_root(root)
                .with_context(|| format!("cannot read --acme-ca-root {}", root.display())),
            None => Account::builder().context("cannot set up the ACME client"),
        };
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials =
                    serde_json::from_slice(&json).context("the stored ACME account")?;
                builder()?
                    .from_credentials(credentials)
                    .await
                    .with_context(|| format!("cannot reach {}", self.settings.directory))?
            }
            None => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| {
                        format!("cannot make an ACME account at {}", self.settings.directory)
                    })?;
                let json = serde_json::to_vec(&credentials)?;
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.put_setting(&setting, &json))
                    .await
                    .context("shutting down")??;
                info!(directory = %self.settings.directory, "ACME account made");
                account
            }
        };
        *held = Some(account.clone());
        Ok(account)
    }

    /// One order for `name`: the chain (PEM), its key (PEM) and its validity.
    async fn order(
        &self,
        name: &str,
        answered: &mut Vec<String>,
    ) -> anyhow::Result<(String, String, (i64, i64))> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(name.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .context("the ACME server refused the order")?;
        self.answer(&mut order, name, answered).await?;
        let status = order
            .poll_ready(&RetryPolicy::new().timeout(STEP_TIMEOUT))
            .await
            .context("the ACME server did not check the challenge")?;
        if status != OrderStatus::Ready {
            bail!("{}", self.why_invalid(&mut order, name).await);
        }
        let key = rcgen::KeyPair::generate().context("cannot make a key")?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
            .context("the certificate request")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .context("the certificate request")?;
        order
            .finalize_csr(csr.der())
            .await
            .context("the ACME server refused the certificate request")?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(STEP_TIMEOUT))
            .await
            .context("the ACME server issued no certificate")?;
        let key = key.serialize_pem();
        let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .context("the ACME server sent no certificate")?
            .context("the ACME server sent a certificate that does not parse")?;
        let dates = validity(&leaf).context("the issued certificate has no readable dates")?;
        certified_from_pem(&format!("{chain}\n{key}"))
            .context("the issued certificate does not fit its key")?;
        Ok((chain, key, dates))
    }

    /// Puts up the answer to each pending authorization's challenge and tells the server.
    async fn answer(
        &self,
        order: &mut instant_acme::Order,
        name: &str,
        answered: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let kind = match self.settings.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("cannot read an authorization")?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => bail!("the authorization of {name} is {other:?}"),
            }
            let mut challenge = authorization
                .challenge(kind.clone())
                .ok_or_else(|| anyhow!("the ACME server offers no {kind:?} challenge"))?;
            let key_authorization = challenge.key_authorization();
            let (setting, value) = match kind {
                ChallengeType::TlsAlpn01 => {
                    let pem = alpn_certificate(name, key_authorization.digest().as_ref())?;
                    let certified = challenge_from_pem(&pem)
                        .context("the TLS-ALPN-01 certificate does not parse")?;
                    self.certificates
                        .set_tls_answer(name, Some(Arc::new(certified)));
                    (format!("{TLS_ANSWER}{name}"), pem)
                }
                _ => {
                    let token = challenge.token.clone();
                    self.certificates
                        .set_http_answer(&token, Some(key_authorization.as_str().to_owned()));
                    (
                        format!("{HTTP_ANSWER}{token}"),
                        key_authorization.as_str().to_owned(),
                    )
                }
            };
            answered.push(setting.clone());
            if self.shared {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.put_setting(&setting, value.as_bytes()))
                    .await
                    .context("shutting down")??;
                // Every node reads the answers again within its refresh.
                tokio::time::sleep(super::REFRESH + Duration::from_secs(1)).await;
            }
            challenge
                .set_ready()
                .await
                .context("the ACME server refused the challenge")?;
        }
        Ok(())
    }

    /// Takes down the challenge answers put up.
    async fn forget_answers(&self, answered: Vec<String>) {
        for setting in answered {
            if let Some(token) = setting.strip_prefix(HTTP_ANSWER) {
                self.certificates.set_http_answer(token, None);
            } else if let Some(name) = setting.strip_prefix(TLS_ANSWER) {
                self.certificates.set_tls_answer(name, None);
            }
            if self.shared {
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || store.delete_setting(&setting)).await;
            }
        }
    }

    /// What the server said of the failed challenge.
    async fn why_invalid(&self, order: &mut instant_acme::Order, name: &str) -> String {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authorization)) = authorizations.next().await {
            let Ok(state) = authorization.refresh().await else {
                continue;
            };
            if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                return format!("the ACME server could not check {name}: {problem}");
            }
        }
        format!("the ACME server could not check {name}")
    }
}

/// The self-signed certificate of a TLS-ALPN-01 answer (RFC 8737), and its key, as PEM.
fn alpn_certificate(name: &str, digest: &[u8]) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    Ok(format!("{}\n{}", cert.pem(), key.serialize_pem()))
}

/// Whether a domain whose certificate stands as `record` is to be ordered at `now`: none yet,
/// or past its retry time and failed, stuck pending (its node stopped), or two thirds through
/// its life.
fn is_due(record: Option<&CertificateRecord>, now: i64) -> bool {
    match record {
        None => true,
        Some(r) if now < r.retry_at => false,
        Some(r) => r.status != CertificateStatus::Valid || now >= r.renew_at(),
    }
}

/// The wait after `failures` orders failed in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(LAST_BACKOFF)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: CertificateStatus, not_before: i64, not_after: i64) -> CertificateRecord {
        CertificateRecord {
            v: RECORD_VERSION,
            name: "go.example.test".into(),
            status,
            chain_pem: None,
            key_pem: None,
            not_before,
            not_after,
            error: None,
            failures: 0,
            retry_at: 0,
        }
    }

    #[test]
    fn a_certificate_is_due_two_thirds_into_its_life_and_a_failure_after_its_backoff() {
        let day = 86_400_000;
        assert!(is_due(None, 0));
        // 90 days from day 0: renewed from day 60 on.
        let valid = record(CertificateStatus::Valid, 0, 90 * day);
        assert!(!is_due(Some(&valid), 59 * day));
        assert!(is_due(Some(&valid), 60 * day));
        let mut failed = record(CertificateStatus::Failed, 0, 0);
        failed.retry_at = 1_000;
        assert!(!is_due(Some(&failed), 999));
        assert!(is_due(Some(&failed), 1_000));
        // A renewal that failed keeps the certificate and waits for its retry time.
        let mut renewing = valid.clone();
        renewing.retry_at = 61 * day;
        assert!(!is_due(Some(&renewing), 60 * day));
        assert!(is_due(Some(&renewing), 61 * day));
    }

    #[test]
    fn the_backoff_doubles_from_five_minutes_up_to_six_hours() {
        let waits: Vec<u64> = (1..=5).map(|f| backoff(f).as_secs() / 60).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80]);
        assert!(backoff(7) < LAST_BACKOFF);
        assert_eq!(backoff(8), LAST_BACKOFF);
        assert_eq!(backoff(u32::MAX), LAST_BACKOFF);
    }
}
