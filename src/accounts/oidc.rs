//! Sign-in through an OpenID Connect provider: the authorization code flow with PKCE (S256),
//! `state` and `nonce`, for a confidential client (client_secret_basic).
//!
//! [`Oidc::discover`] reads the provider's discovery document and its JWKS once, at start.
//! [`Oidc::begin`] makes the authorization URL and the [`PendingSignIn`] to keep until the
//! callback (in a cookie or a store: it holds the PKCE verifier, so keep it out of the
//! browser's reach or sealed). [`Oidc::finish`] checks the returned `state`, exchanges the code
//! with the verifier, verifies the ID token (signature against the provider's keys, issuer,
//! audience, expiry, nonce) and returns the verified [`Identity`].
//!
//! The HTTP client follows no redirects (as openidconnect advises: a redirect could send the
//! client secret or the code elsewhere). An `http://` issuer or endpoint is accepted only on a
//! loopback address (the tests' provider); anything else must be `https://`.
//!
//! Self-contained (no `crate::` paths), so a test binary can include the file as it is.

use std::{error::Error as StdError, net::IpAddr, sync::RwLock, time::Duration};

use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    SubjectIdentifier, TokenResponse,
    core::{
        CoreAuthenticationFlow, CoreClient, CoreIdTokenClaims, CoreIdTokenVerifier,
        CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreUserInfoClaims,
    },
    reqwest,
    url::{Host, Url},
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// How long a sign-in may take between [`Oidc::begin`] and [`Oidc::finish`].
pub const PENDING_LIFETIME_MS: i64 = 10 * 60 * 1000;
/// How long one request to the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the provider was registered with.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The issuer identifier, exactly as the provider states it in its discovery document.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Our callback, exactly as registered with the provider.
    pub redirect_uri: String,
}

/// The client configured from the provider's discovery document: discover once, share.
pub struct Oidc {
    client: CoreClient<
        EndpointSet,      // authorization
        EndpointNotSet,   // device authorization
        EndpointNotSet,   // introspection
        EndpointNotSet,   // revocation
        EndpointSet,      // token
        EndpointMaybeSet, // userinfo
    >,
    client_id: ClientId,
    client_secret: ClientSecret,
    issuer: IssuerUrl,
    metadata: CoreProviderMetadata,
    /// The provider's keys: those read at discovery, replaced when an ID token names a key
    /// they lack (the provider rotated its keys).
    jwks: RwLock<CoreJsonWebKeySet>,
    /// The signature algorithms an ID token may use: the provider's, asymmetric ones only.
    algs: Vec<CoreJwsSigningAlgorithm>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id.as_str())
            .finish_non_exhaustive()
    }
}

/// A sign-in between [`Oidc::begin`] and [`Oidc::finish`]: kept by us, never shown to the
/// provider except as `state`, the nonce and the PKCE challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignIn {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub created_at_ms: i64,
}

/// Who signed in, as the provider vouched for in a verified ID token (and userinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`: stable and unique at this issuer.
    pub subject: String,
    pub email: String,
    /// Always true for an identity from [`Oidc::finish`], which refuses an unverified email.
    pub email_verified: bool,
}

/// What part of the ID token was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenProblem {
    /// Not signed by any of the provider's keys (or by an algorithm not allowed).
    Signature,
    /// Not the nonce of this sign-in (a replayed or injected token).
    Nonce,
    /// Not issued for this client.
    Audience,
    /// Past its `exp`.
    Expired,
    /// Not from this issuer.
    Issuer,
    /// The access token does not match the token's `at_hash`.
    AccessTokenHash,
    /// Malformed or otherwise unacceptable.
    Other,
}

impl std::fmt::Display for IdTokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Signature => "bad signature",
            Self::Nonce => "nonce mismatch",
            Self::Audience => "wrong audience",
            Self::Expired => "expired",
            Self::Issuer => "wrong issuer",
            Self::AccessTokenHash => "access token hash mismatch",
            Self::Other => "invalid",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The settings cannot be used (not a URL, plain HTTP to a non-loopback host, ...).
    #[error("OpenID Connect settings: {0}")]
    Settings(String),
    /// The HTTP client could not be built.
    #[error("OpenID Connect HTTP client: {0}")]
    HttpClient(String),
    /// No answer from the provider: connection refused, DNS, TLS, timeout.
    #[error("the OpenID provider could not be reached at {url}: {reason}")]
    ProviderUnreachable { url: String, reason: String },
    /// The provider answered discovery (or its JWKS) with something unusable.
    #[error("OpenID provider discovery failed for {issuer}: {reason}")]
    Discovery { issuer: String, reason: String },
    /// The sign-in was started too long ago (or its record is damaged): start again.
    #[error("the sign-in has expired; start again")]
    SignInExpired,
    /// The `state` returned does not match the pending sign-in's.
    #[error("the state returned by the OpenID provider does not match this sign-in")]
    StateMismatch,
    /// The provider refused the code (used, expired, wrong PKCE verifier, bad client secret).
    #[error("the OpenID provider refused the authorization code: {error}{}",
        description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    TokenRejected {
        error: String,
        description: Option<String>,
    },
    /// The token exchange failed otherwise (unparseable answer, ...).
    #[error("exchanging the authorization code failed: {0}")]
    TokenExchange(String),
    /// The token response carries no ID token.
    #[error("the OpenID provider's token response has no ID token")]
    IdTokenMissing,
    /// The ID token failed verification.
    #[error("the ID token is invalid ({problem}): {detail}")]
    IdTokenInvalid {
        problem: IdTokenProblem,
        detail: String,
    },
    /// Reading the userinfo endpoint failed.
    #[error("the OpenID provider's userinfo request failed: {0}")]
    UserInfo(String),
    /// Neither the ID token nor userinfo gave an email.
    #[error("the OpenID provider gave no email address (is the `email` scope allowed?)")]
    EmailMissing,
    /// The provider does not say that the email was verified.
    #[error("the OpenID provider has not verified the email address {0}")]
    EmailUnverified(String),
}

impl Oidc {
    /// Reads the provider's discovery document and JWKS and configures the client.
    pub async fn discover(settings: OidcSettings) -> Result<Oidc, OidcError> {
        let issuer = IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| OidcError::Settings(format!("issuer {:?}: {e}", settings.issuer)))?;
        check_scheme("issuer", issuer.url()).map_err(OidcError::Settings)?;
        let redirect = RedirectUrl::new(settings.redirect_uri.clone()).map_err(|e| {
            OidcError::Settings(format!("redirect URI {:?}: {e}", settings.redirect_uri))
        })?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("linkpulse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OidcError::HttpClient(chain(&e)))?;

        let metadata = CoreProviderMetadata::discover_async(issuer.clone(), &http)
            .await
            .map_err(|e| discovery_error(&settings.issuer, e))?;
        let discovery_failed = |reason: String| OidcError::Discovery {
            issuer: settings.issuer.clone(),
            reason,
        };

        let token_url = metadata
            .token_endpoint()
            .cloned()
            .ok_or_else(|| discovery_failed("no token_endpoint".into()))?;
        let authorization = metadata.authorization_endpoint().url();
        check_scheme("authorization endpoint", authorization)
            .and_then(|()| check_scheme("jwks_uri", metadata.jwks_uri().url()))
            .and_then(|()| check_scheme("token endpoint", token_url.url()))
            .and_then(|()| match metadata.userinfo_endpoint() {
                Some(userinfo) => check_scheme("userinfo endpoint", userinfo.url()),
                None => Ok(()),
            })
            .map_err(discovery_failed)?;
        let algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| asymmetric(alg))
            .cloned()
            .collect();
        if algs.is_empty() {
            return Err(discovery_failed(
                "the provider signs ID tokens with no asymmetric algorithm we accept".into(),
            ));
        }

        let client_id = ClientId::new(settings.client_id);
        let client_secret = ClientSecret::new(settings.client_secret);
        let jwks = metadata.jwks().clone();
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            client_id.clone(),
            Some(client_secret.clone()),
        )
        .set_token_uri(token_url)
        .set_redirect_uri(redirect);

        Ok(Oidc {
            client,
            client_id,
            client_secret,
            issuer,
            metadata,
            jwks: RwLock::new(jwks),
            algs,
            http,
        })
    }

    /// The issuer, as configured and confirmed by discovery.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// The URL to send the browser to (scopes `openid email`, PKCE S256, fresh state and
    /// nonce), and what to keep until the callback.
    pub fn begin(&self) -> (String, PendingSignIn) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = PendingSignIn {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            created_at_ms: now_ms(),
        };
        (url.into(), pending)
    }

    /// Completes a sign-in from the callback's `state` and `code`.
    pub async fn finish(
        &self,
        pending: &PendingSignIn,
        returned_state: &str,
        code: &str,
    ) -> Result<Identity, OidcError> {
        let age = now_ms().saturating_sub(pending.created_at_ms);
        if !(0..=PENDING_LIFETIME_MS).contains(&age) {
            return Err(OidcError::SignInExpired);
        }
        if pending.state.is_empty()
            || !bool::from(pending.state.as_bytes().ct_eq(returned_state.as_bytes()))
        {
            return Err(OidcError::StateMismatch);
        }

        let tokens = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcError::TokenRejected {
                    error: r.error().as_ref().to_owned(),
                    description: r.error_description().cloned(),
                },
                RequestTokenError::Request(e) => OidcError::ProviderUnreachable {
                    url: self.token_url(),
                    reason: chain(&e),
                },
                other => OidcError::TokenExchange(chain(&other)),
            })?;
        let id_token = tokens.id_token().ok_or(OidcError::IdTokenMissing)?;
        let nonce = Nonce::new(pending.nonce.clone());

        // Verify against the keys we have; a key id we do not know may be a rotation: fetch
        // the JWKS once more and verify again.
        let claims = match id_token.claims(&self.verifier()?, &nonce) {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                self.refresh_jwks().await?;
                id_token.claims(&self.verifier()?, &nonce)
            }
            other => other,
        }
        .map_err(id_token_error)?;

        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(|e| OidcError::IdTokenInvalid {
                    problem: IdTokenProblem::Signature,
                    detail: e.to_string(),
                })?;
            let verifier = self.verifier()?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| OidcError::IdTokenInvalid {
                    problem: IdTokenProblem::Signature,
                    detail: e.to_string(),
                })?;
            let actual =
                AccessTokenHash::from_token(tokens.access_token(), alg, key).map_err(|e| {
                    OidcError::IdTokenInvalid {
                        problem: IdTokenProblem::AccessTokenHash,
                        detail: e.to_string(),
                    }
                })?;
            if actual != *expected {
                return Err(OidcError::IdTokenInvalid {
                    problem: IdTokenProblem::AccessTokenHash,
                    detail: "at_hash does not match the access token".into(),
                });
            }
        }

        let subject = claims.subject().clone();
        let (email, verified) = match email_of(claims) {
            Some(found) => found,
            None => self.userinfo_email(tokens.access_token(), &subject).await?,
        };
        if !verified {
            return Err(OidcError::EmailUnverified(email));
        }
        Ok(Identity {
            subject: subject.as_str().to_owned(),
            email,
            email_verified: true,
        })
    }

    fn verifier(&self) -> Result<CoreIdTokenVerifier<'static>, OidcError> {
        let jwks = self
            .jwks
            .read()
            .map_err(|_| OidcError::Discovery {
                issuer: self.issuer.to_string(),
                reason: "the key set's lock is poisoned".into(),
            })?
            .clone();
        Ok(CoreIdTokenVerifier::new_confidential_client(
            self.client_id.clone(),
            self.client_secret.clone(),
            self.issuer.clone(),
            jwks,
        )
        .set_allowed_algs(self.algs.iter().cloned()))
    }

    async fn refresh_jwks(&self) -> Result<(), OidcError> {
        let fresh = CoreJsonWebKeySet::fetch_async(self.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| discovery_error(self.issuer.as_str(), e))?;
        let mut jwks = self.jwks.write().map_err(|_| OidcError::Discovery {
            issuer: self.issuer.to_string(),
            reason: "the key set's lock is poisoned".into(),
        })?;
        *jwks = fresh;
        Ok(())
    }

    /// The email and whether it is verified, from the userinfo endpoint (checked to be about
    /// the ID token's subject).
    async fn userinfo_email(
        &self,
        access_token: &openidconnect::AccessToken,
        subject: &SubjectIdentifier,
    ) -> Result<(String, bool), OidcError> {
        let request = self
            .client
            .user_info(access_token.clone(), Some(subject.clone()))
            .map_err(|_| OidcError::EmailMissing)?;
        let info: CoreUserInfoClaims =
            request
                .request_async(&self.http)
                .await
                .map_err(|e| match e {
                    openidconnect::UserInfoError::Request(e) => OidcError::ProviderUnreachable {
                        url: self
                            .client
                            .user_info_url()
                            .map(|u| u.to_string())
                            .unwrap_or_default(),
                        reason: chain(&e),
                    },
                    other => OidcError::UserInfo(chain(&other)),
                })?;
        let email = info.email().ok_or(OidcError::EmailMissing)?;
        Ok((
            email.as_str().to_owned(),
            info.email_verified().unwrap_or(false),
        ))
    }

    fn token_url(&self) -> String {
        self.client.token_uri().to_string()
    }
}

/// The email claim of a verified ID token and whether it is verified (absent: not).
fn email_of(claims: &CoreIdTokenClaims) -> Option<(String, bool)> {
    let email = claims.email()?;
    Some((
        email.as_str().to_owned(),
        claims.email_verified().unwrap_or(false),
    ))
}

fn id_token_error(e: openidconnect::ClaimsVerificationError) -> OidcError {
    use openidconnect::ClaimsVerificationError as E;
    let problem = match &e {
        E::SignatureVerification(_) => IdTokenProblem::Signature,
        E::InvalidNonce(_) => IdTokenProblem::Nonce,
        E::InvalidAudience(_) => IdTokenProblem::Audience,
        E::Expired(_) => IdTokenProblem::Expired,
        E::InvalidIssuer(_) => IdTokenProblem::Issuer,
        _ => IdTokenProblem::Other,
    };
    OidcError::IdTokenInvalid {
        problem,
        detail: chain(&e),
    }
}

fn discovery_error<RE: StdError + 'static>(
    issuer: &str,
    e: openidconnect::DiscoveryError<RE>,
) -> OidcError {
    match e {
        openidconnect::DiscoveryError::Request(e) => OidcError::ProviderUnreachable {
            url: issuer.to_owned(),
            reason: chain(&e),
        },
        other => OidcError::Discovery {
            issuer: issuer.to_owned(),
            reason: chain(&other),
        },
    }
}

/// Only signature algorithms with a public key: no `none`, no HMAC with the client secret.
fn asymmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    use CoreJwsSigningAlgorithm as A;
    matches!(
        alg,
        A::RsaSsaPkcs1V15Sha256
            | A::RsaSsaPkcs1V15Sha384
            | A::RsaSsaPkcs1V15Sha512
            | A::RsaSsaPssSha256
            | A::RsaSsaPssSha384
            | A::RsaSsaPssSha512
            | A::EcdsaP256Sha256
            | A::EcdsaP384Sha384
            | A::EcdsaP521Sha512
            | A::EdDsa
    )
}

/// `https://`, or `http://` to a loopback host only.
fn check_scheme(what: &str, url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        _ => Err(format!(
            "the {what} {url} must use https (plain http only on a loopback address)"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
