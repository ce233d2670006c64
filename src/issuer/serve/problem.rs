//! Errors as the client sees them: RFC 9457 problem details (`application/problem+json`, type
//! `urn:hwpass:problem:<slug>`) for the API, and the same parts for the page's error pages.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use crate::issuer::attest::AttestError;
use crate::issuer::error::IssuerError;
use crate::issuer::policy::PolicyError;
use crate::oidc::OidcError;

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Unavailable { .. } => Self::IdpUnavailable(e.to_string()),
            OidcError::Config(_) => Self::Issuer(IssuerError::Internal(e.to_string())),
            other => Self::BadToken(other.to_string()),
        }
    }
}

/// Why a request failed, as the client sees it.
#[derive(Debug)]
pub(super) enum ApiError {
    /// No credentials, or wrong ones.
    Unauthorized(&'static str),
    /// A form without a valid CSRF token.
    Csrf,
    /// The body is not what the endpoint takes.
    BadInput(String),
    /// A lifetime asked for on the page outside 1 s … the policy's maximum for the binding.
    BadLifetime(String),
    /// The body did not arrive within the body timeout.
    SlowBody,
    /// The body is larger than any endpoint takes.
    TooLarge,
    /// This peer has too many requests in progress.
    Busy,
    /// No such thing.
    NotFound(String),
    /// An ID token presented to the API did not verify (why, in words).
    BadToken(String),
    /// The OpenID provider could not be reached: nothing was signed.
    IdpUnavailable(String),
    /// This issuer has no self-service sign-in (`[oidc]`, or its desktop client, missing).
    NoSelfService,
    /// The sign flow refused or failed.
    Issuer(IssuerError),
}

impl From<IssuerError> for ApiError {
    fn from(e: IssuerError) -> Self {
        Self::Issuer(e)
    }
}

impl ApiError {
    pub(super) fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        use IssuerError as E;
        match self {
            Self::Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                (*why).into(),
            ),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "csrf",
                "Form refused",
                "the form's CSRF token is missing or wrong; reload the page and try again".into(),
            ),
            Self::BadInput(d) => (
                StatusCode::BAD_REQUEST,
                "bad-input",
                "Malformed input",
                d.clone(),
            ),
            Self::BadLifetime(d) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-lifetime",
                "Lifetime refused",
                d.clone(),
            ),
            Self::SlowBody => (
                StatusCode::REQUEST_TIMEOUT,
                "slow-body",
                "Request body too slow",
                "the request body did not arrive in time".into(),
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request body too large",
                "the request body is larger than this service takes".into(),
            ),
            Self::Busy => (
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "Too many requests",
                "too many requests from your address are in progress; retry in a moment".into(),
            ),
            Self::NotFound(d) => (StatusCode::NOT_FOUND, "not-found", "Not found", d.clone()),
            Self::BadToken(d) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Sign-in refused",
                d.clone(),
            ),
            Self::IdpUnavailable(d) => (
                StatusCode::BAD_GATEWAY,
                "idp-unavailable",
                "Sign-in provider unavailable",
                format!("{d}; nothing was signed, try again later"),
            ),
            Self::NoSelfService => (
                StatusCode::NOT_FOUND,
                "no-self-service",
                "No self-service here",
                "this issuer has no sign-in for desktops ([oidc] desktop_client_id is not set); ask an administrator for a pass".into(),
            ),
            Self::Issuer(e) => {
                let (status, slug, title) = match e {
                    E::Request(_) => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "request-refused",
                        "Request refused",
                    ),
                    E::Policy(PolicyError::NotYours { .. }) => {
                        (StatusCode::FORBIDDEN, "not-yours", "Not your pass to ask for")
                    }
                    E::Policy(PolicyError::NoGroup { .. } | PolicyError::GroupNotAllowed { .. }) => {
                        (StatusCode::FORBIDDEN, "no-group", "Not in a group that may get passes")
                    }
                    E::Policy(PolicyError::RateLimited { .. }) => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate-limited",
                        "Passes per day reached",
                    ),
                    E::Attest(AttestError::Missing) | E::Policy(_) => {
                        (StatusCode::FORBIDDEN, "policy", "Refused by policy")
                    }
                    E::Attest(_) => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "attestation-refused",
                        "Attestation refused",
                    ),
                    E::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
                    E::Key(_) => (StatusCode::SERVICE_UNAVAILABLE, "hsm", "HSM unavailable"),
                    // The database behind the register is restarting or out of reach, or
                    // this replica runs on a read-only standby.
                    E::Revocation(r) if r.is_transient() || r.is_read_only() => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store",
                        "Revocation register unavailable",
                    ),
                    E::Sessions(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "sessions",
                        "Sign-in unavailable",
                    ),
                    // Fail closed: no pass without its audit record and checkpoint.
                    E::Audit(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "audit",
                        "Audit log unavailable; no pass was issued",
                    ),
                    _ => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "Internal error",
                    ),
                };
                // What went wrong inside stays in the log: a client (maybe anonymous) is not
                // shown file paths, parser messages or device codes.
                let detail = match slug {
                    "hsm" => "the HSM did not sign; try again later (the issuer's log says why)",
                    "audit" => "the audit log could not be written, so no pass was issued (the issuer's log says why)",
                    "store" => "the revocation register cannot be changed here now; try again in a moment (the issuer's log says why)",
                    "sessions" => "signed-in sessions cannot be read or stored here now; try again in a moment (the issuer's log says why)",
                    "internal" => "the issuer could not complete this (its log says why)",
                    _ => return (status, slug, title, e.to_string()),
                };
                (status, slug, title, detail.into())
            }
        }
    }
}

impl ApiError {
    /// Logs what the client is not told: the whole error behind a server-side failure.
    pub(super) fn log(&self) {
        match self {
            Self::Issuer(e) => {
                let (status, slug, ..) = self.parts();
                if status.is_server_error() {
                    warn!(problem = slug, error = %e, "request failed");
                }
            }
            Self::IdpUnavailable(why) => {
                warn!(problem = "idp-unavailable", error = %why, "sign-in provider unavailable")
            }
            Self::BadToken(why) => {
                warn!(problem = "unauthorized", error = %why, "ID token refused")
            }
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let (status, slug, title, detail) = self.parts();
        let body = serde_json::json!({
            "type": format!("urn:hwpass:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut resp = typed((status, body.to_string()), "application/problem+json");
        decorate(&mut resp, status);
        resp
    }
}

/// A body with its content type.
pub(super) fn typed(body: impl IntoResponse, kind: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    resp
}

/// The headers a refusal with `status` carries, whether as problem+json or as a page.
pub(super) fn decorate(resp: &mut Response, status: StatusCode) {
    let h = resp.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hwpass\""),
            );
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // The rest of the body was never read: the connection cannot carry another request.
        StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE => {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
}
