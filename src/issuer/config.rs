//! The issuer configuration file (TOML), parsed and checked once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::Digest as _;

use super::attest::{
    check_anchor, display_name, is_self_issued, normalize_manufacturer, parse_pem_certificates,
    AttestationPolicy,
};
use super::error::{Access, IssuerError};
use super::keys::{self, KeyManager};
use super::policy::{Policy, PolicyConfig};
use super::store::file::{FileAuditLog, FileRegister};
use super::store::memory::MemorySessions;
use super::store::postgres::{PgOptions, PgStore};
use super::store::{AuditStore, RevocationStore, SessionStore};
use crate::core::jwk::{Jwk, Jwks, TrustParams};
use crate::core::time::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    issuer: String,
    audience: String,
    /// The file store's audit log; with `[store] postgres`, where `db import` reads one.
    #[serde(default)]
    audit_log: Option<PathBuf>,
    /// The issuer key (`[key]`; `[hsm]` is its old name, still read).
    #[serde(default)]
    key: Option<KeySection>,
    #[serde(default)]
    hsm: Option<KeySection>,
    policy: PolicyConfig,
    #[serde(default)]
    attestation: AttestationSection,
    /// The revocation register (default: `revocations.json` beside the audit log).
    #[serde(default)]
    revocations: Option<PathBuf>,
    #[serde(default)]
    serve: ServeSection,
    #[serde(default)]
    audit: AuditSection,
    /// `[store]`: PostgreSQL instead of files, for several replicas.
    #[serde(default)]
    store: Option<StoreSection>,
    /// Sign-in through the company's OpenID Connect provider (self-service).
    #[serde(default)]
    oidc: Option<OidcSection>,
}

/// `[oidc]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcSection {
    issuer: String,
    client_id: String,
    client_secret_file: PathBuf,
    redirect_url: String,
    #[serde(default)]
    identity_claim: Option<String>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    desktop_client_id: Option<String>,
    #[serde(default)]
    admin_groups: Vec<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    timeout: Option<String>,
}

/// `[oidc]`: the company's OpenID Connect provider, through which people sign in to get
/// their own passes.
#[derive(Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its tokens' `iss`.
    pub issuer: String,
    /// The service's (confidential) client id.
    pub client_id: String,
    /// Its client secret (from `client_secret_file`, never shown).
    pub client_secret: secrecy::SecretString,
    /// Where the client secret was read from (`config check` names the file, never the
    /// secret).
    pub client_secret_file: PathBuf,
    /// Where the provider sends the browser back: this service's `/oidc/callback`.
    pub redirect_url: String,
    /// Which claims name the person and list their groups.
    pub claims: crate::oidc::ClaimMap,
    /// Scopes asked for (`openid` always).
    pub scopes: Vec<String>,
    /// The desktop's public client id: its device-grant ID tokens are accepted at
    /// `/v1/self/…` (`hwpass request --server`).
    pub desktop_client_id: Option<String>,
    /// Provider groups whose members are admins (sign for others, revoke anything).
    pub admin_groups: Vec<String>,
    /// PEM CA certificates to trust for the provider instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Each request to the provider.
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_url", &self.redirect_url)
            .field("claims", &self.claims)
            .field("desktop_client_id", &self.desktop_client_id)
            .field("admin_groups", &self.admin_groups)
            .finish_non_exhaustive()
    }
}

/// An `http://` URL is accepted only for a loopback host (a test or a local provider).
fn check_url(what: &str, url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        let host = r.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        if !(host == "localhost" || host == "[::1]" || host.starts_with("127.")) {
            return Err(format!(
                "[oidc] {what} {url:?} must be https:// (plain http only for a loopback address)"
            ));
        }
        r
    } else {
        return Err(format!("[oidc] {what} {url:?} is not an https:// URL"));
    };
    if rest.is_empty() || rest.starts_with('/') || url.contains(char::is_whitespace) {
        return Err(format!("[oidc] {what} {url:?} is not a URL"));
    }
    Ok(())
}

impl OidcSection {
    fn resolve(self, file: &Path) -> Result<OidcConfig, IssuerError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let config = |detail: String| IssuerError::Config {
            path: file.to_path_buf(),
            detail,
        };
        check_url("issuer", &self.issuer).map_err(config)?;
        check_url("redirect_url", &self.redirect_url).map_err(config)?;
        if !self
            .redirect_url
            .trim_end_matches('/')
            .ends_with("/oidc/callback")
        {
            return Err(config(format!(
                "[oidc] redirect_url {:?} must end in /oidc/callback (this service's callback, as registered with the provider)",
                self.redirect_url
            )));
        }
        for (what, v) in [
            ("client_id", Some(&self.client_id)),
            ("desktop_client_id", self.desktop_client_id.as_ref()),
        ] {
            if v.is_some_and(|v| v.trim().is_empty()) {
                return Err(config(format!("[oidc] {what} must not be empty")));
            }
        }
        let secret_file = base.join(&self.client_secret_file);
        check_private(&secret_file)?;
        let secret = std::fs::read_to_string(&secret_file)
            .map_err(|e| config(format!("{}: {e}", secret_file.display())))?;
        let secret = secret.lines().next().unwrap_or_default().trim().to_string();
        if secret.is_empty() {
            return Err(config(format!(
                "[oidc] the client secret file {} is empty",
                secret_file.display()
            )));
        }
        let identity = self.identity_claim.unwrap_or_else(|| "email".into());
        let groups = self.groups_claim.unwrap_or_else(|| "groups".into());
        for (what, v) in [("identity_claim", &identity), ("groups_claim", &groups)] {
            if v.trim().is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(config(format!("[oidc] {what} {v:?} is not a claim name")));
            }
        }
        let mut scopes = self.scopes.unwrap_or_else(|| {
            ["openid", "email", "profile", "groups"]
                .map(String::from)
                .to_vec()
        });
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        if let Some(s) = scopes
            .iter()
            .find(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(config(format!("[oidc] scopes: {s:?} is not a scope")));
        }
        let timeout = timeout_in(
            "[oidc] timeout",
            self.timeout.as_deref(),
            std::time::Duration::from_secs(10),
        )
        .map_err(config)?;
        let ca_file = self.ca_file.map(|c| base.join(c));
        if let Some(ca) = &ca_file {
            check_not_writable(ca)?;
        }
        Ok(OidcConfig {
            issuer: self.issuer,
            client_id: self.client_id,
            client_secret: secret.into(),
            client_secret_file: secret_file,
            redirect_url: self.redirect_url,
            claims: crate::oidc::ClaimMap { identity, groups },
            scopes,
            desktop_client_id: self.desktop_client_id,
            admin_groups: self.admin_groups,
            ca_file,
            timeout,
        })
    }
}

/// `[store]`: the PostgreSQL store (docs/replicas.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    /// A libpq URL or key=value string, without a password.
    postgres: String,
    /// The file holding the password (mode 0600).
    #[serde(default)]
    password_file: Option<PathBuf>,
    /// Connections per process at most (default 16).
    #[serde(default)]
    max_connections: Option<usize>,
    /// How often the checkpoint leader covers new entries (default 1 s).
    #[serde(default)]
    checkpoint_interval: Option<String>,
    /// The CA certificates (PEM) that signed the server's certificate: TLS, required.
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

impl StoreSection {
    fn resolve(self, file: &Path) -> Result<PgStore, IssuerError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let config = |detail: String| IssuerError::Config {
            path: file.to_path_buf(),
            detail,
        };
        let password = match &self.password_file {
            Some(p) => {
                let p = base.join(p);
                check_private(&p)?;
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| config(format!("[store] password_file {}: {e}", p.display())))?;
                let first = text.lines().next().unwrap_or_default().to_string();
                if first.is_empty() {
                    return Err(config(format!(
                        "[store] password_file {} is empty",
                        p.display()
                    )));
                }
                Some(secrecy::SecretString::from(first))
            }
            None => None,
        };
        let max_connections = match self.max_connections {
            None => 16,
            Some(n) if (1..=1000).contains(&n) => n,
            Some(_) => return Err(config("[store] max_connections must be 1 to 1000".into())),
        };
        let checkpoint_interval = match self.checkpoint_interval.as_deref() {
            None => std::time::Duration::from_secs(1),
            Some(text) => {
                let secs = parse_duration(text)
                    .map_err(|e| config(format!("[store] checkpoint_interval: {e}")))?;
                if !(1..=3600).contains(&secs) {
                    return Err(config(
                        "[store] checkpoint_interval must be 1s to 1h".into(),
                    ));
                }
                // Invariant: 1..=3600 fits u64.
                std::time::Duration::from_secs(secs.unsigned_abs())
            }
        };
        let tls = match &self.ca_file {
            Some(ca) => Some(
                crate::sys::tls_client_config(&base.join(ca))
                    .map_err(|e| config(format!("[store] ca_file: {e}")))?,
            ),
            None => None,
        };
        // Everything that makes the connections, hashed (the password and the CA file's
        // contents included, never shown).
        let mut h = sha2::Sha256::new();
        h.update(self.postgres.as_bytes());
        h.update([0]);
        if let Some(p) = &password {
            use secrecy::ExposeSecret as _;
            h.update(p.expose_secret().as_bytes());
        }
        h.update([0]);
        if let Some(ca) = &self.ca_file {
            h.update(std::fs::read(base.join(ca)).unwrap_or_default());
        }
        h.update([0]);
        h.update(format!("{max_connections} {checkpoint_interval:?}").as_bytes());
        let fingerprint = hex::encode(h.finalize());
        PgStore::new(PgOptions {
            url: self.postgres,
            password,
            max_connections,
            checkpoint_interval,
            tls,
            fingerprint,
        })
        .map_err(config)
    }
}

/// Where the audit log and the revocation register live.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Storage {
    /// Files on this machine (the default): `audit_log`, and `revocations` (default
    /// `revocations.json` beside it).
    Files {
        /// The audit log.
        audit_log: PathBuf,
        /// The revocation register.
        revocations: PathBuf,
    },
    /// PostgreSQL (`[store] postgres`), shared by replicas.
    Postgres {
        /// The store.
        store: PgStore,
        /// A file store the config still names (`audit_log`, `revocations`): where `db
        /// import` reads by default.
        files: Option<(PathBuf, PathBuf)>,
    },
}

/// `[audit]`: the audit log's checkpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    /// The log's name in its checkpoints (C2SP origin line and key name).
    #[serde(default)]
    origin: Option<String>,
}

/// The audit log's default name: the issuer name without a URL scheme, anything a checkpoint
/// cannot carry replaced by `-`, then `/hwpass-audit` (`https://issuer.corp/` gives
/// `issuer.corp/hwpass-audit`).
fn default_origin(iss: &str) -> String {
    let bare = iss
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let name: String = bare
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() && c != '+' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{name}/hwpass-audit")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeSection {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    behind_tls_proxy: bool,
    #[serde(default)]
    hsm_sessions: Option<usize>,
    #[serde(default)]
    session_lifetime: Option<String>,
    #[serde(default)]
    max_sessions_per_user: Option<usize>,
    #[serde(default)]
    header_read_timeout: Option<String>,
    #[serde(default)]
    body_timeout: Option<String>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_connections_per_ip: Option<usize>,
    #[serde(default)]
    max_requests_per_ip: Option<usize>,
    #[serde(default)]
    admins: Vec<AdminSection>,
    #[serde(default)]
    proxy: Option<ProxySection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    name: String,
    token_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxySection {
    header: String,
    #[serde(default)]
    trusted: Vec<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default)]
    secret_header: Option<String>,
}

/// `[serve]`: how `hwpass-issuer serve` listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Listen address (loopback by default).
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain and private key: HTTPS when both are given.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A TLS-terminating reverse proxy is in front: cookies are `Secure` (and `__Host-`) and
    /// responses carry HSTS although this listener speaks plain HTTP.
    pub behind_tls_proxy: bool,
    /// PKCS#11 sessions kept open for signing.
    pub hsm_sessions: usize,
    /// How long a web login lasts, seconds.
    pub session_lifetime: i64,
    /// Web sessions one admin may hold at once; signing in again ends the oldest.
    pub max_sessions_per_user: usize,
    /// Admins: name and SHA-256 of their bearer token.
    pub admins: Vec<(String, [u8; 32])>,
    /// A reverse proxy that authenticates users and names them in a header.
    pub proxy: Option<ProxyConfig>,
    /// Timeouts and caps on connections and requests.
    pub limits: Limits,
}

/// `[serve.proxy]`: when the service believes a reverse proxy's user header.
#[derive(Clone)]
pub struct ProxyConfig {
    /// The header naming the user (lower case).
    pub header: String,
    /// The proxy's addresses: when not empty, the header is believed only from these.
    pub trusted: Vec<std::net::IpAddr>,
    /// The header carrying the shared secret, and the secret's SHA-256: when set, the user
    /// header is believed only with the secret (compared in constant time).
    pub secret: Option<(String, [u8; 32])>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("header", &self.header)
            .field("trusted", &self.trusted)
            .field("secret_header", &self.secret.as_ref().map(|s| &s.0))
            .finish_non_exhaustive()
    }
}

/// Timeouts and caps that keep slow or greedy clients from starving the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request's head (request line and headers) must arrive within this; on a kept-alive
    /// connection it also bounds the wait for the next request.
    pub header_read_timeout: std::time::Duration,
    /// A request's body must arrive within this, counted from the end of its head.
    pub body_timeout: std::time::Duration,
    /// A connection on which no byte moves, either way, for this long is closed (a client that
    /// stops reading an answer, a stalled TLS handshake).
    pub idle_timeout: std::time::Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_ip: usize,
    /// Requests in progress at once from one peer address; more are answered 429.
    pub max_requests_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_requests_per_ip: 32,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            behind_tls_proxy: false,
            hsm_sessions: 4,
            session_lifetime: 8 * 3600,
            max_sessions_per_user: 8,
            admins: Vec::new(),
            proxy: None,
            limits: Limits::default(),
        }
    }
}

/// Header the proxy's shared secret comes in, unless `[serve.proxy] secret_header` names one.
pub const PROXY_SECRET_HEADER: &str = "x-hwpass-proxy-secret";

/// Fewest bytes a proxy secret has (`openssl rand -hex 32` gives 64 characters).
const MIN_PROXY_SECRET: usize = 32;

/// A count from the config within `range`.
fn count(
    name: &str,
    value: Option<usize>,
    range: std::ops::RangeInclusive<usize>,
    default: usize,
) -> Result<usize, String> {
    match value {
        None => Ok(default),
        Some(n) if range.contains(&n) => Ok(n),
        Some(_) => Err(format!(
            "[serve] {name} must be {} to {}",
            range.start(),
            range.end()
        )),
    }
}

/// A `[serve]` timeout from the config: 1 s to 1 h.
fn timeout(
    name: &str,
    value: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    timeout_in(&format!("[serve] {name}"), value, default)
}

/// A timeout from the config: 1 s to 1 h.
fn timeout_in(
    name: &str,
    value: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    let Some(text) = value else {
        return Ok(default);
    };
    let secs = parse_duration(text).map_err(|e| format!("{name}: {e}"))?;
    if !(1..=3600).contains(&secs) {
        return Err(format!("{name} must be 1s to 1h"));
    }
    // Invariant: 1..=3600 fits u64.
    Ok(std::time::Duration::from_secs(secs.unsigned_abs()))
}

impl ServeSection {
    fn resolve(self, file: &Path) -> Result<ServeConfig, IssuerError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let config = |detail: String| IssuerError::Config {
            path: file.to_path_buf(),
            detail,
        };
        let mut out = ServeConfig::default();
        if let Some(l) = self.listen {
            out.listen = l.parse().map_err(|_| {
                config(format!(
                    "[serve] listen {l:?} is not an address like 127.0.0.1:8080"
                ))
            })?;
        }
        out.tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            _ => {
                return Err(config(
                    "[serve] needs both tls_cert and tls_key, or neither".into(),
                ))
            }
        };
        out.behind_tls_proxy = self.behind_tls_proxy;
        out.hsm_sessions = count("hsm_sessions", self.hsm_sessions, 1..=256, 4).map_err(config)?;
        if let Some(d) = self.session_lifetime {
            out.session_lifetime = parse_duration(&d).map_err(config)?;
        }
        out.max_sessions_per_user = count(
            "max_sessions_per_user",
            self.max_sessions_per_user,
            1..=1000,
            8,
        )
        .map_err(config)?;
        let d = Limits::default();
        out.limits = Limits {
            header_read_timeout: timeout(
                "header_read_timeout",
                self.header_read_timeout.as_deref(),
                d.header_read_timeout,
            )
            .map_err(config)?,
            body_timeout: timeout("body_timeout", self.body_timeout.as_deref(), d.body_timeout)
                .map_err(config)?,
            idle_timeout: timeout("idle_timeout", self.idle_timeout.as_deref(), d.idle_timeout)
                .map_err(config)?,
            max_connections: count(
                "max_connections",
                self.max_connections,
                1..=1_000_000,
                d.max_connections,
            )
            .map_err(config)?,
            max_connections_per_ip: count(
                "max_connections_per_ip",
                self.max_connections_per_ip,
                1..=1_000_000,
                d.max_connections_per_ip,
            )
            .map_err(config)?,
            max_requests_per_ip: count(
                "max_requests_per_ip",
                self.max_requests_per_ip,
                1..=1_000_000,
                d.max_requests_per_ip,
            )
            .map_err(config)?,
        };
        for a in self.admins {
            let hash: [u8; 32] = hex::decode(a.token_sha256.trim())
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    config(format!(
                        "[[serve.admins]] {:?}: token_sha256 must be 64 hex digits (from `hwpass-issuer admin-token`)",
                        a.name
                    ))
                })?;
            if a.name.trim().is_empty() {
                return Err(config("[[serve.admins]] name must not be empty".into()));
            }
            out.admins.push((a.name, hash));
        }
        if let Some(p) = self.proxy {
            out.proxy = Some(p.resolve(file)?);
        }
        Ok(out)
    }
}

impl ProxySection {
    fn resolve(self, file: &Path) -> Result<ProxyConfig, IssuerError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let config = |detail: String| IssuerError::Config {
            path: file.to_path_buf(),
            detail,
        };
        let header_name = |h: &str, what: &str| {
            axum::http::HeaderName::from_bytes(h.trim().as_bytes())
                .map(|n| n.as_str().to_string())
                .map_err(|_| config(format!("[serve.proxy] {what} {h:?} is not a header name")))
        };
        let header = header_name(&self.header, "header")?;
        let trusted = self
            .trusted
            .iter()
            .map(|t| {
                t.parse::<std::net::IpAddr>().map_err(|_| {
                    config(format!("[serve.proxy] trusted {t:?} is not an IP address"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let secret = match &self.secret_file {
            Some(secret_file) => {
                let file = base.join(secret_file);
                check_private(&file)?;
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| config(format!("{}: {e}", file.display())))?;
                let secret = text.lines().next().unwrap_or_default().trim();
                if secret.len() < MIN_PROXY_SECRET {
                    return Err(config(format!(
                        "[serve.proxy] the secret in {} must be at least {MIN_PROXY_SECRET} characters (make one with `openssl rand -hex 32`)",
                        file.display()
                    )));
                }
                let name = header_name(
                    self.secret_header.as_deref().unwrap_or(PROXY_SECRET_HEADER),
                    "secret_header",
                )?;
                if name == header {
                    return Err(config(
                        "[serve.proxy] secret_header and header must differ".into(),
                    ));
                }
                Some((name, sha2::Sha256::digest(secret.as_bytes()).into()))
            }
            None if self.secret_header.is_some() => {
                return Err(config(
                    "[serve.proxy] secret_header needs secret_file".into(),
                ))
            }
            None => None,
        };
        if secret.is_none() {
            if trusted.is_empty() {
                return Err(config(
                    "[serve.proxy] needs secret_file (a secret the proxy sends with each request) or the proxy's own addresses in trusted".into(),
                ));
            }
            // Anyone with an account on this host can connect from a loopback address, and
            // an unspecified address is no one's address: neither identifies the proxy.
            if let Some(a) = trusted
                .iter()
                .find(|a| a.is_loopback() || a.is_unspecified() || a.to_canonical().is_loopback())
            {
                return Err(config(format!(
                    "[serve.proxy] trusted lists {a}: every local account can send from that address, so it cannot vouch for the proxy; give secret_file (a shared secret the proxy sends in {PROXY_SECRET_HEADER}) instead"
                )));
            }
        }
        Ok(ProxyConfig {
            header,
            trusted,
            secret,
        })
    }
}

/// Refuses `path` when an account other than its owner may change it or anything on its way:
/// a group- or world-writable file, or such a directory among its ancestors (a sticky one such
/// as /tmp excepted: there only a file's owner may replace it).
pub(crate) fn check_not_writable(path: &Path) -> Result<(), IssuerError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |p: &Path, e: std::io::Error| IssuerError::Config {
        path: p.to_path_buf(),
        detail: e.to_string(),
    };
    let real = std::fs::canonicalize(path).map_err(|e| io(path, e))?;
    let mut first = true;
    for p in real.ancestors() {
        let meta = std::fs::metadata(p).map_err(|e| io(p, e))?;
        let mode = meta.permissions().mode();
        let sticky = meta.is_dir() && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && (first || !sticky) {
            return Err(IssuerError::Exposed {
                path: p.to_path_buf(),
                mode: mode & 0o7777,
                access: Access::Writable,
            });
        }
        first = false;
    }
    Ok(())
}

/// Refuses a secret file that others may read (any group or other permission), or change.
pub(crate) fn check_private(path: &Path) -> Result<(), IssuerError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| IssuerError::Config {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(IssuerError::Exposed {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
            access: Access::Readable,
        });
    }
    check_not_writable(path)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestationSection {
    /// Refuse `tpm` requests without evidence.
    #[serde(default)]
    require: bool,
    /// PEM files of trusted TPM manufacturer root CA certificates: the trust anchors. An
    /// intermediate listed here (not self-issued) is used as one of `ek_intermediates`.
    #[serde(default)]
    ek_roots: Vec<PathBuf>,
    /// PEM files of TPM manufacturer intermediate CA certificates: used to build paths to a
    /// root, never trusted by themselves.
    #[serde(default)]
    ek_intermediates: Vec<PathBuf>,
    /// File of allowed EK names (hex), one per line, `#` comments.
    #[serde(default)]
    ek_allowlist: Option<PathBuf>,
    /// Accept EK certificates without the tcg-kp-EKCertificate extended key usage extension
    /// (for vendors known to omit it).
    #[serde(default)]
    allow_missing_ek_eku: bool,
    /// Allowed TPM manufacturers, `id:` and the TCG vendor ID in hex (`id:494E5443`); empty
    /// or absent allows any.
    #[serde(default)]
    manufacturers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySection {
    /// The key URI; its scheme names the key manager (`pkcs11:` today).
    uri: String,
    /// Labels of other keys in the same token that desktops trust too (key rotation).
    #[serde(default)]
    also_trusted: Vec<String>,
    /// Keep at most this many sessions to the key store open (a YubiHSM 2 allows 16 for all
    /// its applications; a network HSM partition may have a licensed maximum). Unset: the
    /// token's own limit, or one session per signing thread.
    #[serde(default)]
    max_sessions: Option<usize>,
    /// Environment variables for the key store's library (`SOFTHSM2_CONF = "/var/lib/…"`),
    /// set before it is loaded, so every command and the service find the same token.
    #[serde(default)]
    module_env: std::collections::BTreeMap<String, String>,
}

/// A TOML error as a person can act on it: file, line and column, the key there with its
/// table, and for a key hwpass does not know, the known key it most resembles.
fn located(path: &Path, text: &str, e: &toml::de::Error) -> IssuerError {
    let message = e.message().trim_end();
    let Some(span) = e.span() else {
        return IssuerError::Config {
            path: path.to_path_buf(),
            detail: message.to_string(),
        };
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text
        .get(line_start..start)
        .map_or(1, |t| t.chars().count() + 1);
    let this_line = text[line_start..].lines().next().unwrap_or_default();
    // The table: this line's `[header]` (an error about the whole table, such as a missing
    // key), else the last one above it (dotted keys and inline tables aside).
    let header = std::iter::once(this_line)
        .chain(before[..line_start].lines().rev())
        .map(str::trim)
        .find(|l| l.starts_with('['));
    let table = header.map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    // `[serve]`, or `[[policy.group]]` for an entry of an array of tables, as written.
    let header = header.map(|l| l.split('#').next().unwrap_or_default().trim().to_string());
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let full_key = key.as_ref().map(|k| match &table {
        Some(t) => format!("{t}.{k}"),
        None => k.clone(),
    });
    let detail = match unknown_field(message) {
        Some((unknown, expected)) => {
            let place = header
                .as_ref()
                .map_or_else(|| "at the top level".to_string(), |h| format!("in {h}"));
            match closest(&unknown, &expected) {
                Some(near) => format!("unknown key `{unknown}` {place} (did you mean `{near}`?)"),
                None => format!(
                    "unknown key `{unknown}` {place}; known keys: {}",
                    expected.join(", ")
                ),
            }
        }
        None => match (&full_key, message.strip_prefix("missing field ")) {
            (_, Some(name)) => match &table {
                Some(t) => format!("[{t}] lacks the key {name}"),
                None => format!("the key {name} is missing (at the top level)"),
            },
            (Some(k), None) => format!("{k}: {message}"),
            (None, None) => message.to_string(),
        },
    };
    IssuerError::ConfigAt {
        path: path.to_path_buf(),
        line,
        column,
        key: full_key,
        detail,
    }
}

/// A config error about a value the file spells out (`"2x" is not a duration`): where that
/// value is, when it occurs once as a value in the file.
fn value_located(path: PathBuf, text: &str, detail: String) -> IssuerError {
    let quoted = detail
        .split_once('"')
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| format!("\"{v}\""))
        .filter(|v| v.len() > 2);
    let hits: Vec<(usize, &str, usize)> = match &quoted {
        Some(v) => text
            .lines()
            .enumerate()
            .filter_map(|(n, l)| {
                let (key, value) = l.split_once('=')?;
                let at = value.find(v.as_str())?;
                Some((
                    n,
                    key.trim(),
                    key.chars().count() + 2 + value[..at].chars().count(),
                ))
            })
            .collect(),
        None => Vec::new(),
    };
    match hits.as_slice() {
        [(n, key, column)] => {
            let table = text
                .lines()
                .take(n + 1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('['))
                .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            let key = match table {
                Some(t) => format!("{t}.{key}"),
                None => key.to_string(),
            };
            IssuerError::ConfigAt {
                path,
                line: n + 1,
                column: *column,
                detail: format!("{key}: {detail}"),
                key: Some(key),
            }
        }
        _ => IssuerError::Config { path, detail },
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or `b`", or
/// "there are no fields"): the unknown name and the known ones.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((unknown.to_string(), expected))
}

/// The known name nearest to `name` (edit distance at most a third of its length, at least 2),
/// if any.
fn closest(name: &str, known: &[String]) -> Option<String> {
    let limit = (name.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (edit_distance(&name.to_ascii_lowercase(), k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The issuer configuration, parsed and checked.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// `iss` of every pass.
    pub iss: String,
    /// `aud` of every pass.
    pub aud: String,
    /// Where the audit log and the register live (relative paths resolved against the
    /// config's directory).
    pub storage: Storage,
    /// The issuer key: the one that signs.
    pub key: Arc<dyn KeyManager>,
    /// Other keys (labels in the same token) listed in the trust bundle: the next key before a
    /// rotation, the previous one until its passes have expired.
    pub also_trusted: Vec<String>,
    /// The audit log's name in its signed checkpoints (`[audit] origin`).
    pub audit_origin: String,
    /// `[serve]`.
    pub serve: ServeConfig,
    /// The signing policy.
    pub policy: Policy,
    /// What attestation evidence is required and trusted.
    pub attestation: AttestationPolicy,
    /// Things the person should know about the config (deprecated names), one sentence each.
    pub notices: Vec<String>,
    /// The file this was read from (`serve` reads it again on SIGHUP).
    pub source: PathBuf,
    /// `[key] module_env`, as given.
    pub module_env: Vec<(String, String)>,
    /// `[oidc]`: sign-in through the company's OpenID provider.
    pub oidc: Option<OidcConfig>,
}

impl IssuerConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self, IssuerError> {
        let text = std::fs::read_to_string(path).map_err(|e| IssuerError::Config {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        Self::parse(path, &text).map_err(|e| match e {
            IssuerError::Config { path, detail } => value_located(path, &text, detail),
            other => other,
        })
    }

    /// [`Self::load`] of `text`, read from `path`.
    fn parse(path: &Path, text: &str) -> Result<Self, IssuerError> {
        let err = |detail: String| IssuerError::Config {
            path: path.to_owned(),
            detail,
        };
        // What the config says decides who may sign: nobody else may be able to change it.
        check_not_writable(path)?;
        let file: ConfigFile = toml::from_str(text).map_err(|e| located(path, text, &e))?;
        let mut notices = Vec::new();
        let key_section = match (file.key, file.hsm) {
            (Some(k), None) => k,
            (None, Some(h)) => {
                notices.push(format!(
                    "{}: the [hsm] section is now called [key]; rename it (both are read for now)",
                    path.display()
                ));
                h
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    "give the issuer key in [key] only ([hsm] is its old name)".into(),
                ))
            }
            (None, None) => return Err(err("missing [key] section with the key's uri".into())),
        };
        if key_section.max_sessions == Some(0) {
            return Err(err("[key] max_sessions must be at least 1".into()));
        }
        if let Some(name) = key_section
            .module_env
            .keys()
            .find(|n| n.is_empty() || n.contains(['=', '\0']) || n.starts_with("HWPASS_"))
        {
            return Err(err(format!(
                "[key] module_env: {name:?} is not a variable a key store library reads"
            )));
        }
        let key = keys::manager_with(
            &key_section.uri,
            &keys::KeyOptions::with_max_sessions(key_section.max_sessions)
                .with_module_env(key_section.module_env.clone().into_iter().collect()),
        )
        .map_err(|e| err(e.to_string()))?;
        let policy = file.policy.resolve().map_err(err)?;
        if file.issuer.trim().is_empty() || file.audience.trim().is_empty() {
            return Err(err("issuer and audience must not be empty".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut attestation = AttestationPolicy {
            require: file.attestation.require,
            allow_missing_ek_eku: file.attestation.allow_missing_ek_eku,
            ..Default::default()
        };
        let read_pem = |file: &PathBuf| {
            let file = base.join(file);
            check_not_writable(&file)?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| err(format!("{}: {e}", file.display())))?;
            parse_pem_certificates(&text).map_err(|e| err(format!("{}: {e}", file.display())))
        };
        for file_name in &file.attestation.ek_roots {
            for cert in read_pem(file_name)? {
                if !is_self_issued(&cert) {
                    // Earlier configs listed intermediates here: they stay usable, as
                    // intermediates (never as anchors).
                    notices.push(format!(
                        "{}: [attestation] ek_roots lists '{}', which is not a root (not self-issued): it is used as an intermediate; move it to ek_intermediates",
                        path.display(),
                        display_name(&cert.tbs_certificate.subject)
                    ));
                    attestation.intermediates.push(cert);
                    continue;
                }
                check_anchor(&cert).map_err(|e| {
                    err(format!(
                        "[attestation] ek_roots in {}: {e}",
                        base.join(file_name).display()
                    ))
                })?;
                attestation.roots.push(cert);
            }
        }
        for file_name in &file.attestation.ek_intermediates {
            attestation.intermediates.extend(read_pem(file_name)?);
        }
        for m in &file.attestation.manufacturers {
            attestation
                .manufacturers
                .push(normalize_manufacturer(m).ok_or_else(|| {
                    err(format!(
                        "[attestation] manufacturers: {m:?} is not \"id:\" and 8 hex digits (the TCG vendor ID, e.g. \"id:494E5443\")"
                    ))
                })?);
        }
        if let Some(list) = &file.attestation.ek_allowlist {
            let list = base.join(list);
            check_not_writable(&list)?;
            let text = std::fs::read_to_string(&list)
                .map_err(|e| err(format!("{}: {e}", list.display())))?;
            attestation.allowlist = text
                .lines()
                .map(|l| {
                    l.split('#')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
                .filter(|l| !l.is_empty())
                .collect();
        }
        if key_section
            .also_trusted
            .iter()
            .any(|l| l.is_empty() || Some(l.as_str()) == key.label())
        {
            return Err(err(
                "[key] also_trusted must list other keys' labels, not the signing key's".into(),
            ));
        }
        let files = match file.audit_log {
            Some(log) => {
                let audit_log = base.join(log);
                let revocations = match file.revocations {
                    Some(p) => base.join(p),
                    None => audit_log.with_file_name("revocations.json"),
                };
                // The audit log and the register: their directories, where they exist (the
                // first append creates them).
                for dir in [audit_log.parent(), revocations.parent()]
                    .into_iter()
                    .flatten()
                {
                    if dir.exists() {
                        check_not_writable(dir)?;
                    }
                }
                Some((audit_log, revocations))
            }
            None if file.revocations.is_some() => {
                return Err(err("revocations needs audit_log beside it".into()))
            }
            None => None,
        };
        let storage = match (file.store, files) {
            (Some(section), files) => Storage::Postgres {
                store: section.resolve(path)?,
                files,
            },
            (None, Some((audit_log, revocations))) => Storage::Files {
                audit_log,
                revocations,
            },
            (None, None) => {
                return Err(err(
                    "missing audit_log (the audit log file), or a [store] section naming a PostgreSQL database".into(),
                ))
            }
        };
        let serve = file.serve.resolve(path)?;
        if let Some((cert, key)) = &serve.tls {
            for f in [cert, key] {
                if f.exists() {
                    check_not_writable(f)?;
                }
            }
        }
        let oidc = file.oidc.map(|o| o.resolve(path)).transpose()?;
        if oidc.is_some() && policy.groups.is_empty() {
            notices.push(format!(
                "{}: [oidc] is set but [[policy.group]] lists no group: nobody can get a pass by signing in (admins in [oidc] admin_groups still can sign for others)",
                path.display()
            ));
        }
        let audit_origin = match file.audit.origin {
            Some(o) => o,
            None => default_origin(&file.issuer),
        };
        super::store::checkpoint::check_origin(&audit_origin)
            .map_err(|e| err(format!("[audit] origin: {e}")))?;
        Ok(Self {
            iss: file.issuer,
            aud: file.audience,
            storage,
            key,
            also_trusted: key_section.also_trusted,
            audit_origin,
            serve,
            policy,
            attestation,
            notices,
            source: path.to_path_buf(),
            module_env: key_section.module_env.into_iter().collect(),
            oidc,
        })
    }

    /// Which claims name a person and their groups (`[oidc]`; the defaults without it).
    pub fn oidc_claims(&self) -> crate::oidc::ClaimMap {
        self.oidc.as_ref().map_or_else(
            || crate::oidc::ClaimMap {
                identity: "email".into(),
                groups: "groups".into(),
            },
            |o| o.claims.clone(),
        )
    }

    /// The audit log this config names.
    pub fn audit_store(&self) -> Arc<dyn AuditStore> {
        match &self.storage {
            Storage::Files { audit_log, .. } => Arc::new(FileAuditLog::new(audit_log)),
            Storage::Postgres { store, .. } => Arc::new(store.clone()),
        }
    }

    /// The revocation register this config names.
    pub fn revocation_store(&self) -> Arc<dyn RevocationStore> {
        match &self.storage {
            Storage::Files { revocations, .. } => Arc::new(FileRegister::new(revocations)),
            Storage::Postgres { store, .. } => Arc::new(store.clone()),
        }
    }

    /// Where the service keeps web sessions: in its own memory with the file store (a new
    /// one each call), in the database with PostgreSQL (shared by the replicas).
    pub fn session_store(&self) -> Result<Arc<dyn SessionStore>, String> {
        Ok(match &self.storage {
            Storage::Files { .. } => Arc::new(MemorySessions::new()?),
            Storage::Postgres { store, .. } => Arc::new(store.clone()),
        })
    }

    /// The PostgreSQL store, when the config names one.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.storage {
            Storage::Postgres { store, .. } => Some(store),
            Storage::Files { .. } => None,
        }
    }

    /// The values in force after defaults and path resolution, for `config check`: what each
    /// setting is, never a secret (admin tokens and the proxy secret only counted or named).
    pub fn effective(&self) -> serde_json::Value {
        use crate::core::time::format_duration;
        let shown = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let policy = &self.policy;
        let att = &self.attestation;
        let serve = &self.serve;
        serde_json::json!({
            "config": shown(&self.source),
            "issuer": self.iss,
            "audience": self.aud,
            // Files: where the log and the register are; PostgreSQL: the database (never a
            // password) and the files `db import` would read.
            "store": match &self.storage {
                Storage::Files { .. } => "files".to_string(),
                Storage::Postgres { store, .. } => format!(
                    "postgres {}{}",
                    store.at(),
                    if store.uses_tls() {
                        " (TLS, the server checked against [store] ca_file)"
                    } else {
                        " (no TLS)"
                    }
                ),
            },
            "audit_log": match &self.storage {
                Storage::Files { audit_log, .. } => Some(shown(audit_log)),
                Storage::Postgres { files, .. } => files.as_ref().map(|(l, _)| shown(l)),
            },
            "revocations": match &self.storage {
                Storage::Files { revocations, .. } => Some(shown(revocations)),
                Storage::Postgres { files, .. } => files.as_ref().map(|(_, r)| shown(r)),
            },
            "audit": { "origin": self.audit_origin },
            "key": {
                "uri": self.key.display_uri(),
                "also_trusted": self.also_trusted,
                "module_env": self.module_env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            },
            "policy": {
                "default_lifetime": format_duration(policy.default_lifetime),
                "max_lifetime": format_duration(policy.max_lifetime),
                "allow_software": policy.allow_software,
                "software_max_lifetime": format_duration(policy.software_max_lifetime),
                "max_request_age": format_duration(policy.max_request_age),
                "group": policy.groups.iter().map(|g| serde_json::json!({
                    "name": g.name,
                    "allowed": g.allowed,
                    "max_lifetime": format_duration(g.max_lifetime),
                    "software": g.software,
                    "attestation": g.attestation,
                    "passes_per_day": g.passes_per_day,
                })).collect::<Vec<_>>(),
            },
            "attestation": {
                "require": att.require,
                "ek_roots": att.roots.iter().map(|c| display_name(&c.tbs_certificate.subject)).collect::<Vec<_>>(),
                "ek_intermediates": att.intermediates.iter().map(|c| display_name(&c.tbs_certificate.subject)).collect::<Vec<_>>(),
                "ek_allowlist_entries": att.allowlist.len(),
                "allow_missing_ek_eku": att.allow_missing_ek_eku,
                "manufacturers": att.manufacturers,
            },
            "oidc": self.oidc.as_ref().map(|o| serde_json::json!({
                "issuer": o.issuer,
                "client_id": o.client_id,
                "client_secret_file": shown(&o.client_secret_file),
                "redirect_url": o.redirect_url,
                "identity_claim": o.claims.identity,
                "groups_claim": o.claims.groups,
                "scopes": o.scopes,
                "desktop_client_id": o.desktop_client_id,
                "admin_groups": o.admin_groups,
                "ca_file": o.ca_file.as_deref().map(shown),
                "timeout": format_duration(i64::try_from(o.timeout.as_secs()).unwrap_or(i64::MAX)),
            })),
            "serve": {
                "listen": serve.listen.to_string(),
                "tls": serve.tls.as_ref().map(|(c, k)| serde_json::json!({"cert": shown(c), "key": shown(k)})),
                "behind_tls_proxy": serve.behind_tls_proxy,
                "hsm_sessions": serve.hsm_sessions,
                "session_lifetime": format_duration(serve.session_lifetime),
                "max_sessions_per_user": serve.max_sessions_per_user,
                "admins": serve.admins.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
                "proxy": serve.proxy.as_ref().map(|p| serde_json::json!({
                    "header": p.header,
                    "trusted": p.trusted.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "secret_header": p.secret.as_ref().map(|s| s.0.clone()),
                })),
                "limits": {
                    "header_read_timeout": format_duration(i64::try_from(serve.limits.header_read_timeout.as_secs()).unwrap_or(i64::MAX)),
                    "body_timeout": format_duration(i64::try_from(serve.limits.body_timeout.as_secs()).unwrap_or(i64::MAX)),
                    "idle_timeout": format_duration(i64::try_from(serve.limits.idle_timeout.as_secs()).unwrap_or(i64::MAX)),
                    "max_connections": serve.limits.max_connections,
                    "max_connections_per_ip": serve.limits.max_connections_per_ip,
                    "max_requests_per_ip": serve.limits.max_requests_per_ip,
                },
            },
        })
    }

    /// What is wrong with this config that loading it does not refuse: attestation required
    /// with nothing to trust, TLS files missing. One sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let att = &self.attestation;
        if att.require && att.roots.is_empty() && att.allowlist.is_empty() {
            out.push("[attestation] require = true, but neither ek_roots nor ek_allowlist names anything to trust: every TPM request would be refused".to_string());
        }
        if let Some((cert, key)) = &self.serve.tls {
            for (what, file) in [("tls_cert", cert), ("tls_key", key)] {
                match std::fs::read_to_string(file) {
                    Err(e) => out.push(format!("[serve] {what} {}: {e}", file.display())),
                    Ok(text) if !text.contains("-----BEGIN ") => {
                        out.push(format!("[serve] {what} {} is not PEM", file.display()))
                    }
                    Ok(_) => {}
                }
            }
        }
        out
    }

    /// The trust bundle for desktops: the issuer's public key(s) and what passes must say.
    pub fn trust_bundle(&self, keys: impl IntoIterator<Item = Jwk>) -> Jwks {
        Jwks::new(
            keys,
            Some(TrustParams {
                iss: self.iss.clone(),
                aud: self.aud.clone(),
            }),
        )
    }
}
