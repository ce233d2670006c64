//! The web page: server-rendered HTML, no external resources, one small script (the copy
//! button). Every form carries the session's CSRF token; every value shown is escaped.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::WebSession;
use super::form::{parse_form, Fields};
use super::problem::{decorate, typed, ApiError};
use super::service::{
    approve, issue, now, passes_left, recent, recent_of, revoke, Asker, Recent, Revocation, Shared,
};
use crate::core::claims::{Attestation, BindingKind};
use crate::core::time::{format_duration, format_time};
use crate::issuer::error::IssuerError;
use crate::issuer::policy::PolicyError;

/// Lifetimes offered on the review page (those within policy are shown).
const LIFETIMES: [i64; 8] = [
    3_600,
    8 * 3_600,
    86_400,
    2 * 86_400,
    3 * 86_400,
    7 * 86_400,
    14 * 86_400,
    30 * 86_400,
];

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page, with the login nonce cookie set for a browser that had none.
pub(super) fn render(
    svc: &Shared,
    ws: &WebSession,
    status: StatusCode,
    title: &str,
    body: &str,
) -> Response {
    let csrf = esc(&ws.csrf);
    let who = match &ws.user {
        Some(u) => format!(
            r#"<span class="who">signed in as <b>{}</b></span><form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="link" id="logout">Sign out</button></form>"#,
            esc(u)
        ),
        None => String::new(),
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · hwpass issuer</title><link rel="stylesheet" href="/static/hwpass.css"><script src="/static/hwpass.js" defer></script></head>
<body><header><a href="/" class="brand">hwpass issuer</a><span class="iss">{iss} → {aud}</span><nav>{who}</nav></header>
<main><h1>{title}</h1>
{body}
</main><footer>Passes are signed in the HSM and recorded in the audit log before they are shown. API: <a href="/v1/openapi.json">/v1/openapi.json</a></footer></body></html>
"#,
        title = esc(title),
        iss = esc(&svc.cfg.iss),
        aud = esc(&svc.cfg.aud),
    );
    let mut resp = typed((status, html), "text/html; charset=utf-8");
    if let Some(cookie) = &ws.set_cookie {
        resp.headers_mut()
            .insert(header::SET_COOKIE, cookie.clone());
    }
    decorate(&mut resp, status);
    resp
}

fn csrf_field(ws: &WebSession) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&ws.csrf)
    )
}

pub(super) fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An error shown as a page (the API answers problem+json instead).
pub(super) fn error_page(svc: &Shared, ws: &WebSession, e: &ApiError) -> Response {
    e.log();
    let (status, _, title, detail) = e.parts();
    let body = format!(
        r#"<p class="error" id="error">{}</p><p><a href="/">Back</a></p>"#,
        esc(&detail)
    );
    render(svc, ws, status, title, &body)
}

pub(super) fn session(
    svc: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<WebSession, ApiError> {
    svc.web_session(peer.ip(), headers, now()?)
}

/// A form post: the browser and the fields, once the body parsed as the form `allowed`
/// describes and its CSRF token is this browser's; otherwise the error page to answer with.
fn posted(
    svc: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
    allowed: &[&'static str],
) -> Result<Result<(WebSession, Fields), Response>, ApiError> {
    let ws = session(svc, peer, headers)?;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let fields = if is_form {
        parse_form(body, allowed).map_err(|e| ApiError::BadInput(format!("form: {e}")))
    } else {
        Err(ApiError::BadInput(
            "send the form as application/x-www-form-urlencoded".into(),
        ))
    };
    Ok(
        match fields.and_then(|f| {
            if svc.csrf_ok(&ws, f.get("csrf").unwrap_or_default()) {
                Ok(f)
            } else {
                Err(ApiError::Csrf)
            }
        }) {
            Ok(f) => Ok((ws, f)),
            Err(e) => Err(error_page(svc, &ws, &e)),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Pages

pub(super) async fn home(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ws = session(&svc, peer, &headers)?;
    if ws.user.is_none() {
        return Ok(login_page(&svc, &ws, StatusCode::OK, None));
    }
    home_page(&svc, &ws, None).await
}

/// Who a signed-in browser asks as (an admin for anyone; a person for themselves, within
/// their group's rule).
fn asker_of(svc: &Shared, ws: &WebSession) -> Result<Asker, ApiError> {
    let user = ws.user.as_deref().unwrap_or_default();
    svc.asker(user, ws.admin, ws.person.as_ref(), true)
}

pub(super) fn login_page(
    svc: &Shared,
    ws: &WebSession,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let error = error
        .map(|e| format!(r#"<p class="error" id="error">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let oidc = svc
        .cfg
        .oidc
        .as_ref()
        .map(|o| {
            format!(
                r#"<div class="card"><p>Employees: sign in with your company account to get a pass for this computer.</p>
<a class="button" id="oidc-sign-in" href="/oidc/login">Sign in with your company account</a>
<p class="help">Through {}.</p></div>"#,
                esc(&o.issuer)
            )
        })
        .unwrap_or_default();
    let admin = if svc.cfg.serve.admins.is_empty() {
        String::new()
    } else {
        format!(
            r#"<form method="post" action="/login" class="card">{csrf}
<label for="token">Admin token</label>
<input type="password" id="token" name="token" autocomplete="off" required>
<p class="help">The token from <code>hwpass-issuer admin-token</code>; the server keeps only its SHA-256.</p>
<button type="submit" id="login">Sign in</button></form>"#,
            csrf = csrf_field(ws)
        )
    };
    let body = format!("{error}{oidc}{admin}");
    render(svc, ws, status, "Sign in", &body)
}

/// What a person signed in through the provider sees: their pass form, their group's rule and
/// their own passes.
async fn self_page(
    svc: &Shared,
    ws: &WebSession,
    notice: Option<String>,
) -> Result<Response, ApiError> {
    let asker = match asker_of(svc, ws) {
        Ok(a) => a,
        Err(e) => return Ok(error_page(svc, ws, &e)),
    };
    let Some((identity, rule)) = asker.own.clone() else {
        return Err(ApiError::NoSelfService);
    };
    let csrf = csrf_field(ws);
    let now = now()?;
    let left = passes_left(svc, &asker).await?;
    let rows = recent_of(svc, Some(identity.clone()), 50).await?;
    let mut table = String::new();
    for r in &rows {
        table.push_str(&pass_row(r, now, &csrf, false));
    }
    if rows.is_empty() {
        table.push_str(r#"<tr><td colspan="6">You have no passes yet.</td></tr>"#);
    }
    let notice = notice
        .map(|n| format!(r#"<p class="notice" id="notice">{}</p>"#, esc(&n)))
        .unwrap_or_default();
    let binding = match (rule.software, rule.attestation) {
        (_, true) => "TPM-bound with verified attestation",
        (true, false) => "TPM- or software-bound",
        (false, false) => "TPM-bound",
    };
    let left = left
        .map(|n| format!(" You can get {n} more in the next 24 hours."))
        .unwrap_or_default();
    let body = format!(
        r#"{notice}<p id="rule">Passes here are for you, <b id="identity">{identity}</b>. Your group <b id="group">{group}</b> may get {binding} passes valid for up to {max}.{left}</p>
<form method="post" action="/review" class="card">{csrf}
<label for="request">Paste the request you made with <code>hwpass request --subject {identity}</code></label>
<textarea id="request" name="request" rows="5" required spellcheck="false" autocomplete="off"></textarea>
<button type="submit" id="review">Review request</button></form>
<h2>My passes</h2>
<table id="my-passes"><thead><tr><th>Issued</th><th>Device</th><th>Binding</th><th>Expires</th><th>Pass id</th><th></th></tr></thead>
<tbody>{table}</tbody></table>"#,
        identity = esc(&identity),
        group = esc(&rule.name),
        max = format_duration(rule.max_lifetime),
    );
    Ok(render(svc, ws, StatusCode::OK, "Get a pass", &body))
}

/// One row of a pass list; `admin` adds the subject and who asked.
fn pass_row(r: &Recent, now: i64, csrf: &str, admin: bool) -> String {
    let rec = &r.record;
    let state = if r.revoked {
        r#"<span class="tag revoked">revoked</span>"#.to_string()
    } else if rec.exp <= now {
        r#"<span class="tag expired">expired</span>"#.to_string()
    } else {
        format!(
            r#"<form method="post" action="/revoke" class="inline">{csrf}<input type="hidden" name="jti" value="{jti}"><button type="submit" class="danger" data-jti="{jti}">Revoke</button></form>"#,
            jti = esc(&rec.jti)
        )
    };
    let state = if admin && !r.device_revoked {
        format!(
            r#"{state}<form method="post" action="/revoke" class="inline">{csrf}<input type="hidden" name="device" value="{jkt}"><button type="submit" class="danger link" data-jkt="{jkt}">Revoke device</button></form>"#,
            jkt = esc(&rec.jkt)
        )
    } else {
        state
    };
    let admin_cells = if admin {
        let by = match (&rec.by, &rec.group) {
            (Some(by), Some(g)) => format!("{} ({})", esc(by), esc(g)),
            (Some(by), None) => esc(by),
            (None, _) => "—".into(),
        };
        format!(r#"<td>{}</td><td class="by">{by}</td>"#, esc(&rec.sub))
    } else {
        String::new()
    };
    format!(
        r#"<tr><td>{time}</td>{admin_cells}<td>{dev}</td><td>{kind} / {att}</td><td>{exp}</td><td><code>{jti}</code></td><td>{state}</td></tr>"#,
        time = esc(&format_time(rec.time)),
        dev = esc(rec.dev.as_deref().unwrap_or("—")),
        kind = rec.kind.as_str(),
        att = att_shown(rec.att),
        exp = esc(&format_time(rec.exp)),
        jti = esc(&rec.jti),
    )
}

async fn home_page(
    svc: &Shared,
    ws: &WebSession,
    notice: Option<String>,
) -> Result<Response, ApiError> {
    if !ws.admin {
        return self_page(svc, ws, notice).await;
    }
    let csrf = csrf_field(ws);
    let now = now()?;
    let rows = recent(svc, 20).await?;
    let mut table = String::new();
    for r in &rows {
        table.push_str(&pass_row(r, now, &csrf, true));
    }
    if rows.is_empty() {
        table.push_str(r#"<tr><td colspan="8">No passes issued yet.</td></tr>"#);
    }
    let notice = notice
        .map(|n| format!(r#"<p class="notice" id="notice">{}</p>"#, esc(&n)))
        .unwrap_or_default();
    let body = format!(
        r#"{notice}<form method="post" action="/review" class="card">{csrf}
<label for="request">Paste the request the person made with <code>hwpass request</code></label>
<textarea id="request" name="request" rows="5" required spellcheck="false" autocomplete="off"></textarea>
<button type="submit" id="review">Review request</button></form>
<h2>Recent issuances</h2>
<table id="recent"><thead><tr><th>Issued</th><th>Subject</th><th>Asked by</th><th>Device</th><th>Binding</th><th>Expires</th><th>Pass id</th><th></th></tr></thead>
<tbody>{table}</tbody></table>"#
    );
    Ok(render(svc, ws, StatusCode::OK, "Sign a pass", &body))
}

/// Unpacks a form post, or returns the page to answer with.
macro_rules! form_or_page {
    ($svc:expr, $peer:expr, $headers:expr, $body:expr, $allowed:expr) => {
        match posted(&$svc, $peer, &$headers, &$body, $allowed)? {
            Ok(p) => p,
            Err(page) => return Ok(page),
        }
    };
}

/// Unpacks a required field, or returns the error page.
macro_rules! field_or_page {
    ($svc:expr, $ws:expr, $f:expr, $name:expr) => {
        match $f.required($name) {
            Ok(v) => v,
            Err(e) => {
                let e = ApiError::BadInput(format!("form: {e}"));
                return Ok(error_page(&$svc, &$ws, &e));
            }
        }
    };
}

pub(super) async fn login(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (ws, f) = form_or_page!(svc, peer, headers, body, &["csrf", "token"]);
    let token = field_or_page!(svc, ws, f, "token");
    match svc.admin_by_token(token.trim()) {
        Some(user) => {
            tracing::info!(user = %user, "web sign-in");
            // A new session id at sign-in: nothing a browser held before becomes a session.
            let token_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                token.trim().as_bytes(),
            ));
            let cookies = svc.sign_in(user, true, None, Some(token_sha256), now()?)?;
            let mut resp = see_other("/");
            for c in cookies {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            Ok(resp)
        }
        None => {
            tracing::warn!(%peer, "web sign-in refused: not an admin token");
            Ok(login_page(
                &svc,
                &ws,
                StatusCode::UNAUTHORIZED,
                Some("That is not an admin token of this issuer."),
            ))
        }
    }
}

pub(super) async fn logout(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (ws, _) = form_or_page!(svc, peer, headers, body, &["csrf"]);
    let mut resp = see_other("/");
    if let Some(sid) = &ws.sid {
        resp.headers_mut()
            .insert(header::SET_COOKIE, svc.sign_out(sid)?);
    }
    Ok(resp)
}

pub(super) async fn review(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (ws, f) = form_or_page!(svc, peer, headers, body, &["csrf", "request"]);
    if ws.user.is_none() {
        return Ok(see_other("/"));
    }
    let request = field_or_page!(svc, ws, f, "request").trim().to_string();
    let asker = match asker_of(&svc, &ws) {
        Ok(a) => a,
        Err(e) => return Ok(error_page(&svc, &ws, &e)),
    };
    // Approving needs no HSM: it shows exactly what Sign would issue, attestation included.
    let a = match approve(&svc, request.clone(), &asker).await {
        Ok(a) => a,
        Err(e) => return Ok(error_page(&svc, &ws, &e)),
    };
    let c = &a.claims;
    let proposed = c.exp - c.nbf;
    let cap = asker.own.as_ref().map(|(_, rule)| rule.max_lifetime);
    let max = svc.cfg.policy.max_for(c.hwb.kind, cap);
    let mut choices: Vec<i64> = LIFETIMES.iter().copied().filter(|&l| l <= max).collect();
    if !choices.contains(&proposed) {
        choices.push(proposed);
        choices.sort_unstable();
    }
    let options: String = choices
        .iter()
        .map(|&l| {
            format!(
                r#"<option value="{l}"{sel}>{}</option>"#,
                format_duration(l),
                sel = if l == proposed { " selected" } else { "" }
            )
        })
        .collect();
    let (binding, attestation) = match (c.hwb.kind, c.hwb.att) {
        (BindingKind::Software, _) => (
            "software key — the weaker binding",
            "none (software keys have no attestation)".to_string(),
        ),
        // What was verified is the EK certificate (or allow-list) and the AK's certification
        // of this key; that the key is in *that* TPM is proven only when the TPM activates the
        // credential the pass is sealed in.
        (BindingKind::Tpm, Attestation::EkCert) => (
            "TPM (evidence verified, activation pending)",
            "ek-cert, activation pending: the EK certificate chains to a trusted TPM maker CA and an attestation key certified this key. That the key lives in that TPM is proven only when the TPM activates the credential: the pass is delivered sealed to it, so only that TPM can open it".into(),
        ),
        (BindingKind::Tpm, Attestation::EkAllowlist) => (
            "TPM (evidence verified, activation pending)",
            "ek-allowlist, activation pending: the EK is on this issuer's allow-list and an attestation key certified this key. That the key lives in that TPM is proven only when the TPM activates the credential: the pass is delivered sealed to it, so only that TPM can open it".into(),
        ),
        (BindingKind::Tpm, Attestation::None) => (
            "TPM (the request's word)",
            "none: no evidence was checked (this issuer does not require attestation)".into(),
        ),
    };
    let body = format!(
        r#"<table class="facts" id="facts">
<tr><th>Subject</th><td id="f-sub">{sub}</td></tr>
<tr><th>Device</th><td id="f-dev">{dev}</td></tr>
<tr><th>Binding</th><td id="f-kind">{binding}</td></tr>
<tr><th>Attestation</th><td id="f-att">{attestation}</td></tr>
<tr><th>Device key (RFC 7638 thumbprint)</th><td><code id="f-jkt">{jkt}</code></td></tr>{tpm}
<tr><th>Largest lifetime for this binding</th><td>{max}</td></tr>
</table>
{clock}<form method="post" action="/sign" class="card">{csrf}
<input type="hidden" name="request" value="{request}">
<label for="lifetime">Valid for</label>
<select id="lifetime" name="lifetime">{options}</select>
<button type="submit" id="sign">Sign pass</button> <a href="/">Cancel</a></form>"#,
        sub = esc(&c.sub),
        dev = esc(c.dev.as_deref().unwrap_or("(not named)")),
        attestation = esc(&attestation),
        jkt = esc(&c.cnf.jkt),
        max = format_duration(max),
        csrf = csrf_field(&ws),
        request = esc(&request),
        tpm = a
            .deliver_to
            .as_ref()
            .and_then(|v| v.tpm.as_ref())
            .map(|t| format!(
                r#"<tr><th>TPM (from its EK certificate)</th><td id="f-tpm">{} {} — {}, firmware {}</td></tr>"#,
                esc(&t.vendor().unwrap_or_default()),
                esc(&t.model),
                esc(&t.manufacturer),
                esc(&t.version)
            ))
            .unwrap_or_default(),
        clock = a
            .clock_ahead
            .map(|ahead| format!(
                r#"<p class="notice" id="clock-ahead">This computer's clock was {} ahead once: it recorded {}. Tell the person to keep the clock right; installing this pass resets that time.</p>"#,
                format_duration(ahead),
                esc(&format_time(c.stm.map_or(0, |m| m.hw)))
            ))
            .unwrap_or_default(),
    );
    Ok(render(
        &svc,
        &ws,
        StatusCode::OK,
        "Review the request",
        &body,
    ))
}

/// The lifetime chosen on the review page: whole seconds, 1 s … the policy's largest
/// maximum (the binding's own maximum is the policy's to enforce, answered as the same 422).
fn lifetime(svc: &Shared, text: &str) -> Result<i64, ApiError> {
    let max = svc.cfg.policy.max_lifetime;
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| {
            ApiError::BadLifetime(format!(
                "the lifetime must be a whole number of seconds from 1 to {max} ({})",
                format_duration(max)
            ))
        })
}

pub(super) async fn sign(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (ws, f) = form_or_page!(svc, peer, headers, body, &["csrf", "request", "lifetime"]);
    if ws.user.is_none() {
        return Ok(see_other("/"));
    }
    let asker = match asker_of(&svc, &ws) {
        Ok(a) => a,
        Err(e) => return Ok(error_page(&svc, &ws, &e)),
    };
    let request = field_or_page!(svc, ws, f, "request");
    let lifetime = match lifetime(&svc, &field_or_page!(svc, ws, f, "lifetime")) {
        Ok(l) => l,
        Err(e) => return Ok(error_page(&svc, &ws, &e)),
    };
    let out = match issue(&svc, request, Some(lifetime), &asker).await {
        Ok(o) => o,
        Err(ApiError::Issuer(IssuerError::Policy(e @ PolicyError::LifetimeTooLong { .. }))) => {
            return Ok(error_page(&svc, &ws, &ApiError::BadLifetime(e.to_string())))
        }
        Err(e) => return Ok(error_page(&svc, &ws, &e)),
    };
    let c = &out.claims;
    let qr = qr_svg(&out.pass).unwrap_or_else(|| {
        r#"<p class="help">Too long for a QR code; copy or download it.</p>"#.into()
    });
    let what = if out.sealed {
        "It is sealed to the requesting TPM: only that machine can open it."
    } else {
        "It works only on the device whose key it is bound to."
    };
    let body = format!(
        r#"<p class="notice">Signed a {kind} pass for <b>{sub}</b>, valid until {exp} ({left}). Recorded in the audit log as <code>{jti}</code>. {what}</p>
<label for="pass">{give}</label>
<div class="row"><input type="text" id="pass" readonly value="{pass}" spellcheck="false"><button type="button" id="copy">Copy</button></div>
<p><a id="download" download="hwpass-pass.txt" href="data:text/plain;charset=utf-8,{pass}">Download as a file</a> · {len} characters</p>
<div class="qr" id="qr">{qr}</div>
<p><a href="/">Sign another</a></p>"#,
        kind = c.hwb.kind.as_str(),
        sub = esc(&c.sub),
        exp = esc(&format_time(c.exp)),
        left = format_duration(c.exp - c.nbf),
        jti = esc(&c.jti),
        pass = esc(&out.pass),
        len = out.pass.len(),
        give = if ws.admin {
            "The pass — give it to the person; they run <code>hwpass install</code> and paste it"
        } else {
            "Your pass — on your computer, run <code>hwpass install</code> and paste it"
        },
    );
    Ok(render(&svc, &ws, StatusCode::OK, "Pass signed", &body))
}

/// An attestation as the page shows it: exactly what was verified.
fn att_shown(att: Attestation) -> String {
    match att {
        Attestation::None => "none".into(),
        verified => format!("{}, activation pending", verified.as_str()),
    }
}

/// The pass as an inline SVG QR code (byte mode, error correction L: up to 2 953 bytes).
fn qr_svg(text: &str) -> Option<String> {
    let code =
        qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(280, 280)
        .quiet_zone(true)
        .build();
    // Inline in HTML: drop the XML prolog.
    svg.find("<svg").map(|i| svg[i..].to_string())
}

pub(super) async fn revoke_form(
    State(svc): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (ws, f) = form_or_page!(
        svc,
        peer,
        headers,
        body,
        &["csrf", "jti", "device", "confirm"]
    );
    let Some(user) = ws.user.clone() else {
        return Ok(see_other("/"));
    };
    let by = match &ws.person {
        Some(p) => p.identity.clone(),
        None => format!("web:{user}"),
    };
    let confirmed = f.get("confirm") == Some("yes");
    let confirm_form = |field: &str, value: &str, question: String, button: &str| {
        let body = format!(
            r#"<p>{question}</p>
<form method="post" action="/revoke" class="card">{csrf}<input type="hidden" name="{field}" value="{value}"><input type="hidden" name="confirm" value="yes">
<button type="submit" class="danger" id="confirm-revoke">{button}</button> <a href="/" id="cancel-revoke">Keep it</a></form>"#,
            value = esc(value),
            csrf = csrf_field(&ws),
        );
        render(&svc, &ws, StatusCode::OK, "Revoke?", &body)
    };
    let (what, label) = match (f.get("jti"), f.get("device")) {
        (Some(jti), None) => {
            if !ws.admin {
                // A person revokes only their own passes, and confirms first (a lost laptop
                // is the reason; a slip of the mouse must not be).
                let Some(identity) = ws.person.as_ref().map(|p| p.identity.clone()) else {
                    return Ok(see_other("/"));
                };
                let mine = recent_of(&svc, Some(identity), usize::MAX).await?;
                let Some(row) = mine.iter().find(|r| r.record.jti == jti) else {
                    let e = ApiError::NotFound(format!("you have no pass {jti}"));
                    return Ok(error_page(&svc, &ws, &e));
                };
                if !confirmed {
                    let rec = &row.record;
                    return Ok(confirm_form(
                        "jti",
                        jti,
                        format!(
                            "Revoke the pass <code>{}</code> for <b>{}</b>, valid until {}? Desktops refuse it after their next <code>hwpass refresh</code>; this cannot be undone.",
                            esc(&rec.jti),
                            esc(rec.dev.as_deref().unwrap_or("an unnamed device")),
                            esc(&format_time(rec.exp)),
                        ),
                        "Revoke this pass",
                    ));
                }
            }
            (
                Revocation {
                    pass: Some(jti.to_string()),
                    device: None,
                    reason: None,
                },
                format!("pass {jti}"),
            )
        }
        (None, Some(jkt)) if ws.admin => {
            if !confirmed {
                let passes = recent(&svc, usize::MAX)
                    .await?
                    .into_iter()
                    .filter(|r| r.record.jkt == jkt)
                    .count();
                return Ok(confirm_form(
                    "device",
                    jkt,
                    format!(
                        "Revoke the device key <code>{}</code>? Every pass bound to it ({passes} issued) is refused after the desktop's next <code>hwpass refresh</code>, and no pass for it can be used again; this cannot be undone.",
                        esc(jkt)
                    ),
                    "Revoke this device",
                ));
            }
            (
                Revocation {
                    pass: None,
                    device: Some(jkt.to_string()),
                    reason: None,
                },
                format!("device key {jkt}"),
            )
        }
        _ => {
            let e = ApiError::BadInput(if ws.admin {
                "form: give a pass id (jti) or a device key (device)".into()
            } else {
                "form: give the pass id (jti) of one of your passes".into()
            });
            return Ok(error_page(&svc, &ws, &e));
        }
    };
    match revoke(&svc, what, by).await {
        Ok(r) => {
            let notice = format!(
                "Revoked {label} (deny list #{}). Desktops refuse it after their next `hwpass refresh`.",
                r.seq
            );
            home_page(&svc, &ws, Some(notice)).await
        }
        Err(e) => Ok(error_page(&svc, &ws, &e)),
    }
}

pub(super) async fn css() -> Response {
    typed(include_str!("hwpass.css"), "text/css; charset=utf-8")
}

pub(super) async fn js() -> Response {
    typed(include_str!("hwpass.js"), "text/javascript; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn qr_code_holds_a_pass_and_a_delivery_sized_string() {
        let svg = qr_svg(&"a.".repeat(650)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
        assert!(qr_svg(&"a.".repeat(1_500)).is_none());
    }
}
