//! The issuer: config, PIN, and the sign flow (verify request → policy → HSM → audit → pass).

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::attest::{self, AttestError, AttestationPolicy};
use crate::audit::{AuditError, AuditLog, AuditRecord};
use crate::keys::{KeyBackend, KeyError};
use crate::pkcs11::Hsm;
use crate::pkcs11_uri::{PinSource, Pkcs11Uri};
use crate::policy::{Policy, PolicyConfig, PolicyError};
use crate::pool::KeyPool;
use crate::revocation::{RevocationError, RevocationStore, Revoked, Target};
use crate::token::{
    self, Attestation, BindingKind, Confirmation, HardwareBinding, Jwk, Jwks, PassClaims,
    TokenError, TrustParams,
};

/// Environment variable read for the HSM PIN when the URI has no `pin-source`.
pub const PIN_ENV: &str = "HWPASS_PIN";

/// Issuer exit codes (documented in the README).
pub mod exit {
    /// Something else failed (config, files).
    pub const OTHER: i32 = 1;
    /// The request is malformed, forged or not a request.
    pub const BAD_REQUEST: i32 = 4;
    /// The policy refused the request.
    pub const POLICY: i32 = 9;
    /// The HSM failed or refused.
    pub const HSM: i32 = 10;
    /// The audit log could not be written or does not verify.
    pub const AUDIT: i32 = 11;
}

/// What went wrong on the issuer.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The config file is missing or wrong.
    #[error("config {path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No PIN could be obtained.
    #[error("{0}")]
    Pin(String),
    /// The request was refused by verification.
    #[error("request refused: {0}")]
    Request(#[from] TokenError),
    /// The request was refused by policy.
    #[error("request refused by policy: {0}")]
    Policy(#[from] PolicyError),
    /// The attestation evidence was refused.
    #[error("request refused: {0}")]
    Attest(#[from] AttestError),
    /// The HSM failed.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// The audit log failed; no pass was printed.
    #[error("{0}")]
    Audit(#[from] AuditError),
    /// The revocation register failed.
    #[error("{0}")]
    Revocation(#[from] RevocationError),
    /// What was asked for does not exist (a pass id not in the audit log).
    #[error("{0}")]
    NotFound(String),
    /// Something inside the issuer failed (a signing worker stopped).
    #[error("{0}")]
    Internal(String),
}

impl IssuerError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config { .. } | Self::Pin(_) | Self::Internal(_) | Self::Revocation(_) => {
                exit::OTHER
            }
            Self::Request(_) | Self::NotFound(_) => exit::BAD_REQUEST,
            Self::Policy(_) | Self::Attest(AttestError::Missing) => exit::POLICY,
            Self::Attest(_) => exit::BAD_REQUEST,
            Self::Key(_) => exit::HSM,
            Self::Audit(_) => exit::AUDIT,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    issuer: String,
    audience: String,
    audit_log: PathBuf,
    hsm: HsmSection,
    policy: PolicyConfig,
    #[serde(default)]
    attestation: AttestationSection,
    /// The revocation register (default: `revocations.json` beside the audit log).
    #[serde(default)]
    revocations: Option<PathBuf>,
    #[serde(default)]
    serve: ServeSection,
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
    hsm_sessions: Option<usize>,
    #[serde(default)]
    session_lifetime: Option<String>,
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
    trusted: Vec<String>,
}

/// `[serve]`: how `hwpass-issuer serve` listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Listen address (loopback by default).
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain and private key: HTTPS when both are given.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// PKCS#11 sessions kept open for signing.
    pub hsm_sessions: usize,
    /// How long a web login lasts, seconds.
    pub session_lifetime: i64,
    /// Admins: name and SHA-256 of their bearer token.
    pub admins: Vec<(String, [u8; 32])>,
    /// A reverse proxy's authenticated-user header, believed only from these addresses.
    pub proxy: Option<(String, Vec<std::net::IpAddr>)>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            hsm_sessions: 4,
            session_lifetime: 8 * 3600,
            admins: Vec::new(),
            proxy: None,
        }
    }
}

impl ServeSection {
    fn resolve(self, base: &Path) -> Result<ServeConfig, String> {
        let mut out = ServeConfig::default();
        if let Some(l) = self.listen {
            out.listen = l.parse().map_err(|_| {
                format!("[serve] listen {l:?} is not an address like 127.0.0.1:8080")
            })?;
        }
        out.tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            _ => return Err("[serve] needs both tls_cert and tls_key, or neither".into()),
        };
        if let Some(n) = self.hsm_sessions {
            if !(1..=256).contains(&n) {
                return Err("[serve] hsm_sessions must be 1 to 256".into());
            }
            out.hsm_sessions = n;
        }
        if let Some(d) = self.session_lifetime {
            out.session_lifetime = crate::util::parse_duration(&d)?;
        }
        for a in self.admins {
            let hash: [u8; 32] = hex::decode(a.token_sha256.trim())
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "[[serve.admins]] {:?}: token_sha256 must be 64 hex digits (from `hwpass-issuer admin-token`)",
                        a.name
                    )
                })?;
            if a.name.trim().is_empty() {
                return Err("[[serve.admins]] name must not be empty".into());
            }
            out.admins.push((a.name, hash));
        }
        if let Some(p) = self.proxy {
            let trusted = p
                .trusted
                .iter()
                .map(|t| {
                    t.parse()
                        .map_err(|_| format!("[serve.proxy] trusted {t:?} is not an IP address"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if trusted.is_empty() || p.header.trim().is_empty() {
                return Err("[serve.proxy] needs a header and at least one trusted address".into());
            }
            out.proxy = Some((p.header.to_ascii_lowercase(), trusted));
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestationSection {
    /// Refuse `tpm` requests without evidence.
    #[serde(default)]
    require: bool,
    /// PEM files of trusted TPM manufacturer CA certificates (roots and intermediates).
    #[serde(default)]
    ek_roots: Vec<PathBuf>,
    /// File of allowed EK names (hex), one per line, `#` comments.
    #[serde(default)]
    ek_allowlist: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HsmSection {
    uri: String,
    /// Labels of other keys in the same token that desktops trust too (key rotation).
    #[serde(default)]
    also_trusted: Vec<String>,
}

/// The issuer configuration, parsed and checked.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// `iss` of every pass.
    pub iss: String,
    /// `aud` of every pass.
    pub aud: String,
    /// The audit log (relative paths resolved against the config's directory).
    pub audit_log: PathBuf,
    /// The issuer key: the one that signs.
    pub key_uri: Pkcs11Uri,
    /// Other keys (labels in the same token) listed in the trust bundle: the next key before a
    /// rotation, the previous one until its passes have expired.
    pub also_trusted: Vec<String>,
    /// The revocation register.
    pub revocations: PathBuf,
    /// `[serve]`.
    pub serve: ServeConfig,
    /// The signing policy.
    pub policy: Policy,
    /// What attestation evidence is required and trusted.
    pub attestation: AttestationPolicy,
}

impl IssuerConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self, IssuerError> {
        let err = |detail: String| IssuerError::Config {
            path: path.to_owned(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| err(e.message().to_string()))?;
        let key_uri = Pkcs11Uri::parse(&file.hsm.uri).map_err(|e| err(e.to_string()))?;
        let policy = file.policy.resolve().map_err(err)?;
        if file.issuer.trim().is_empty() || file.audience.trim().is_empty() {
            return Err(err("issuer and audience must not be empty".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut attestation = AttestationPolicy {
            require: file.attestation.require,
            ..Default::default()
        };
        for root in &file.attestation.ek_roots {
            let root = base.join(root);
            let text = std::fs::read_to_string(&root)
                .map_err(|e| err(format!("{}: {e}", root.display())))?;
            let certs = attest::parse_pem_certificates(&text)
                .map_err(|e| err(format!("{}: {e}", root.display())))?;
            attestation.roots.extend(certs);
        }
        if let Some(list) = &file.attestation.ek_allowlist {
            let list = base.join(list);
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
        if file
            .hsm
            .also_trusted
            .iter()
            .any(|l| l.is_empty() || Some(l) == key_uri.object.as_ref())
        {
            return Err(err(
                "[hsm] also_trusted must list other keys' labels, not the signing key's".into(),
            ));
        }
        let audit_log = base.join(file.audit_log);
        let revocations = match file.revocations {
            Some(p) => base.join(p),
            None => audit_log.with_file_name("revocations.json"),
        };
        let serve = file.serve.resolve(base).map_err(err)?;
        Ok(Self {
            iss: file.issuer,
            aud: file.audience,
            audit_log,
            key_uri,
            also_trusted: file.hsm.also_trusted,
            revocations,
            serve,
            policy,
            attestation,
        })
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

/// The trust bundle as the HSM holds it: the signing key first, then the `also_trusted` keys.
/// Reads public objects only, so it needs no PIN.
pub fn trust_bundle(cfg: &IssuerConfig, hsm: &Hsm) -> Result<Jwks, IssuerError> {
    let mut keys = vec![Jwk::new(hsm.public_key()?)];
    for label in &cfg.also_trusted {
        keys.push(Jwk::new(hsm.with_object(label).public_key()?));
    }
    Ok(cfg.trust_bundle(keys))
}

/// Revokes the pass with this id, looked up in the audit log (for its expiry and subject).
pub fn revoke_pass(
    cfg: &IssuerConfig,
    jti: &str,
    by: &str,
    reason: Option<String>,
    now: i64,
) -> Result<Revoked, IssuerError> {
    let (records, _) = AuditLog::new(&cfg.audit_log).read()?;
    let record = records.iter().rev().find(|r| r.jti == jti).ok_or_else(|| {
        IssuerError::NotFound(format!("no pass with id {jti:?} in the audit log"))
    })?;
    let target = Target::Pass {
        jti: record.jti.clone(),
        exp: record.exp,
        sub: record.sub.clone(),
    };
    Ok(RevocationStore::new(&cfg.revocations).revoke(target, by, reason, now)?)
}

/// Revokes a device key: every pass bound to it, past and future.
pub fn revoke_device(
    cfg: &IssuerConfig,
    jkt: &str,
    by: &str,
    reason: Option<String>,
    now: i64,
) -> Result<Revoked, IssuerError> {
    let valid = token::b64url_decode(jkt).is_some_and(|b| b.len() == 32);
    if !valid {
        return Err(IssuerError::NotFound(format!(
            "{jkt:?} is not a device key thumbprint (43 base64url characters, as `hwpass status` shows)"
        )));
    }
    let target = Target::Device { jkt: jkt.into() };
    Ok(RevocationStore::new(&cfg.revocations).revoke(target, by, reason, now)?)
}

/// Signs the current deny list (revocations and trust bundle keys) with the issuer key;
/// returns its sequence number and the list.
pub fn publish_denylist(
    cfg: &IssuerConfig,
    bundle: &Jwks,
    key: &dyn KeyBackend,
    now: i64,
) -> Result<(u64, String), IssuerError> {
    Ok(RevocationStore::new(&cfg.revocations).publish_seq(bundle, key, now)?)
}

/// Asks a person for a secret (the binaries prompt on the terminal; tests and services do not).
pub trait PinPrompt {
    /// Returns the PIN, or why none could be read.
    fn pin(&self, prompt: &str) -> Result<SecretString, String>;
}

/// A [`PinPrompt`] that never asks: for scripts and tests.
#[derive(Debug)]
pub struct NoPrompt;

impl PinPrompt for NoPrompt {
    fn pin(&self, _: &str) -> Result<SecretString, String> {
        Err(format!("no HSM PIN: set pin-source in the key URI, or {PIN_ENV}, or run on a terminal to be asked"))
    }
}

/// The PIN: the URI's `pin-source`, else [`PIN_ENV`], else the prompt. Never argv.
pub fn resolve_pin(uri: &Pkcs11Uri, prompt: &dyn PinPrompt) -> Result<SecretString, IssuerError> {
    let from_env = |var: &str| {
        std::env::var(var)
            .map_err(|_| IssuerError::Pin(format!("the PIN variable {var} is not set")))
    };
    let pin = match &uri.pin_source {
        Some(PinSource::Env(var)) => from_env(var)?,
        Some(PinSource::File(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                IssuerError::Pin(format!("cannot read the PIN file {}: {e}", path.display()))
            })?;
            text.lines().next().unwrap_or_default().to_string()
        }
        None => match std::env::var(PIN_ENV) {
            Ok(v) => v,
            Err(_) => {
                return prompt
                    .pin(&format!("PIN for {uri}: "))
                    .map_err(IssuerError::Pin)
            }
        },
    };
    if pin.is_empty() {
        return Err(IssuerError::Pin("the HSM PIN is empty".into()));
    }
    Ok(SecretString::from(pin))
}

/// A pass ready to be signed: the request verified and the policy applied.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The pass claims.
    pub claims: PassClaims,
    /// The attested TPM the pass is delivered sealed to, if the request carried evidence.
    pub deliver_to: Option<attest::Verified>,
}

/// Verifies a request and applies the policy. Needs no HSM, so refusals cost no PIN entry.
pub fn approve(
    cfg: &IssuerConfig,
    request: &str,
    lifetime: Option<i64>,
    now: i64,
) -> Result<Approved, IssuerError> {
    let req = token::verify_request(request, now)?;
    let validity = cfg.policy.decide(&req.claims, lifetime, now)?;
    let deliver_to = match (&req.claims.att, req.claims.kind) {
        (Some(_), BindingKind::Software) => return Err(AttestError::Unexpected.into()),
        (Some(ev), BindingKind::Tpm) if cfg.attestation.configured() => {
            Some(attest::verify(ev, &req.jwk, &cfg.attestation, now)?)
        }
        (Some(_), BindingKind::Tpm) => None,
        (None, BindingKind::Tpm) if cfg.attestation.require => {
            return Err(AttestError::Missing.into())
        }
        (None, _) => None,
    };
    let att = deliver_to.as_ref().map_or(Attestation::None, |v| v.att);
    let claims = PassClaims {
        iss: cfg.iss.clone(),
        sub: req.claims.sub,
        aud: cfg.aud.clone(),
        iat: validity.iat,
        nbf: validity.nbf,
        exp: validity.exp,
        jti: token::random_jti()?,
        cnf: Confirmation {
            jkt: req.jwk.thumbprint(),
        },
        // Without attestation evidence the binding kind is the request's word only.
        hwb: HardwareBinding {
            kind: req.claims.kind,
            att,
        },
        dev: req.claims.dev,
    };
    Ok(Approved { claims, deliver_to })
}

/// Signs approved passes with the HSM key, appends their audit records and fsyncs the log.
/// Returns the passes (sealed to their TPM when attested) only once their records are
/// durable: the caller prints them after this.
pub fn issue(
    approved: &[Approved],
    key: &dyn KeyBackend,
    log: &AuditLog,
    now: i64,
) -> Result<Vec<String>, IssuerError> {
    let (passes, mut records): (Vec<_>, Vec<_>) = approved
        .iter()
        .map(|a| sign_one(a, key, now))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    log.append(&mut records)?;
    Ok(passes)
}

/// Signs one approved pass (sealing it to its TPM when attested) and makes its audit record,
/// not yet written.
pub fn sign_one(
    a: &Approved,
    key: &dyn KeyBackend,
    now: i64,
) -> Result<(String, AuditRecord), IssuerError> {
    let c = &a.claims;
    let kid = Jwk::new(*key.verifying_key()).thumbprint();
    let pass = token::sign_pass_as(c, &kid, key)?;
    let pass = match &a.deliver_to {
        Some(to) => attest::seal_delivery(&pass, to)?,
        None => pass,
    };
    let record = AuditRecord {
        v: 1,
        time: now,
        jti: c.jti.clone(),
        sub: c.sub.clone(),
        jkt: c.cnf.jkt.clone(),
        kind: c.hwb.kind,
        att: c.hwb.att,
        nbf: c.nbf,
        exp: c.exp,
        kid,
        dev: c.dev.clone(),
        by: None,
        prev: String::new(),
    };
    Ok((pass, record))
}

/// How a batch is signed.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// `--valid-for`, if given.
    pub lifetime: Option<i64>,
    /// Requests per audit fsync.
    pub chunk: usize,
    /// The time of signing.
    pub now: i64,
}

/// The outcome of one line of a batch.
#[derive(Debug)]
pub enum BatchItem {
    /// The pass (or delivery), durable in the audit log.
    Issued(String),
    /// Why this request was refused or failed.
    Failed(IssuerError),
}

/// Signs a batch: requests are verified, approved and signed by one worker thread per key of
/// the pool (each key its own PKCS#11 session); the audit records of each chunk of `chunk`
/// requests are appended with one fsync. `emit` receives each chunk's results, in input
/// order, only after that chunk's records are durable — the caller prints them then.
pub fn issue_batch<K: KeyBackend + Send + Sync>(
    cfg: &IssuerConfig,
    requests: &[String],
    opts: &BatchOptions,
    keys: &KeyPool<K>,
    log: &AuditLog,
    mut emit: impl FnMut(Vec<BatchItem>) -> Result<(), IssuerError> + Send,
) -> Result<(), IssuerError> {
    // Chunk k's audit append, fsync and printing run on their own thread while the workers
    // sign chunk k + 1; chunks reach the writer in order, and each chunk's passes are emitted
    // only after its records are durable.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<AuditRecord>, Vec<BatchItem>)>(1);
        let writer = scope.spawn(move || -> Result<(), IssuerError> {
            for (mut records, items) in rx {
                log.append(&mut records)?;
                emit(items)?;
            }
            Ok(())
        });
        for part in requests.chunks(opts.chunk.max(1)) {
            if tx.send(sign_chunk(cfg, part, opts, keys)).is_err() {
                break; // The writer stopped with an error, returned below.
            }
        }
        drop(tx);
        writer
            .join()
            .map_err(|_| IssuerError::Internal("the audit writer stopped unexpectedly".into()))?
    })
}

/// Verifies, approves and signs one chunk on one thread per key; results in input order.
fn sign_chunk<K: KeyBackend + Send + Sync>(
    cfg: &IssuerConfig,
    part: &[String],
    opts: &BatchOptions,
    keys: &KeyPool<K>,
) -> (Vec<AuditRecord>, Vec<BatchItem>) {
    let workers = keys.size().max(1);
    let mut results: Vec<Option<Result<(String, AuditRecord), IssuerError>>> =
        (0..part.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        // Worker w takes requests w, w + workers, …: balanced without a queue.
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    keys.with(|key| {
                        (w..part.len())
                            .step_by(workers)
                            .map(|i| {
                                let r = approve(cfg, &part[i], opts.lifetime, opts.now)
                                    .and_then(|a| sign_one(&a, key, opts.now));
                                (i, r)
                            })
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        for h in handles {
            // Invariant: workers do not panic (every failure is a Result); if one did, its
            // requests stay None and are reported as failed below.
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
        }
    });
    let mut records = Vec::new();
    let mut items = Vec::with_capacity(part.len());
    for r in results {
        match r {
            Some(Ok((pass, record))) => {
                records.push(record);
                items.push(BatchItem::Issued(pass));
            }
            Some(Err(e)) => items.push(BatchItem::Failed(e)),
            None => items.push(BatchItem::Failed(IssuerError::Internal(
                "a signing worker stopped unexpectedly".into(),
            ))),
        }
    }
    (records, items)
}
