//! Sign-in through the company's OpenID provider: `/oidc/login` starts an authorization code
//! flow with PKCE (its state, nonce and verifier travel in a sealed cookie, so a visitor who
//! never finishes costs the server nothing), `/oidc/callback` checks the state (once), has the
//! code exchanged and the ID token verified on the blocking pool, and opens a session for a
//! person whose groups let them in.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use subtle::ConstantTimeEq as _;
use tracing::{info, warn};

use super::auth::{Pending, PENDING_LIFETIME};
use super::page::{error_page, esc, render, see_other, session};
use super::problem::ApiError;
use super::service::{blocking, now, Shared};
use crate::issuer::error::IssuerError;
use crate::oidc::OidcError;

/// The query parameters a provider's answer may carry that matter here; others (Keycloak's
/// `session_state`, Google's `scope`/`authuser`/`hd`, …) are ignored.
const KNOWN: [&str; 5] = ["code", "state", "iss", "error", "error_description"];

/// `GET /oidc/login`: to the provider.
pub(super) async fn login(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ws = session(&svc, peer, &headers)?;
    let Some(oidc) = svc.cfg.oidc.clone() else {
        return Ok(error_page(
            &svc,
            &ws,
            &ApiError::NotFound("this issuer has no company sign-in".into()),
        ));
    };
    if ws.sid.is_some() {
        return Ok(see_other("/"));
    }
    let now = now()?;
    let started = blocking(&svc, move |svc| {
        let provider = provider(svc)?;
        Ok(provider.authorize(&oidc.client_id, &oidc.redirect_url, &oidc.scopes))
    })
    .await?;
    let auth = match started {
        Ok(a) => a,
        Err(e) => return Ok(error_page(&svc, &ws, &unavailable_page(&svc, e))),
    };
    let cookie = svc.pending_cookie(&Pending {
        state: auth.state,
        nonce: auth.nonce,
        verifier: auth.verifier,
        at: now,
    })?;
    let mut resp = see_other(&auth.url);
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

fn provider(svc: &super::service::Service) -> Result<&crate::oidc::Provider, IssuerError> {
    svc.provider
        .as_ref()
        .ok_or_else(|| IssuerError::Internal("no sign-in provider".into()))
}

/// A provider failure as the page says it: admins can still sign in with their token.
fn unavailable_page(svc: &Shared, e: OidcError) -> ApiError {
    let e = ApiError::from(e);
    match e {
        ApiError::IdpUnavailable(d) if !svc.cfg.serve.admins.is_empty() => {
            ApiError::IdpUnavailable(format!("{d} (admins can still sign in with their token)"))
        }
        other => other,
    }
}

/// The callback's parameters, each at most once.
fn parameters(query: Option<&str>) -> Result<std::collections::HashMap<String, String>, String> {
    let mut out = std::collections::HashMap::new();
    let query = query.unwrap_or_default();
    if query.len() > 8 * 1024 {
        return Err("the sign-in answer is too long".into());
    }
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !KNOWN.contains(&k.as_ref()) {
            continue;
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("the sign-in answer carries '{k}' twice"));
        }
    }
    Ok(out)
}

/// `GET /oidc/callback`: back from the provider.
pub(super) async fn callback(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ws = session(&svc, peer, &headers)?;
    let now = now()?;
    let refuse = |status: StatusCode, why: &str| {
        warn!(%peer, why, "company sign-in refused");
        let body = format!(
            r#"<p class="error" id="error">{}</p><p><a href="/oidc/login" id="again">Sign in again</a> · <a href="/">Home</a></p>"#,
            esc(why)
        );
        let mut resp = render(&svc, &ws, status, "Sign-in refused", &body);
        resp.headers_mut()
            .append(header::SET_COOKIE, svc.clear_pending());
        resp
    };
    let Some(oidc) = svc.cfg.oidc.clone() else {
        return Ok(see_other("/"));
    };
    let q = match parameters(query.as_deref()) {
        Ok(q) => q,
        Err(why) => return Ok(refuse(StatusCode::BAD_REQUEST, &why)),
    };
    let Some(pending) = svc.pending(&headers) else {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "this sign-in was not started in this browser, or it took longer than 10 minutes; start again",
        ));
    };
    if !(pending.at..pending.at.saturating_add(PENDING_LIFETIME)).contains(&now) {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "this sign-in took longer than 10 minutes; start again",
        ));
    }
    let state_ok = q
        .get("state")
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(pending.state.as_bytes())));
    if !state_ok {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "the sign-in answer does not belong to the sign-in this browser started (state); start again",
        ));
    }
    if !svc.use_state(&pending.state, now)? {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "this sign-in answer was already used; start again",
        ));
    }
    // RFC 9207: a provider that names itself must be this one (a mix-up attack otherwise).
    if q.get("iss").is_some_and(|iss| *iss != oidc.issuer) {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "the sign-in answer came from another provider (iss)",
        ));
    }
    if let Some(error) = q.get("error") {
        let why = match error.as_str() {
            "access_denied" => "sign-in was cancelled or refused at the provider".to_string(),
            other => format!(
                "the provider answered {}{}",
                other.chars().take(64).collect::<String>(),
                q.get("error_description")
                    .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                    .unwrap_or_default()
            ),
        };
        return Ok(refuse(StatusCode::FORBIDDEN, &why));
    }
    let Some(code) = q.get("code").cloned() else {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "the sign-in answer carries no code",
        ));
    };
    let finished = blocking(&svc, move |svc| {
        let provider = provider(svc)?;
        let secret = secrecy::ExposeSecret::expose_secret(&oidc.client_secret).to_string();
        Ok(provider.finish(
            &oidc.client_id,
            &secret,
            &oidc.redirect_url,
            &code,
            &pending.verifier,
            &pending.nonce,
            &oidc.claims,
            now,
        ))
    })
    .await?;
    let person = match finished {
        Ok(p) => p,
        Err(e @ OidcError::Unavailable { .. }) => {
            let e = unavailable_page(&svc, e);
            let mut resp = error_page(&svc, &ws, &e);
            resp.headers_mut()
                .append(header::SET_COOKIE, svc.clear_pending());
            return Ok(resp);
        }
        Err(e) => return Ok(refuse(StatusCode::UNAUTHORIZED, &e.to_string())),
    };
    let admin_group = svc.admin_group_of(&person);
    if admin_group.is_none() {
        if let Err(e) = svc.cfg.policy.group_for(&person.groups) {
            info!(who = %person.identity, "company sign-in: in no group that may get passes");
            return Ok(refuse(StatusCode::FORBIDDEN, &e.to_string()));
        }
    }
    info!(who = %person.identity, idp = %person.idp, admin = admin_group.is_some(), "company sign-in");
    let identity = person.identity.clone();
    let cookies = svc.sign_in(
        identity.clone(),
        admin_group.is_some(),
        Some(person),
        None,
        now,
    )?;
    // A page, not a redirect: the session cookie is SameSite=Strict, and a browser still in
    // the provider's cross-site redirect chain would not send it to "/".
    let body = format!(
        r#"<p class="notice" id="signed-in">Signed in as <b>{}</b>.</p><p><a href="/" id="continue">Continue</a></p>"#,
        esc(&identity)
    );
    let mut resp = render(&svc, &ws, StatusCode::OK, "Signed in", &body);
    resp.headers_mut()
        .insert(header::REFRESH, HeaderValue::from_static("0; url=/"));
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp.headers_mut()
        .append(header::SET_COOKIE, svc.clear_pending());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parameters_are_single_and_the_unknown_ignored() {
        let q = parameters(Some("code=a&state=b&session_state=x&scope=openid")).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q["code"], "a");
        assert!(parameters(Some("code=a&code=b"))
            .unwrap_err()
            .contains("twice"));
        assert!(parameters(None).unwrap().is_empty());
        assert!(parameters(Some(&"a".repeat(9000))).is_err());
    }
}
