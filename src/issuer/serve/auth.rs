//! Who may sign: admins by bearer token (constant-time hash compare), a reverse proxy's user
//! header (believed only with the proxy's shared secret, or from its own non-loopback
//! address), and the web page's sessions with their CSRF tokens.
//!
//! Only people who signed in have server-side state: a session, bounded per user. Anybody
//! else's login form is protected by a signed double-submit token — a random nonce in a
//! cookie, and in the form the HMAC of that nonce under a per-process key — so no number of
//! anonymous visits can push a session (or a pending login) out.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tracing::warn;

use super::problem::ApiError;
use super::service::{Service, Session};
use crate::core::b64::{b64url, b64url_decode};
use crate::issuer::error::IssuerError;
use crate::issuer::store::StoredSession;
use crate::oidc::Person;

/// The signed-in session's cookie.
const SESSION_COOKIE: &str = "hwpass_session";
/// The login form's CSRF nonce cookie.
const LOGIN_COOKIE: &str = "hwpass_login";
/// A sign-in at the provider under way: its state, nonce and PKCE verifier, encrypted.
const PENDING_COOKIE: &str = "hwpass_signin";
/// How long a sign-in at the provider may take.
pub(super) const PENDING_LIFETIME: i64 = 600;
/// Session ids and nonces: 32 random bytes, base64url.
const ID_LEN: usize = 43;

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

    /// The user a reverse proxy vouches for: its header, believed only when the request
    /// carries the proxy's shared secret (when one is configured) and comes from one of its
    /// addresses (when those are configured). Each header must be there once.
    pub(super) fn proxy_user(&self, peer: IpAddr, headers: &HeaderMap) -> Option<String> {
        let proxy = self.cfg.serve.proxy.as_ref()?;
        let value = single(headers, &proxy.header)?;
        if !proxy.trusted.is_empty() && !proxy.trusted.contains(&peer) {
            warn!(%peer, header = %proxy.header, "ignoring a proxy user header from an address not in [serve.proxy] trusted");
            return None;
        }
        if let Some((name, hash)) = &proxy.secret {
            // Hashing first makes the compare independent of the presented length.
            let presented: Option<[u8; 32]> =
                single(headers, name).map(|v| Sha256::digest(v.as_bytes()).into());
            if !presented.is_some_and(|p| bool::from(p.ct_eq(hash))) {
                warn!(%peer, header = %proxy.header, "ignoring a proxy user header without the proxy's secret");
                return None;
            }
        }
        value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control))
            .map(|v| format!("proxy:{v}"))
    }

    /// The admin behind an API call: a bearer token (the scheme in any case, RFC 7235 §2.1),
    /// or the proxy's header.
    pub(super) fn api_user(&self, peer: IpAddr, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or(ApiError::Unauthorized(
                    "the Authorization header must be `Bearer <admin token>`",
                ))?;
            return self.admin_by_token(token).ok_or(ApiError::Unauthorized(
                "the bearer token is not an admin token of this issuer",
            ));
        }
        self.proxy_user(peer, headers).ok_or(ApiError::Unauthorized(
            "this endpoint needs an admin bearer token",
        ))
    }

    /// HMAC-SHA-256 of `value` under the per-process key, for `purpose`.
    fn mac(&self, purpose: &str, value: &str) -> String {
        // Invariant: HMAC accepts keys of any length.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.csrf_key).unwrap_or_else(|_| unreachable!());
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        b64url(&mac.finalize().into_bytes())
    }

    /// Cookies are `Secure` under TLS and behind a TLS-terminating proxy; then they also carry
    /// the `__Host-` prefix, which a browser accepts only from a secure origin, without a
    /// Domain and for Path=/ — no sibling host can plant one.
    pub(super) fn secure_cookies(&self) -> bool {
        self.tls || self.cfg.serve.behind_tls_proxy
    }

    fn cookie_name(&self, base: &str) -> String {
        if self.secure_cookies() {
            format!("__Host-{base}")
        } else {
            base.to_string()
        }
    }

    fn cookie(&self, base: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
        self.cookie_with(base, value, max_age, "Strict")
    }

    fn cookie_with(
        &self,
        base: &str,
        value: &str,
        max_age: Option<i64>,
        same_site: &str,
    ) -> HeaderValue {
        let secure = if self.secure_cookies() {
            "; Secure"
        } else {
            ""
        };
        let age = max_age
            .map(|a| format!("; Max-Age={a}"))
            .unwrap_or_default();
        let v = format!(
            "{}={value}; Path=/; HttpOnly; SameSite={same_site}{age}{secure}",
            self.cookie_name(base)
        );
        // Invariant: names and values are base64url or ASCII.
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The one value of a header; none when it is missing or given more than once.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

fn session_key(sid: &str) -> String {
    hex::encode(Sha256::digest(sid.as_bytes()))
}

/// A cookie's value: a random id of the expected length, or nothing.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    cookie_raw(headers, name).filter(|v| v.len() == ID_LEN)
}

/// A cookie's value, when it is base64url (at most 4 KiB).
fn cookie_raw(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() <= 4096 && v.bytes().all(crate::core::b64::is_b64url_byte))
}

fn random_id() -> Result<String, ApiError> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ApiError::Issuer(IssuerError::Internal(format!("random: {e}"))))?;
    Ok(b64url(&raw))
}

/// A browser as the page sees it.
#[derive(Debug)]
pub(super) struct WebSession {
    /// The signed-in session's id; none for anybody else (no server-side state for them).
    pub(super) sid: Option<String>,
    /// Who: a signed-in admin or person, or the user a proxy vouches for.
    pub(super) user: Option<String>,
    /// May sign for others and revoke anything (token admins, the proxy's users, members of
    /// an admin group).
    pub(super) admin: bool,
    /// What the provider vouched for, for people who signed in through it.
    pub(super) person: Option<Person>,
    /// The CSRF token this browser's forms carry: an HMAC of the session id, or of the login
    /// nonce in its cookie.
    pub(super) csrf: String,
    /// The token is bound to a cookie the browser sent (a form from a browser without one
    /// cannot be genuine).
    pub(super) bound: bool,
    /// A new login nonce cookie, for a browser that sent none.
    pub(super) set_cookie: Option<HeaderValue>,
}

impl Service {
    pub(super) fn web_session(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<WebSession, ApiError> {
        if let Some(sid) = cookie_value(headers, &self.cookie_name(SESSION_COOKIE)) {
            let stored = self
                .web
                .session(&session_key(&sid), now)
                .map_err(IssuerError::Sessions)?;
            // A session the service cannot read back (written by another version) is none; so
            // is one the config in force no longer allows.
            if let Some(s) = stored
                .and_then(|s| serde_json::from_str::<Session>(&s.data).ok())
                .and_then(|s| self.in_force(s))
            {
                return Ok(WebSession {
                    csrf: self.mac("session", &sid),
                    user: Some(s.user),
                    admin: s.admin,
                    person: s.person,
                    sid: Some(sid),
                    bound: true,
                    set_cookie: None,
                });
            }
        }
        let (nonce, bound) = match cookie_value(headers, &self.cookie_name(LOGIN_COOKIE)) {
            Some(n) => (n, true),
            None => (random_id()?, false),
        };
        let user = self.proxy_user(peer, headers);
        Ok(WebSession {
            sid: None,
            admin: user.is_some(),
            person: None,
            user,
            csrf: self.mac("login", &nonce),
            set_cookie: (!bound).then(|| self.cookie(LOGIN_COOKIE, &nonce, None)),
            bound,
        })
    }

    /// A stored session as the config in force sees it (a SIGHUP may have changed it, or
    /// another replica's config opened it): a token admin must still be listed, a person's
    /// provider must still be `[oidc]`'s, and their admin rights follow `admin_groups` now.
    fn in_force(&self, mut s: Session) -> Option<Session> {
        match &s.person {
            None => {
                // Token admins, by name and the token they signed in with (a proxy's users have
                // no sessions).
                let listed = s.token_sha256.as_deref().is_some_and(|t| {
                    self.cfg
                        .serve
                        .admins
                        .iter()
                        .any(|(name, hash)| *name == s.user && hex::encode(hash) == t)
                });
                if !listed {
                    return None;
                }
            }
            Some(p) => {
                let oidc = self.cfg.oidc.as_ref().filter(|o| o.issuer == p.idp)?;
                s.admin = oidc.admin_groups.iter().any(|g| p.groups.contains(g));
            }
        }
        Some(s)
    }

    /// Whether a posted form's token is this browser's.
    pub(super) fn csrf_ok(&self, ws: &WebSession, given: &str) -> bool {
        ws.bound && bool::from(ws.csrf.as_bytes().ct_eq(given.as_bytes()))
    }

    /// Signs `user` in with a new session id; returns the cookies to set. Expired sessions
    /// are dropped, and the user's oldest beyond `max_sessions_per_user` ended.
    pub(super) fn sign_in(
        &self,
        user: String,
        admin: bool,
        person: Option<Person>,
        token_sha256: Option<String>,
        now: i64,
    ) -> Result<[HeaderValue; 2], ApiError> {
        let sid = random_id()?;
        let expires = now.saturating_add(self.cfg.serve.session_lifetime);
        let data = serde_json::to_string(&Session {
            user: user.clone(),
            admin,
            person,
            token_sha256,
        })
        .map_err(|e| IssuerError::Internal(format!("a web session: {e}")))?;
        self.web
            .open_session(
                &session_key(&sid),
                StoredSession {
                    user,
                    expires,
                    data,
                },
                self.cfg.serve.max_sessions_per_user,
                now,
            )
            .map_err(IssuerError::Sessions)?;
        Ok([
            self.cookie(SESSION_COOKIE, &sid, Some(self.cfg.serve.session_lifetime)),
            self.cookie(LOGIN_COOKIE, "", Some(0)),
        ])
    }

    /// The cookie that carries a sign-in at the provider under way (SameSite=Lax: the
    /// provider's redirect back is a cross-site navigation), sealed with AES-256-GCM under a
    /// per-process key, so anonymous visitors still cost no server-side state.
    pub(super) fn pending_cookie(&self, p: &Pending) -> Result<HeaderValue, ApiError> {
        use aes_gcm::aead::{Aead as _, KeyInit as _};
        let internal = |e: String| ApiError::Issuer(IssuerError::Internal(e));
        let plain = serde_json::to_vec(p).map_err(|e| internal(e.to_string()))?;
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|e| internal(format!("random: {e}")))?;
        let cipher = aes_gcm::Aes256Gcm::new(&self.pending_key().into());
        let sealed = cipher
            .encrypt(
                &nonce.into(),
                aes_gcm::aead::Payload {
                    msg: &plain,
                    aad: PENDING_COOKIE.as_bytes(),
                },
            )
            .map_err(|_| internal("sealing the sign-in cookie".into()))?;
        let value = b64url(&[&nonce[..], &sealed].concat());
        Ok(self.cookie_with(PENDING_COOKIE, &value, Some(PENDING_LIFETIME), "Lax"))
    }

    /// The sign-in under way in this browser, if its cookie opens; none otherwise.
    pub(super) fn pending(&self, headers: &HeaderMap) -> Option<Pending> {
        use aes_gcm::aead::{Aead as _, KeyInit as _};
        let raw = b64url_decode(&cookie_raw(headers, &self.cookie_name(PENDING_COOKIE))?)?;
        if raw.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = raw.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let cipher = aes_gcm::Aes256Gcm::new(&self.pending_key().into());
        let plain = cipher
            .decrypt(
                &aes_gcm::Nonce::from(nonce),
                aes_gcm::aead::Payload {
                    msg: sealed,
                    aad: PENDING_COOKIE.as_bytes(),
                },
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// The cookie that ends a sign-in under way.
    pub(super) fn clear_pending(&self) -> HeaderValue {
        self.cookie_with(PENDING_COOKIE, "", Some(0), "Lax")
    }

    fn pending_key(&self) -> [u8; 32] {
        // Invariant: HMAC accepts keys of any length.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.csrf_key).unwrap_or_else(|_| unreachable!());
        mac.update(b"pending sign-in cookie key");
        mac.finalize().into_bytes().into()
    }

    /// Marks a sign-in's `state` used; false when it already was (a replayed callback).
    pub(super) fn use_state(&self, state: &str, now: i64) -> Result<bool, ApiError> {
        let key: [u8; 32] = Sha256::digest(state.as_bytes()).into();
        Ok(self
            .web
            .use_state(key, now.saturating_add(PENDING_LIFETIME), now)
            .map_err(IssuerError::Sessions)?)
    }

    /// Ends a session; returns the cookie that clears it.
    pub(super) fn sign_out(&self, sid: &str) -> Result<HeaderValue, ApiError> {
        self.web
            .end_session(&session_key(sid))
            .map_err(IssuerError::Sessions)?;
        Ok(self.cookie(SESSION_COOKIE, "", Some(0)))
    }
}

/// A sign-in at the provider under way, as its cookie carries it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Pending {
    /// `state` sent to the provider.
    pub(super) state: String,
    /// `nonce` the ID token must carry.
    pub(super) nonce: String,
    /// PKCE verifier.
    pub(super) verifier: String,
    /// When the sign-in started.
    pub(super) at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others_and_must_be_random_ids() {
        let sid = "a".repeat(ID_LEN);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {SESSION_COOKIE}={sid}")).unwrap(),
        );
        assert_eq!(
            cookie_value(&h, SESSION_COOKIE).as_deref(),
            Some(sid.as_str())
        );
        for bad in ["abc".to_string(), format!("{}=", "a".repeat(42))] {
            let mut h = HeaderMap::new();
            h.append(
                header::COOKIE,
                HeaderValue::from_str(&format!("{SESSION_COOKIE}={bad}")).unwrap(),
            );
            assert_eq!(cookie_value(&h, SESSION_COOKIE), None, "{bad}");
        }
        assert_ne!(session_key(&sid), sid, "only a hash of the id is kept");
    }

    #[test]
    fn a_header_given_twice_is_no_header() {
        let mut h = HeaderMap::new();
        h.append("x-remote-user", HeaderValue::from_static("a"));
        assert!(single(&h, "x-remote-user").is_some());
        h.append("x-remote-user", HeaderValue::from_static("b"));
        assert!(single(&h, "x-remote-user").is_none());
    }
}
