//! Who may sign: admins by bearer token (constant-time hash compare), a trusted reverse proxy's
//! user header, and the web page's sessions with their CSRF tokens.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tracing::warn;

use super::problem::ApiError;
use super::service::{Service, Session, MAX_SESSIONS};
use crate::core::b64::b64url;
use crate::issuer::error::IssuerError;

/// The session cookie.
const COOKIE: &str = "hwpass_session";

impl Service {
    /// The admin whose bearer token this is. Every configured hash is compared, in constant
    /// time, so the answer's timing says nothing about which (if any) matched.
    pub(super) fn admin_by_token(&self, token: &str) -> Option<String> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, hash) in &self.cfg.serve.admins {
            if bool::from(presented.ct_eq(hash)) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }

    /// The user a trusted reverse proxy vouches for, if the request came from one.
    pub(super) fn proxy_user(&self, peer: IpAddr, headers: &HeaderMap) -> Option<String> {
        let (name, trusted) = self.cfg.serve.proxy.as_ref()?;
        let value = headers.get(name.as_str())?;
        if !trusted.contains(&peer) {
            warn!(%peer, header = %name, "ignoring a proxy user header from an address not in [serve.proxy] trusted");
            return None;
        }
        value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .map(|v| format!("proxy:{v}"))
    }

    /// The admin behind an API call: a bearer token, or a trusted proxy's header.
    pub(super) fn api_user(&self, peer: IpAddr, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or(ApiError::Unauthorized(
                    "the Authorization header must be `Bearer <admin token>`",
                ))?;
            return self
                .admin_by_token(token.trim())
                .ok_or(ApiError::Unauthorized(
                    "the bearer token is not an admin token of this issuer",
                ));
        }
        self.proxy_user(peer, headers).ok_or(ApiError::Unauthorized(
            "this endpoint needs an admin bearer token",
        ))
    }

    pub(super) fn csrf_token(&self, sid: &str) -> String {
        // Invariant: HMAC accepts keys of any length.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.csrf_key).unwrap_or_else(|_| unreachable!());
        mac.update(sid.as_bytes());
        b64url(&mac.finalize().into_bytes())
    }

    pub(super) fn csrf_ok(&self, sid: &str, given: &str) -> bool {
        bool::from(self.csrf_token(sid).as_bytes().ct_eq(given.as_bytes()))
    }
}

fn session_key(sid: &str) -> String {
    hex::encode(Sha256::digest(sid.as_bytes()))
}

fn cookie_sid(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 43)
}

/// A browser's session: found from its cookie, or new (then the response sets the cookie).
#[derive(Debug)]
pub(super) struct WebSession {
    pub(super) sid: String,
    pub(super) fresh: bool,
    pub(super) user: Option<String>,
}

impl Service {
    pub(super) fn web_session(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<WebSession, ApiError> {
        let proxy = self.proxy_user(peer, headers);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sid) = cookie_sid(headers) {
            if let Some(s) = sessions.get(&session_key(&sid)) {
                if s.expires > now {
                    let user = s.user.clone().or(proxy);
                    return Ok(WebSession {
                        sid,
                        fresh: false,
                        user,
                    });
                }
            }
        }
        let sid = self.new_session(&mut sessions, None, now)?;
        Ok(WebSession {
            sid,
            fresh: true,
            user: proxy,
        })
    }

    pub(super) fn new_session(
        &self,
        sessions: &mut HashMap<String, Session>,
        user: Option<String>,
        now: i64,
    ) -> Result<String, ApiError> {
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_SESSIONS {
                // Anonymous sessions go first; admins stay logged in.
                sessions.retain(|_, s| s.user.is_some());
            }
        }
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw)
            .map_err(|e| ApiError::Issuer(IssuerError::Internal(format!("random: {e}"))))?;
        let sid = b64url(&raw);
        sessions.insert(
            session_key(&sid),
            Session {
                user,
                expires: now + self.cfg.serve.session_lifetime,
            },
        );
        Ok(sid)
    }

    /// Logs a session in: a new session id replaces the old one (no session fixation).
    pub(super) fn promote(
        &self,
        old_sid: &str,
        user: String,
        now: i64,
    ) -> Result<String, ApiError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(&session_key(old_sid));
        self.new_session(&mut sessions, Some(user), now)
    }

    pub(super) fn end_session(&self, sid: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(&session_key(sid));
    }

    pub(super) fn set_cookie(&self, sid: &str) -> HeaderValue {
        let secure = if self.tls { "; Secure" } else { "" };
        let v = format!(
            "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.cfg.serve.session_lifetime
        );
        // Invariant: the session id is base64url and the rest is ASCII.
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_must_be_43_characters() {
        let sid = "a".repeat(43);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {COOKIE}={sid}")).unwrap(),
        );
        assert_eq!(cookie_sid(&h).as_deref(), Some(sid.as_str()));
        let mut short = HeaderMap::new();
        short.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}=abc")).unwrap(),
        );
        assert_eq!(cookie_sid(&short), None);
        assert_ne!(session_key(&sid), sid, "only a hash of the id is kept");
    }
}
