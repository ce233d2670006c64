//! Errors as the client sees them: RFC 9457 problem details (`application/problem+json`, type
//! `urn:hwpass:problem:<slug>`) for the API, and the same parts for the page's error pages.

use axum::extract::rejection::FormRejection;
use axum::extract::Form;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use crate::issuer::attest::AttestError;
use crate::issuer::error::IssuerError;

/// Why a request failed, as the client sees it.
#[derive(Debug)]
pub(super) enum ApiError {
    /// No credentials, or wrong ones.
    Unauthorized(&'static str),
    /// A form without a valid CSRF token.
    Csrf,
    /// The body is not what the endpoint takes.
    BadInput(String),
    /// No such thing.
    NotFound(String),
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
            Self::NotFound(d) => (StatusCode::NOT_FOUND, "not-found", "Not found", d.clone()),
            Self::Issuer(e) => {
                let (status, slug, title) = match e {
                    E::Request(_) => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "request-refused",
                        "Request refused",
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
                    // Fail closed: no pass without its audit record and checkpoint.
                    E::Audit(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "audit",
                        "Audit log unavailable; no pass was issued",
                    ),
                    E::Config { .. } | E::Revocation(_) | E::Internal(_) | E::TooLarge { .. } => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "Internal error",
                    ),
                };
                (status, slug, title, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title, detail) = self.parts();
        if status.is_server_error() {
            warn!(problem = slug, %detail, "request failed");
        }
        let body = serde_json::json!({
            "type": format!("urn:hwpass:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut resp = typed((status, body.to_string()), "application/problem+json");
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hwpass\""),
            );
        }
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

/// Form extraction with the refusal as problem details (axum's default is plain text).
pub(super) fn form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, ApiError> {
    f.map(|Form(v)| v)
        .map_err(|e| ApiError::BadInput(e.body_text()))
}
