//! The company's OpenID Connect provider, as both sides talk to it through the `openidconnect`
//! crate (the one file that names it): discovery, the issuing service's authorization code
//! flow with PKCE and its ID-token checks, and the desktop's device authorization grant
//! (RFC 8628).
//!
//! HTTP goes through one `ureq` agent that follows no redirects (a redirect would let the
//! provider's answers send this process elsewhere) and hands OAuth error answers (4xx) to the
//! library as answers, not transport failures, so `authorization_pending` and `invalid_grant`
//! are read for what they are.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[cfg(feature = "issuer")]
use openidconnect::core::CoreAuthenticationFlow;
#[cfg(feature = "desktop")]
use openidconnect::core::CoreDeviceAuthorizationResponse;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, Client, ClientId, ClientSecret,
    DeviceAuthorizationUrl, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    HttpRequest, HttpResponse, IdTokenFields, IssuerUrl, ProviderMetadata, RequestTokenError,
    Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
#[cfg(feature = "issuer")]
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, CsrfToken, IdToken, IdTokenVerifier, JsonWebKeySet,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};

/// Largest answer read from the provider.
const MAX_ANSWER: u64 = 1 << 20;

#[cfg(feature = "issuer")]
/// An unknown signing key re-fetches the provider's keys at most this often (a token with
/// made-up key ids must not make this process hammer the provider).
const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(10);

/// A failed discovery is retried at most this often.
const DISCOVERY_RETRY_EVERY: Duration = Duration::from_secs(2);

#[cfg(feature = "issuer")]
/// ID tokens signed with anything else (`none`, or a shared-secret HMAC) are refused.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// Why talking to the provider failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OidcError {
    /// The provider could not be reached or did not answer as a provider does.
    #[error("the sign-in provider {issuer} is unavailable: {detail}")]
    Unavailable {
        /// The provider's issuer URL.
        issuer: String,
        /// What happened.
        detail: String,
    },
    /// The provider refused (an OAuth error answer, e.g. `invalid_grant`, `access_denied`).
    #[error("the sign-in provider refused: {0}")]
    Refused(String),
    /// An ID token failed verification.
    #[error("the ID token is not valid here: {0}")]
    Token(String),
    /// The configuration cannot work (an issuer or redirect that is not a URL, no device
    /// endpoint).
    #[error("{0}")]
    Config(String),
    /// The device code expired before anyone signed in (RFC 8628 `expired_token`, or its
    /// lifetime ran out while polling).
    #[cfg(feature = "desktop")]
    #[error("the sign-in code expired before sign-in was completed")]
    Expired,
    /// The person (or the provider) turned the device sign-in down (RFC 8628
    /// `access_denied`: "Abort" on the provider's page).
    #[cfg(feature = "desktop")]
    #[error("sign-in was turned down at the provider ({0})")]
    Denied(String),
}

/// Every claim beyond the standard ones (the groups claim, whatever it is called).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extra {
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}
impl AdditionalClaims for Extra {}

type IdFields = IdTokenFields<
    Extra,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenAnswer = StandardTokenResponse<IdFields, CoreTokenType>;
#[cfg(feature = "issuer")]
type Token =
    IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
type OidcClient<HasDeviceAuthUrl = EndpointNotSet> = Client<
    Extra,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenAnswer,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    HasDeviceAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Discovery metadata, with the device authorization endpoint (not among the core fields).
#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    #[serde(default)]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}
type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

#[derive(Debug)]
struct HttpError(String);
impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for HttpError {}

/// The library's HTTP client: `agent`, error statuses returned as answers.
fn http(agent: &ureq::Agent) -> impl Fn(HttpRequest) -> Result<HttpResponse, HttpError> + '_ {
    move |req: HttpRequest| {
        let err = |e: &dyn std::fmt::Display| HttpError(e.to_string());
        let mut r = agent.request(req.method().as_str(), &req.uri().to_string());
        for (name, value) in req.headers() {
            r = r.set(name.as_str(), value.to_str().map_err(|e| err(&e))?);
        }
        let sent = if req.method() == openidconnect::http::Method::POST {
            r.send_bytes(req.body())
        } else {
            r.call()
        };
        let resp = match sent {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => return Err(err(&t)),
        };
        let mut answer = openidconnect::http::Response::builder().status(resp.status());
        if let Some(ct) = resp.header("content-type") {
            answer = answer.header("content-type", ct);
        }
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_ANSWER)
            .read_to_end(&mut body)
            .map_err(|e| err(&e))?;
        answer.body(body).map_err(|e| err(&e))
    }
}

#[cfg(feature = "desktop")]
/// A provider's device authorization answer with its times bounded: the code lives at most an
/// hour, and polls are 1 to 60 s apart, so that no answer makes the desktop wait for days or
/// overflow a clock (the poller adds the interval, and 5 s on each `slow_down`).
fn bounded(
    details: CoreDeviceAuthorizationResponse,
) -> Result<CoreDeviceAuthorizationResponse, serde_json::Error> {
    let mut v = serde_json::to_value(&details)?;
    if let Some(e) = v.get("expires_in").and_then(serde_json::Value::as_u64) {
        v["expires_in"] = e.min(3600).into();
    }
    if let Some(i) = v.get("interval").and_then(serde_json::Value::as_u64) {
        v["interval"] = i.clamp(1, 60).into();
    }
    serde_json::from_value(v)
}

#[cfg(feature = "issuer")]
/// What a verified ID token says about the person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Person {
    /// The provider (`iss`).
    pub idp: String,
    /// `sub`, the provider's own id for the person.
    pub sub: String,
    /// The claim chosen as the identity (`email`, `preferred_username`, `sub`, …).
    pub identity: String,
    /// The groups claim, if any.
    pub groups: Vec<String>,
}

#[cfg(feature = "issuer")]
/// Which claims make a [`Person`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMap {
    /// The claim that names the person on their pass.
    pub identity: String,
    /// The claim that lists their groups.
    pub groups: String,
}

#[cfg(feature = "issuer")]
/// A started authorization: send the browser to `url`; keep the rest (secretly) until the
/// provider sends it back.
#[derive(Debug)]
pub struct Authorization {
    /// The provider's authorization URL, with state, nonce and the PKCE challenge.
    pub url: String,
    /// The `state` the callback must carry.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier for the code exchange.
    pub verifier: String,
}

#[cfg(feature = "desktop")]
/// A started device authorization (RFC 8628): show `verification_uri` and `user_code`.
#[derive(Debug)]
pub struct DeviceCode {
    /// Where the person signs in.
    pub verification_uri: String,
    /// The same with the code filled in, when the provider gives one (for a QR code).
    pub verification_uri_complete: Option<String>,
    /// The code the person types there.
    pub user_code: String,
    /// How long the code is valid.
    pub expires_in: Duration,
    details: CoreDeviceAuthorizationResponse,
}

#[derive(Debug)]
struct Known {
    meta: Metadata,
}

/// The provider, discovered lazily (the service starts while the provider is down and says so
/// at sign-in), its keys re-fetched when a token names one it does not know.
#[derive(Debug)]
pub struct Provider {
    issuer: String,
    agent: ureq::Agent,
    known: RwLock<Option<Arc<Known>>>,
    /// When discovery last failed, and the last keys re-fetch.
    last_try: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl Provider {
    /// The provider at `issuer` (its `iss`, exactly), reached through `agent`.
    pub fn new(issuer: &str, agent: ureq::Agent) -> Result<Self, OidcError> {
        IssuerUrl::new(issuer.to_string())
            .map_err(|e| OidcError::Config(format!("issuer {issuer:?} is not a URL: {e}")))?;
        Ok(Self {
            issuer: issuer.to_string(),
            agent,
            known: RwLock::new(None),
            last_try: Mutex::new((None, None)),
        })
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> OidcError {
        OidcError::Unavailable {
            issuer: self.issuer.clone(),
            detail: detail.to_string(),
        }
    }

    /// The discovery document and keys: fetched once, again after a failure (at most every
    /// [`DISCOVERY_RETRY_EVERY`]).
    fn known(&self) -> Result<Arc<Known>, OidcError> {
        if let Some(k) = self.known.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(k);
        }
        {
            let mut last = self.last_try.lock().unwrap_or_else(|p| p.into_inner());
            if last.0.is_some_and(|t| t.elapsed() < DISCOVERY_RETRY_EVERY) {
                return Err(self.unavailable("it did not answer a moment ago"));
            }
            last.0 = Some(Instant::now());
        }
        let issuer = IssuerUrl::new(self.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer: {e}")))?;
        let meta = Metadata::discover(&issuer, &http(&self.agent)).map_err(|e| {
            use openidconnect::DiscoveryError as D;
            match e {
                D::Request(e) => self.unavailable(e),
                D::Response(status, _, _) => {
                    self.unavailable(format!("its discovery document answered {status}"))
                }
                other => self.unavailable(format!("its discovery document: {other}")),
            }
        })?;
        let known = Arc::new(Known { meta });
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = Some(known.clone());
        Ok(known)
    }

    #[cfg(feature = "issuer")]
    /// Fetches the provider's keys again, unless that was done within
    /// [`JWKS_REFETCH_EVERY`]; true when they were.
    fn refetch_keys(&self) -> Result<bool, OidcError> {
        {
            let mut last = self.last_try.lock().unwrap_or_else(|p| p.into_inner());
            if last.1.is_some_and(|t| t.elapsed() < JWKS_REFETCH_EVERY) {
                return Ok(false);
            }
            last.1 = Some(Instant::now());
        }
        let known = self.known()?;
        let jwks = JsonWebKeySet::fetch(known.meta.jwks_uri(), &http(&self.agent))
            .map_err(|e| self.unavailable(format!("its keys: {e}")))?;
        let meta = known.meta.clone().set_jwks(jwks);
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Known { meta }));
        Ok(true)
    }

    fn client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<(OidcClient, Arc<Known>), OidcError> {
        let known = self.known()?;
        let client = Client::from_provider_metadata(
            known.meta.clone(),
            ClientId::new(client_id.to_string()),
            secret.map(|s| ClientSecret::new(s.to_string())),
        );
        Ok((client, known))
    }

    #[cfg(feature = "issuer")]
    /// Starts an authorization code flow with PKCE (S256), a random state and nonce.
    pub fn authorize(
        &self,
        client_id: &str,
        redirect: &str,
        scopes: &[String],
    ) -> Result<Authorization, OidcError> {
        let (client, _) = self.client(client_id, None)?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|e| OidcError::Config(format!("redirect_url: {e}")))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = client.set_redirect_uri(redirect);
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    #[cfg(feature = "issuer")]
    /// Exchanges an authorization code (with its PKCE verifier) and verifies the ID token:
    /// signature, `iss`, `aud` (this client), `exp` against `now`, and the `nonce`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        client_id: &str,
        secret: &str,
        redirect: &str,
        code: &str,
        verifier: &str,
        nonce: &str,
        claims: &ClaimMap,
        now: i64,
    ) -> Result<Person, OidcError> {
        let (client, _) = self.client(client_id, Some(secret))?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|e| OidcError::Config(format!("redirect_url: {e}")))?;
        let answer: TokenAnswer = client
            .set_redirect_uri(redirect)
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request(&http(&self.agent))
            .map_err(|e| self.token_error(e))?;
        let token = answer
            .id_token()
            .ok_or_else(|| OidcError::Token("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        self.verify_token(token, client_id, Some(&nonce), claims, now)
    }

    #[cfg(feature = "issuer")]
    /// Verifies an ID token made for `client_id` (the desktop's, from the device grant): no
    /// nonce is expected.
    pub fn verify(
        &self,
        token: &str,
        client_id: &str,
        claims: &ClaimMap,
        now: i64,
    ) -> Result<Person, OidcError> {
        let token: Token = token
            .trim()
            .parse()
            .map_err(|_| OidcError::Token("it is not a signed JWT".into()))?;
        self.verify_token(&token, client_id, None, claims, now)
    }

    #[cfg(feature = "issuer")]
    fn verify_token(
        &self,
        token: &Token,
        client_id: &str,
        nonce: Option<&Nonce>,
        map: &ClaimMap,
        now: i64,
    ) -> Result<Person, OidcError> {
        let check = |known: &Known| {
            let verifier: IdTokenVerifier<'_, CoreJsonWebKey> = IdTokenVerifier::new_public_client(
                ClientId::new(client_id.to_string()),
                known.meta.issuer().clone(),
                known.meta.jwks().clone(),
            )
            .set_allowed_algs(ALLOWED_ALGS)
            .set_time_fn(move || {
                chrono::DateTime::from_timestamp(now, 0).unwrap_or(chrono::DateTime::UNIX_EPOCH)
            });
            let claims = match nonce {
                Some(n) => token.claims(&verifier, n),
                None => token.claims(&verifier, |n: Option<&Nonce>| match n {
                    None => Ok(()),
                    Some(_) => Err("a nonce where none was sent".to_string()),
                }),
            };
            claims.cloned()
        };
        let known = self.known()?;
        let claims = match check(&known) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.refetch_keys()? => check(&*self.known()?),
            other => other,
        }
        .map_err(|e| OidcError::Token(claims_error(&e)))?;
        if claims.email_verified() == Some(false) && map.identity == "email" {
            return Err(OidcError::Token(
                "the provider says this email address is not verified".into(),
            ));
        }
        let extra = &claims.additional_claims().other;
        let identity = match map.identity.as_str() {
            "sub" => Some(claims.subject().to_string()),
            "email" => claims.email().map(|e| e.to_string()),
            "preferred_username" => claims.preferred_username().map(|u| u.to_string()),
            other => extra
                .get(other)
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            OidcError::Token(format!(
                "it carries no '{}' claim to name the person by (set [oidc] identity_claim, or ask the provider to send it)",
                map.identity
            ))
        })?;
        let groups = match extra.get(&map.groups) {
            None => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            Some(serde_json::Value::String(g)) => vec![g.clone()],
            Some(_) => {
                return Err(OidcError::Token(format!(
                    "its '{}' claim is not a list of group names",
                    map.groups
                )))
            }
        };
        Ok(Person {
            idp: claims.issuer().to_string(),
            sub: claims.subject().to_string(),
            identity,
            groups,
        })
    }

    /// A token endpoint's failure (code exchange or device grant, whose error codes differ).
    fn token_error<RE, T>(&self, e: RequestTokenError<RE, StandardErrorResponse<T>>) -> OidcError
    where
        RE: std::error::Error + 'static,
        T: openidconnect::ErrorResponseType + AsRef<str> + std::fmt::Display,
    {
        match e {
            RequestTokenError::ServerResponse(r) => {
                OidcError::Refused(match r.error_description() {
                    Some(d) => format!("{}: {d}", r.error().as_ref()),
                    None => r.error().as_ref().to_string(),
                })
            }
            RequestTokenError::Request(e) => self.unavailable(e),
            RequestTokenError::Parse(_, _) => {
                self.unavailable("its token endpoint sent an answer that is not a token response")
            }
            RequestTokenError::Other(o) => self.unavailable(o),
        }
    }

    #[cfg(feature = "desktop")]
    /// The endpoints the device grant talks to, as the provider's discovery document names
    /// them (discovered now if need be): the device authorization endpoint, then the token
    /// endpoint (which hands over the ID token).
    pub fn device_endpoints(&self) -> Result<[String; 2], OidcError> {
        let known = self.known()?;
        let device = self.device_endpoint(&known)?;
        let token = known.meta.token_endpoint().ok_or_else(|| {
            OidcError::Config(format!(
                "the sign-in provider {} names no token endpoint in its discovery document",
                self.issuer
            ))
        })?;
        Ok([device.url().to_string(), token.url().to_string()])
    }

    #[cfg(feature = "desktop")]
    /// The device authorization endpoint `known` names, or why there is none.
    fn device_endpoint<'k>(
        &self,
        known: &'k Known,
    ) -> Result<&'k DeviceAuthorizationUrl, OidcError> {
        known
            .meta
            .additional_metadata()
            .device_authorization_endpoint
            .as_ref()
            .ok_or_else(|| {
                OidcError::Config(format!(
                    "the sign-in provider {} offers no device sign-in (no device_authorization_endpoint in its discovery document)",
                    self.issuer
                ))
            })
    }

    #[cfg(feature = "desktop")]
    /// Starts the device authorization grant (RFC 8628 §3.1) for the public client
    /// `client_id`.
    pub fn device_start(
        &self,
        client_id: &str,
        scopes: &[String],
    ) -> Result<DeviceCode, OidcError> {
        let (client, known) = self.client(client_id, None)?;
        let url = self.device_endpoint(&known)?.clone();
        let client = client.set_device_authorization_url(url);
        let mut req = client.exchange_device_code();
        for s in scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let details: CoreDeviceAuthorizationResponse = req
            .request(&http(&self.agent))
            .map_err(|e| self.token_error(e))?;
        let details = bounded(details)
            .map_err(|e| self.unavailable(format!("its device authorization answer: {e}")))?;
        Ok(DeviceCode {
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details
                .verification_uri_complete()
                .map(|u| u.secret().to_string()),
            user_code: details.user_code().secret().to_string(),
            expires_in: details.expires_in(),
            details,
        })
    }

    #[cfg(feature = "desktop")]
    /// Polls the token endpoint (RFC 8628 §3.4) until the person has signed in, honouring the
    /// provider's interval and `slow_down` (the crate's poller), sleeping with `sleep`
    /// between polls; returns the ID token as sent. The token is not verified here: the
    /// issuing service it is meant for verifies it.
    pub fn device_wait(
        &self,
        client_id: &str,
        code: &DeviceCode,
        sleep: impl Fn(Duration),
    ) -> Result<String, OidcError> {
        let (client, known) = self.client(client_id, None)?;
        let url = self.device_endpoint(&known)?.clone();
        // The poller retries a provider that does not answer (backing off) until the code's
        // lifetime is over and then reports the code expired: remember the last failure so
        // that case is told as what it was.
        let last_failure = std::cell::RefCell::new(None::<String>);
        let base = http(&self.agent);
        let polled = |req: HttpRequest| {
            let r = base(req);
            *last_failure.borrow_mut() = r.as_ref().err().map(|e| e.to_string());
            r
        };
        let answer: TokenAnswer = client
            .set_device_authorization_url(url)
            .exchange_device_access_token(&code.details)
            .map_err(|e| OidcError::Config(e.to_string()))?
            .request(&polled, sleep, Some(code.expires_in))
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) if r.error().as_ref() == "expired_token" => {
                    match last_failure.borrow_mut().take() {
                        Some(failure) => self.unavailable(format!(
                            "it stopped answering while waiting for sign-in ({failure})"
                        )),
                        None => OidcError::Expired,
                    }
                }
                RequestTokenError::ServerResponse(r) if r.error().as_ref() == "access_denied" => {
                    OidcError::Denied(match r.error_description() {
                        Some(d) => format!("access_denied: {d}"),
                        None => "access_denied".into(),
                    })
                }
                other => self.token_error(other),
            })?;
        let token = answer
            .id_token()
            .ok_or_else(|| OidcError::Token("the provider sent no ID token".into()))?;
        Ok(token.to_string())
    }
}

#[cfg(feature = "issuer")]
/// A verification failure in words a person (and a log) can use.
fn claims_error(e: &ClaimsVerificationError) -> String {
    use ClaimsVerificationError as C;
    match e {
        C::Expired(_) => "it has expired".into(),
        C::InvalidAudience(_) => "it was made for another application (audience)".into(),
        C::InvalidIssuer(_) => "it was issued by another provider".into(),
        C::InvalidNonce(_) => "its nonce does not match this sign-in".into(),
        C::SignatureVerification(SignatureVerificationError::NoMatchingKey) => {
            "it is signed with a key the provider does not publish".into()
        }
        C::SignatureVerification(SignatureVerificationError::DisallowedAlg(a)) => {
            format!("its signature algorithm is not accepted ({a})")
        }
        C::SignatureVerification(_) => "its signature does not verify".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "desktop")]
    #[test]
    fn a_providers_device_code_times_are_bounded() {
        let answer = |expires: u64, interval: u64| -> CoreDeviceAuthorizationResponse {
            serde_json::from_value(serde_json::json!({
                "device_code": "d", "user_code": "U", "verification_uri": "https://idp.example/device",
                "expires_in": expires, "interval": interval,
            }))
            .unwrap()
        };
        let b = bounded(answer(9_223_372_036_854_775_807, u64::MAX / 2)).unwrap();
        assert_eq!(b.expires_in(), Duration::from_secs(3600));
        assert_eq!(b.interval(), Duration::from_secs(60));
        let b = bounded(answer(600, 0)).unwrap();
        assert_eq!(b.expires_in(), Duration::from_secs(600));
        assert_eq!(b.interval(), Duration::from_secs(1));
        let b = bounded(answer(300, 5)).unwrap();
        assert_eq!(
            (b.expires_in(), b.interval()),
            (Duration::from_secs(300), Duration::from_secs(5))
        );
    }

    #[test]
    fn claims_beyond_the_standard_ones_are_kept_by_name() {
        let e: Extra = serde_json::from_str(r#"{"groups":["a","b"],"roles":"x"}"#).unwrap();
        assert_eq!(e.other["groups"], serde_json::json!(["a", "b"]));
        assert_eq!(e.other["roles"], "x");
    }

    #[test]
    fn an_issuer_must_be_a_url() {
        let agent = ureq::AgentBuilder::new().build();
        assert!(matches!(
            Provider::new("not a url", agent),
            Err(OidcError::Config(_))
        ));
    }
}
