//! The test OpenID Provider itself (tests/oidc/provider.mjs through [`Idp`]): discovery and
//! JWKS, the device authorization grant and the authorization code flow with PKCE completed
//! by headless Chromium, ID tokens verified with an independent JOSE library, and the hostile
//! modes the self-service tests rely on.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use sha2::Digest as _;

use crate::common::*;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
}

/// application/x-www-form-urlencoded / query component encoding.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The query parameters of a URL or request target.
fn query(url: &str) -> Vec<(String, String)> {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// POSTs a form; returns the status and the JSON body (error statuses included).
pub fn post_form(
    url: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut req = Idp::agent().post(url);
    if let Some((id, secret)) = basic {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(id),
            enc(secret)
        ));
        req = req.set("Authorization", &format!("Basic {creds}"));
    }
    let resp = match req.send_form(form) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let body = resp.into_string().unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, json)
}

fn get_json(url: &str) -> serde_json::Value {
    serde_json::from_str(&Idp::agent().get(url).call().unwrap().into_string().unwrap()).unwrap()
}

/// Verifies an ID token as a relying party would: signature by the key its `kid` names in the
/// provider's JWKS (fetched now), `iss`, `aud`, `exp` (against the real clock); returns the
/// claims.
fn verify_id_token(
    idp: &Idp,
    token: &str,
    audience: &str,
) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
    verify_id_token_at(idp, token, audience, None)
}

/// [`verify_id_token`] with `exp` checked against `now` (epoch seconds) when given.
fn verify_id_token_at(
    idp: &Idp,
    token: &str,
    audience: &str,
    now: Option<i64>,
) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
    let jwks: JwkSet = serde_json::from_value(get_json(&format!("{}/jwks", idp.issuer()))).unwrap();
    let header = decode_header(token)?;
    let kid = header
        .kid
        .as_deref()
        .expect("ID token header names its key");
    let Some(jwk) = jwks.find(kid) else {
        return Err(ErrorKind::InvalidKeyFormat.into());
    };
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[idp.issuer()]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v.leeway = 5;
    v.validate_exp = now.is_none();
    let claims = decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims;
    if let Some(now) = now {
        if claims["exp"].as_i64().unwrap() <= now {
            return Err(ErrorKind::ExpiredSignature.into());
        }
    }
    Ok(claims)
}

/// One poll of the token endpoint with a device code, as the desktop client.
fn poll_device(idp: &Idp, device_code: &str) -> (u16, serde_json::Value) {
    post_form(
        &format!("{}/token", idp.issuer()),
        None,
        &[
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", Idp::DESKTOP_CLIENT_ID),
        ],
    )
}

/// The device authorization grant up to the tokens: request a code, have Chromium enter it and
/// sign in as `user`, poll the token endpoint (bounded). Returns the token response and the
/// device code.
/// New ID tokens for the desktop client without signing in again: each from the refresh token
/// of the last answer (the provider's same issuing code as at sign-in).
pub struct Refresher {
    token_endpoint: String,
    refresh: String,
}

impl Refresher {
    /// From the token answer of a sign-in with `offline_access`.
    pub fn new(idp: &Idp, tokens: &serde_json::Value) -> Self {
        Self {
            token_endpoint: format!("{}/token", idp.issuer()),
            refresh: tokens["refresh_token"]
                .as_str()
                .expect("a refresh token")
                .to_string(),
        }
    }

    /// The next ID token; the refresh token rotates when the provider says so.
    pub fn next_id_token(&mut self) -> String {
        let (status, body) = post_form(
            &self.token_endpoint,
            None,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &self.refresh),
                ("client_id", Idp::DESKTOP_CLIENT_ID),
            ],
        );
        assert_eq!(status, 200, "{body}");
        if let Some(r) = body["refresh_token"].as_str() {
            self.refresh = r.to_string();
        }
        body["id_token"].as_str().unwrap().to_string()
    }
}

pub fn device_flow(idp: &Idp, user: &IdpUser, scope: &str) -> (serde_json::Value, String) {
    let d = idp.discovery();
    let (status, auth) = post_form(
        d["device_authorization_endpoint"].as_str().unwrap(),
        None,
        &[("client_id", Idp::DESKTOP_CLIENT_ID), ("scope", scope)],
    );
    assert_eq!(status, 200, "{auth}");
    let device_code = auth["device_code"].as_str().unwrap();
    let user_code = auth["user_code"].as_str().unwrap();
    let interval = Duration::from_secs(auth["interval"].as_u64().unwrap());
    assert_eq!(
        auth["verification_uri"].as_str().unwrap(),
        format!("{}/device", idp.issuer())
    );
    assert_eq!(d["token_endpoint"], format!("{}/token", idp.issuer()));
    let poll = || poll_device(idp, device_code);
    // Before anyone signs in, the desktop is told to wait.
    let (status, pending) = poll();
    assert_eq!(
        (status, pending["error"].as_str()),
        (400, Some("authorization_pending"))
    );

    let result = idp_browser(
        "device",
        auth["verification_uri"].as_str().unwrap(),
        user,
        &[("user_code.txt", user_code)],
    );
    assert_eq!(result["done"], true, "{result}");
    assert_eq!(
        result["pages"],
        serde_json::json!(["user-code", "device-confirm", "username", "device-success"])
    );
    assert_eq!(
        result["confirm_code"], user_code,
        "the confirm page shows the code"
    );

    // Poll as a desktop would, at the announced interval, within a bounded time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let tokens = loop {
        let (status, body) = poll();
        if status == 200 {
            break body;
        }
        assert_eq!(body["error"], "authorization_pending", "{body}");
        assert!(Instant::now() < deadline, "no tokens in time");
        std::thread::sleep(interval);
    };
    (tokens, device_code.to_string())
}

#[test]
fn discovery_document_and_jwks_are_served() {
    let idp = Idp::start(&[IdpUser::new("alice", &["staff"])], &[]);
    let d = idp.discovery();
    let issuer = idp.issuer();
    assert!(issuer.starts_with("http://127.0.0.1:"), "{issuer}");
    assert_eq!(d["issuer"], issuer);
    for (key, path) in [
        ("authorization_endpoint", "/auth"),
        ("token_endpoint", "/token"),
        ("device_authorization_endpoint", "/device/auth"),
        ("jwks_uri", "/jwks"),
        ("userinfo_endpoint", "/me"),
        ("registration_endpoint", "/reg"),
    ] {
        assert_eq!(d[key], format!("{issuer}{path}"), "{key}");
    }
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    for grant in ["authorization_code", DEVICE_GRANT, "refresh_token"] {
        assert!(d["grant_types_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == grant));
    }
    for claim in ["email", "preferred_username", "groups"] {
        assert!(d["claims_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == claim));
    }
    assert!(d["scopes_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "groups"));

    let jwks = get_json(d["jwks_uri"].as_str().unwrap());
    let keys = jwks["keys"].as_array().unwrap();
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, ["RS256", "ES256"]);
    for k in keys {
        assert_eq!(k["use"], "sig");
        assert!(k["kid"].as_str().is_some_and(|kid| !kid.is_empty()));
        assert!(
            k.get("d").is_none(),
            "no private key material is published: {k}"
        );
    }
    let parsed: JwkSet = serde_json::from_value(jwks).unwrap();
    assert_eq!(parsed.keys.len(), 2);
}

#[test]
fn device_grant_in_chromium_gives_a_verified_id_token_with_email_and_groups() {
    let idp = Idp::start(
        &[
            IdpUser::new("bob", &["staff"]),
            IdpUser::new("alice", &["staff", "hwpass-users"]),
        ],
        &[],
    );
    let alice = idp.user("alice");
    let (tokens, device_code) = device_flow(&idp, alice, "openid email profile groups");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["access_token"].is_string());
    let id_token = tokens["id_token"].as_str().unwrap();
    let claims = verify_id_token(&idp, id_token, Idp::DESKTOP_CLIENT_ID).unwrap();
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], Idp::DESKTOP_CLIENT_ID);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@corp.example");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(
        claims["groups"],
        serde_json::json!(["staff", "hwpass-users"])
    );
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 300, "the short default ID token TTL");
    // The same token for another audience is refused by the verifier (the check is live).
    let other = verify_id_token(&idp, id_token, Idp::WEB_CLIENT_ID).unwrap_err();
    assert_eq!(other.kind(), &ErrorKind::InvalidAudience);
    // The access token works at the userinfo endpoint…
    let userinfo = |token: &str| {
        let r = Idp::agent()
            .get(&format!("{}/me", idp.issuer()))
            .set("Authorization", &format!("Bearer {token}"))
            .call();
        match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    };
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(userinfo(access), 200);
    // …a device code is good for one set of tokens, and its replay revokes them.
    let (status, again) = poll_device(&idp, &device_code);
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(userinfo(access), 401);
}

/// One loopback HTTP listener standing in for the service's callback: answers every request
/// with a small page and hands the request targets over, until `deadline`.
fn callback_listener(deadline: Instant) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let uri = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr().unwrap().port()
    );
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let target = head.split(' ').nth(1).unwrap_or_default().to_string();
            let body = "<!DOCTYPE html><title>callback</title><p id=\"callback\">received</p>";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if tx.send(target).is_err() {
                return;
            }
        }
    });
    (uri, rx)
}

#[test]
fn authorization_code_with_pkce_in_chromium_then_the_code_is_exchanged() {
    let carol = IdpUser::new("carol", &["hwpass-admins"]);
    let (redirect_uri, callbacks) = callback_listener(Instant::now() + Duration::from_secs(90));
    // On the timeline of the binaries' injected clock.
    let idp = Idp::start_with(
        std::slice::from_ref(&carol),
        IdpOptions {
            web_redirect_uris: vec![redirect_uri.clone()],
            now: Some(NOW),
            ..IdpOptions::default()
        },
    );
    let d = idp.discovery();
    let verifier = random_b64(32);
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let (state, nonce) = (random_b64(16), random_b64(16));
    let authorize = |challenge: Option<&str>| {
        let mut url = format!(
            "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}",
            d["authorization_endpoint"].as_str().unwrap(),
            Idp::WEB_CLIENT_ID,
            enc(&redirect_uri),
            enc("openid email profile groups"),
        );
        if let Some(c) = challenge {
            url.push_str(&format!("&code_challenge={c}&code_challenge_method=S256"));
        }
        url
    };

    // PKCE is required: without a challenge the provider sends the browser back with an error.
    let resp = Idp::agent().get(&authorize(None)).call().unwrap();
    assert_eq!(resp.status(), 303);
    let location = resp.header("location").unwrap().to_string();
    assert!(location.starts_with(&redirect_uri), "{location}");
    let params = query(&location);
    assert_eq!(
        param(&params, "error").as_deref(),
        Some("invalid_request"),
        "{location}"
    );
    assert_eq!(param(&params, "state").as_deref(), Some(state.as_str()));

    let result = idp_browser(
        "code",
        &authorize(Some(&challenge)),
        &carol,
        &[("redirect_uri.txt", &redirect_uri)],
    );
    assert_eq!(result["done"], true, "{result}");
    assert_eq!(result["pages"], serde_json::json!(["username"]));
    // The listener saw the same redirect as the browser's final URL.
    let target = loop {
        let t = callbacks
            .recv_timeout(Duration::from_secs(10))
            .expect("redirect reached the listener");
        if t.starts_with("/callback") {
            break t;
        }
    };
    let final_url = result["final_url"].as_str().unwrap();
    assert_eq!(
        final_url,
        format!("{}{}", redirect_uri.trim_end_matches("/callback"), target)
    );
    let params = query(&target);
    assert_eq!(param(&params, "state").as_deref(), Some(state.as_str()));
    assert_eq!(
        param(&params, "iss").as_deref(),
        Some(idp.issuer()),
        "RFC 9207 iss"
    );
    let code = param(&params, "code").expect("a code");

    let token_endpoint = d["token_endpoint"].as_str().unwrap();
    let secret = std::fs::read_to_string(idp.web_client_secret_file()).unwrap();
    assert_eq!(secret, idp.web_client_secret());
    let exchange = |verifier: &str, secret: &str| {
        post_form(
            token_endpoint,
            Some((Idp::WEB_CLIENT_ID, secret)),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", verifier),
            ],
        )
    };
    // A wrong client secret is refused.
    let (status, body) = exchange(&verifier, "not-the-secret");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let (status, tokens) = exchange(&verifier, &secret);
    assert_eq!(status, 200, "{tokens}");
    let claims = verify_id_token_at(
        &idp,
        tokens["id_token"].as_str().unwrap(),
        Idp::WEB_CLIENT_ID,
        Some(NOW + 60),
    )
    .unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert!(
        (NOW..NOW + 120).contains(&iat),
        "iat {iat} on the injected clock"
    );
    assert_eq!(claims["sub"], "carol");
    assert_eq!(claims["nonce"], nonce.as_str());
    assert_eq!(claims["email"], "carol@corp.example");
    assert_eq!(claims["groups"], serde_json::json!(["hwpass-admins"]));
    // A code is good once.
    let (status, body) = exchange(&verifier, &secret);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
}

#[test]
fn a_code_exchanged_with_the_wrong_pkce_verifier_is_refused() {
    let dave = IdpUser::new("dave", &["staff"]);
    let (redirect_uri, callbacks) = callback_listener(Instant::now() + Duration::from_secs(90));
    // A provider clock years behind the browser's: its cookies must still hold the sign-in.
    let idp = Idp::start_with(
        std::slice::from_ref(&dave),
        IdpOptions {
            web_redirect_uris: vec![redirect_uri.clone()],
            now: Some(NOW - 10 * 365 * 86_400),
            ..IdpOptions::default()
        },
    );
    let d = idp.discovery();
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(
        b"the-real-verifier-0123456789abcdefghijklmno",
    ));
    let url = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope=openid&state=s1&nonce=n1&code_challenge={challenge}&code_challenge_method=S256",
        d["authorization_endpoint"].as_str().unwrap(),
        Idp::WEB_CLIENT_ID,
        enc(&redirect_uri),
    );
    let result = idp_browser("code", &url, &dave, &[("redirect_uri.txt", &redirect_uri)]);
    assert_eq!(result["done"], true, "{result}");
    drop(callbacks);
    let code = param(&query(result["final_url"].as_str().unwrap()), "code").unwrap();
    let (status, body) = post_form(
        d["token_endpoint"].as_str().unwrap(),
        Some((Idp::WEB_CLIENT_ID, idp.web_client_secret())),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            (
                "code_verifier",
                "a-wrong-verifier-0123456789abcdefghijklmnopq",
            ),
        ],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
}

#[test]
fn a_wrong_password_is_refused_on_the_login_page() {
    let mut erin = IdpUser::new("erin", &["staff"]);
    let (redirect_uri, _callbacks) = callback_listener(Instant::now() + Duration::from_secs(90));
    let idp = Idp::start(std::slice::from_ref(&erin), &[&redirect_uri]);
    let d = idp.discovery();
    erin.password.push('x');
    let url = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope=openid&state=s&nonce=n&code_challenge={}&code_challenge_method=S256",
        d["authorization_endpoint"].as_str().unwrap(),
        Idp::WEB_CLIENT_ID,
        enc(&redirect_uri),
        random_b64(32),
    );
    let result = idp_browser("code", &url, &erin, &[("redirect_uri.txt", &redirect_uri)]);
    assert_eq!(result["done"], false, "{result}");
    assert_eq!(result["error"], "Invalid username or password.");
    assert!(!result["final_url"]
        .as_str()
        .unwrap()
        .starts_with(&redirect_uri));
}

#[test]
fn hostile_modes_make_id_tokens_that_a_verifier_refuses_each_for_its_reason() {
    let frank = IdpUser::new("frank", &["staff"]);
    let idp = Idp::start(std::slice::from_ref(&frank), &[]);
    // One sign-in; then each hostile ID token comes from a refresh (the same issuing code).
    let (tokens, _) = device_flow(&idp, &frank, "openid email groups offline_access");
    let mut refresher = Refresher::new(&idp, &tokens);
    let genuine = refresher.next_id_token();
    let claims = verify_id_token(&idp, &genuine, Idp::DESKTOP_CLIENT_ID).unwrap();
    assert_eq!(claims["groups"], serde_json::json!(["staff"]));
    assert!(claims.get("nonce").is_none());
    for mode in Hostile::ALL {
        idp.set_hostile(Some(mode));
        let token = refresher.next_id_token();
        let verdict = verify_id_token(&idp, &token, Idp::DESKTOP_CLIENT_ID);
        match mode {
            Hostile::WrongAudience => {
                assert_eq!(verdict.unwrap_err().kind(), &ErrorKind::InvalidAudience)
            }
            Hostile::Expired => {
                assert_eq!(verdict.unwrap_err().kind(), &ErrorKind::ExpiredSignature)
            }
            Hostile::WrongIssuer => {
                assert_eq!(verdict.unwrap_err().kind(), &ErrorKind::InvalidIssuer)
            }
            Hostile::BadSignature => {
                assert_eq!(verdict.unwrap_err().kind(), &ErrorKind::InvalidSignature)
            }
            Hostile::UnknownKey => {
                assert_eq!(
                    decode_header(&token).unwrap().kid.as_deref(),
                    Some("hostile-unpublished-key")
                );
                assert_eq!(verdict.unwrap_err().kind(), &ErrorKind::InvalidKeyFormat)
            }
            Hostile::WrongNonce => {
                // Validly signed; only a nonce check catches it.
                assert_eq!(verdict.unwrap()["nonce"], "hostile-nonce");
            }
        }
    }
    idp.set_hostile(None);
    verify_id_token(&idp, &refresher.next_id_token(), Idp::DESKTOP_CLIENT_ID).unwrap();
}

#[test]
fn restart_rotates_keys_on_the_same_issuer_and_stop_takes_the_idp_down() {
    let mut idp = Idp::start(&[IdpUser::new("gina", &[])], &[]);
    let kids = |idp: &Idp| -> Vec<String> {
        let jwks = get_json(&format!("{}/jwks", idp.issuer()));
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let before = kids(&idp);
    let issuer = idp.issuer().to_string();
    idp.stop();
    let down = Idp::agent().get(&format!("{issuer}/jwks")).call();
    assert!(
        matches!(down, Err(ureq::Error::Transport(_))),
        "the IdP is down"
    );
    idp.restart();
    assert_eq!(idp.issuer(), issuer);
    let after = kids(&idp);
    assert!(
        after.iter().all(|k| !before.contains(k)),
        "{before:?} → {after:?}"
    );
}

#[test]
fn a_client_registered_at_run_time_may_use_its_redirect_uri_and_no_other() {
    let idp = Idp::start(&[IdpUser::new("hal", &[])], &[]);
    let registered = "http://127.0.0.1:1/registered-callback";
    let (client_id, secret) = idp.register_web_client(registered);
    assert!(!client_id.is_empty() && secret.len() >= 32);
    let authorize = |redirect: &str| {
        let url = format!(
            "{}/auth?response_type=code&client_id={}&redirect_uri={}&scope=openid&state=s&nonce=n&code_challenge={}&code_challenge_method=S256",
            idp.issuer(),
            enc(&client_id),
            enc(redirect),
            random_b64(32),
        );
        match Idp::agent().get(&url).call() {
            Ok(r) => (
                r.status(),
                r.header("location").unwrap_or_default().to_string(),
            ),
            Err(ureq::Error::Status(s, r)) => {
                (s, r.header("location").unwrap_or_default().to_string())
            }
            Err(e) => panic!("{e}"),
        }
    };
    let (status, location) = authorize(registered);
    assert_eq!(status, 303);
    assert!(
        location.starts_with("/interaction/"),
        "to the login page: {location}"
    );
    let (status, location) = authorize("http://127.0.0.1:1/elsewhere");
    assert_eq!(
        (status, location.as_str()),
        (400, ""),
        "no redirect to an unregistered URI"
    );
    // The registration endpoint wants the initial access token.
    let anonymous = Idp::agent()
        .post(&format!("{}/reg", idp.issuer()))
        .set("Content-Type", "application/json")
        .send_string(&serde_json::json!({ "redirect_uris": [registered] }).to_string());
    assert!(matches!(anonymous, Err(ureq::Error::Status(401, _))));
}
