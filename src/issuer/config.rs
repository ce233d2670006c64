//! The issuer configuration file (TOML), parsed and checked once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::attest::{
    check_anchor, display_name, is_self_issued, normalize_manufacturer, parse_pem_certificates,
    AttestationPolicy,
};
use super::error::IssuerError;
use super::keys::{self, KeyManager};
use super::policy::{Policy, PolicyConfig};
use super::store::file::{FileAuditLog, FileRegister};
use super::store::{AuditStore, RevocationStore};
use crate::core::jwk::{Jwk, Jwks, TrustParams};
use crate::core::time::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    issuer: String,
    audience: String,
    audit_log: PathBuf,
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
            out.session_lifetime = parse_duration(&d)?;
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
    pub key: Arc<dyn KeyManager>,
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
    /// Things the person should know about the config (deprecated names), one sentence each.
    pub notices: Vec<String>,
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
        let key = keys::manager(&key_section.uri).map_err(|e| err(e.to_string()))?;
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
            key,
            also_trusted: key_section.also_trusted,
            revocations,
            serve,
            policy,
            attestation,
            notices,
        })
    }

    /// The audit log this config names.
    pub fn audit_store(&self) -> Arc<dyn AuditStore> {
        Arc::new(FileAuditLog::new(&self.audit_log))
    }

    /// The revocation register this config names.
    pub fn revocation_store(&self) -> Arc<dyn RevocationStore> {
        Arc::new(FileRegister::new(&self.revocations))
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
