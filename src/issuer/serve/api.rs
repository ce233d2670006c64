//! The JSON API and its errors as RFC 9457 problem details.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{denylist, issue, recent, revoke, typed, Shared};
use crate::core::claims::Attestation;
use crate::core::time::parse_duration;
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
                    E::Audit(_) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "audit",
                        "Audit log failed; no pass was issued",
                    ),
                    E::Config { .. } | E::Revocation(_) | E::Internal(_) => (
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    request: String,
    #[serde(default)]
    valid_for: Option<String>,
}

#[derive(Serialize)]
struct SignReply {
    pass: String,
    /// The pass is wrapped to the requesting TPM (`hwpass-dlv1.`), openable only there.
    sealed_to_tpm: bool,
    jti: String,
    sub: String,
    kind: &'static str,
    att: Attestation,
    nbf: i64,
    exp: i64,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::BadInput(
            "send Content-Type: application/json".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadInput(format!("body: {e}")))
}

pub(super) async fn api_sign(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let by = svc.api_user(peer.ip(), &headers)?;
    let b: SignBody = parse_json(&headers, &body)?;
    let lifetime = b
        .valid_for
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::BadInput(format!("valid_for: {e}")))?;
    let out = issue(&svc, b.request, lifetime, &by).await?;
    let c = &out.claims;
    let reply = SignReply {
        sealed_to_tpm: out.sealed,
        jti: c.jti.clone(),
        sub: c.sub.clone(),
        kind: c.hwb.kind.as_str(),
        att: c.hwb.att,
        nbf: c.nbf,
        exp: c.exp,
        pass: out.pass,
    };
    Ok((StatusCode::CREATED, axum::Json(reply)).into_response())
}

pub(super) async fn api_jwks(State(svc): State<Shared>) -> Response {
    typed(svc.bundle.to_json().to_string(), "application/jwk-set+json")
}

pub(super) async fn api_denylist(State(svc): State<Shared>) -> Result<Response, ApiError> {
    let list = denylist(&svc).await?;
    Ok(typed(format!("{list}\n"), "application/jwt"))
}

/// `POST /v1/revocations`: exactly one of `pass` and `device`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Revocation {
    #[serde(default)]
    pub(super) pass: Option<String>,
    #[serde(default)]
    pub(super) device: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

pub(super) async fn api_revoke(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let by = svc.api_user(peer.ip(), &headers)?;
    let what: Revocation = parse_json(&headers, &body)?;
    if what.reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ApiError::BadInput("reason: at most 500 characters".into()));
    }
    let out = revoke(&svc, what, by).await?;
    let status = if out.already {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(out)).into_response())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn api_issuances(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    svc.api_user(peer.ip(), &headers)?;
    let Query(q) = query.map_err(|e| ApiError::BadInput(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).min(1000);
    let rows = recent(&svc, limit).await?;
    Ok(axum::Json(rows).into_response())
}

pub(super) async fn api_openapi() -> Response {
    typed(include_str!("openapi.json"), "application/json")
}

/// Form extraction with the refusal as problem details (axum's default is plain text).
pub(super) fn form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, ApiError> {
    f.map(|Form(v)| v)
        .map_err(|e| ApiError::BadInput(e.body_text()))
}
