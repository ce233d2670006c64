//! The JSON API (`/v1/…`, documented in `/v1/openapi.json`).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::problem::{typed, ApiError};
use super::service::{
    blocking, denylist, issue, now, passes_left, recent, revoke, Asker, Issued, Revocation, Shared,
};
use crate::core::claims::Attestation;
use crate::core::json::check_strict;
use crate::core::time::parse_duration;

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
    /// The requesting desktop's clock was this far ahead once (its time mark): tell the person.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_ahead_seconds: Option<i64>,
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
    // Strict first: a duplicate key or a null anywhere is refused before serde reads the
    // body (serde would keep one of two duplicates, and read null as a missing member).
    check_strict(body).map_err(|e| ApiError::BadInput(format!("body: {e}")))?;
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
    let out = issue(&svc, b.request, lifetime, &Asker::admin(by)).await?;
    Ok((StatusCode::CREATED, axum::Json(sign_reply(out))).into_response())
}

fn sign_reply(out: Issued) -> SignReply {
    let c = &out.claims;
    SignReply {
        sealed_to_tpm: out.sealed,
        jti: c.jti.clone(),
        sub: c.sub.clone(),
        kind: c.hwb.kind.as_str(),
        att: c.hwb.att,
        nbf: c.nbf,
        exp: c.exp,
        clock_ahead_seconds: out.clock_ahead,
        pass: out.pass,
    }
}

// ---------------------------------------------------------------------------------------------
// Self-service for desktops (`hwpass request --server`): an ID token from the device grant

/// `GET /v1/self`: which provider and client a desktop signs in with.
pub(super) async fn self_info(State(svc): State<Shared>) -> Result<Response, ApiError> {
    let oidc = svc.cfg.oidc.as_ref().ok_or(ApiError::NoSelfService)?;
    let client = oidc
        .desktop_client_id
        .as_ref()
        .ok_or(ApiError::NoSelfService)?;
    Ok(axum::Json(serde_json::json!({
        "idp": oidc.issuer,
        "client_id": client,
        "scopes": oidc.scopes,
        "identity_claim": oidc.claims.identity,
    }))
    .into_response())
}

/// The person behind `Authorization: Bearer <ID token>`, verified with the desktop client
/// as the audience, and what they may get.
async fn self_asker(svc: &Shared, headers: &HeaderMap) -> Result<Asker, ApiError> {
    let oidc = svc.cfg.oidc.as_ref().ok_or(ApiError::NoSelfService)?;
    let client = oidc
        .desktop_client_id
        .clone()
        .ok_or(ApiError::NoSelfService)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string())
        .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
        .ok_or(ApiError::Unauthorized(
            "send the ID token from signing in as `Authorization: Bearer <ID token>`",
        ))?;
    let now = now()?;
    let person = blocking(svc, move |svc| {
        let provider = svc.provider.as_ref().ok_or_else(|| {
            crate::issuer::error::IssuerError::Internal("no sign-in provider".into())
        })?;
        Ok(provider.verify(&token, &client, &svc.cfg.oidc_claims(), now))
    })
    .await?
    .map_err(ApiError::from)?;
    // Here everyone asks for themselves: an admin group gives no more than the person's own
    // group does.
    svc.asker(&person.identity, false, Some(&person), false)
}

/// `GET /v1/self/whoami`: who the ID token names and what their group lets them have.
pub(super) async fn self_whoami(
    State(svc): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let asker = self_asker(&svc, &headers).await?;
    let left = passes_left(&svc, &asker).await?;
    let Some((identity, rule)) = &asker.own else {
        return Err(ApiError::NoSelfService);
    };
    Ok(axum::Json(serde_json::json!({
        "identity": identity,
        "idp": asker.idp,
        "group": rule.name,
        "max_lifetime": rule.max_lifetime,
        "software": rule.software,
        "attestation_required": rule.attestation,
        "passes_left_today": left,
    }))
    .into_response())
}

/// `POST /v1/self/passes`: the person's own pass.
pub(super) async fn self_sign(
    State(svc): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let asker = self_asker(&svc, &headers).await?;
    let b: SignBody = parse_json(&headers, &body)?;
    let lifetime = b
        .valid_for
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::BadInput(format!("valid_for: {e}")))?;
    let out = issue(&svc, b.request, lifetime, &asker).await?;
    Ok((StatusCode::CREATED, axum::Json(sign_reply(out))).into_response())
}

pub(super) async fn api_jwks(State(svc): State<Shared>) -> Response {
    typed(svc.bundle.to_json().to_string(), "application/jwk-set+json")
}

/// `GET /v1/denylist`: the signed list with an `ETag` (a hash of the list, the same on every
/// replica that hands out the same list); `If-None-Match` with it gets 304 while it is current.
pub(super) async fn api_denylist(
    State(svc): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let list = denylist(&svc).await?;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(list.as_bytes());
    let etag = format!("\"{}\"", hex::encode(&digest[..16]));
    // RFC 9110 §13.1.2: a list of entity tags (weak comparison), or `*`.
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag);
    let mut resp = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        typed(format!("{list}\n"), "application/jwt")
    };
    let h = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Revalidate every time (a revocation must show at once), but keep it to compare.
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    Ok(resp)
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
