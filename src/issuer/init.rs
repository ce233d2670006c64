//! `hwpass-issuer init`: a working issuer from nothing. Writes a commented config and, with
//! SoftHSM, creates the token (its own token directory, a random user PIN in a file only the
//! issuer's account reads, a random security officer PIN), the key and the trust bundle.
//! Never overwrites: everything it would create is checked first, and any of it existing stops
//! it before anything is written.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::config::IssuerConfig;
use super::error::IssuerError;
use super::keys::pkcs11::init_free_token;
use super::keys::{KeyError, PinPrompt};
use super::sign::trust_bundle;

/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// What `init` sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The config file to write.
    pub config: PathBuf,
    /// Where the audit log, the revocation register and (with SoftHSM) the token live.
    pub state_dir: PathBuf,
    /// `issuer` (`iss` of every pass).
    pub issuer: String,
    /// `audience` (`aud` of every pass).
    pub audience: String,
    /// The key: a new SoftHSM token, or a key URI of an HSM set up already.
    pub key: InitKey,
    /// The account the service runs as: it gets the state directory and the PIN file, and
    /// reads the config through its group (`init` must run as root for that).
    pub owner: Option<Account>,
}

/// Where `init`'s issuer key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitKey {
    /// A new SoftHSM token in the state directory, with this module.
    SoftHsm {
        /// The SoftHSM2 PKCS#11 module.
        module: PathBuf,
    },
    /// An existing HSM: this key URI goes into the config as given (make the key with
    /// `keygen`).
    Uri(String),
}

/// A local account: name, uid, gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl Account {
    /// The account `name` from /etc/passwd, if it exists.
    pub fn lookup(name: &str) -> Option<Self> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| Self {
                name: name.to_string(),
                uid: f[2].parse().unwrap_or(u32::MAX),
                gid: f[3].parse().unwrap_or(u32::MAX),
            })
        })
    }
}

/// What `init` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The config written.
    pub config: PathBuf,
    /// The trust bundle written (SoftHSM: the key was made).
    pub trust_bundle: Option<PathBuf>,
    /// The new key's id (RFC 7638 thumbprint).
    pub kid: Option<String>,
    /// The PIN file written.
    pub pin_file: Option<PathBuf>,
    /// The SoftHSM token directory made.
    pub token_dir: Option<PathBuf>,
}

/// The token label and key label `init` gives a SoftHSM issuer.
const TOKEN_LABEL: &str = "hwpass";
const KEY_LABEL: &str = "hwpass-issuer";

impl InitOptions {
    fn config_dir(&self) -> PathBuf {
        match self.config.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn pin_file(&self) -> PathBuf {
        self.config_dir().join("pin")
    }

    fn token_dir(&self) -> PathBuf {
        self.state_dir.join("softhsm")
    }

    /// The config `init` writes, commented, with these values.
    pub fn config_text(&self) -> String {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let state = absolute(&self.state_dir);
        let config_dir = absolute(&self.config_dir());
        let toml = |s: &str| serde_json::Value::from(s).to_string();
        let (uri, module_env) = match &self.key {
            InitKey::SoftHsm { module } => (
                format!(
                    "pkcs11:token={TOKEN_LABEL};object={KEY_LABEL}?module-path={}&pin-source=file:{}",
                    module.display(),
                    absolute(&self.pin_file()).display()
                ),
                format!(
                    "# What the PKCS#11 library reads from the environment, set before it loads: here\n\
                     # SoftHSM's own config, naming the token directory beside the audit log.\n\
                     module_env = {{ SOFTHSM2_CONF = {} }}\n",
                    toml(&state.join("softhsm/softhsm2.conf").display().to_string())
                ),
            ),
            InitKey::Uri(uri) => (uri.clone(), String::new()),
        };
        format!(
            r#"# hwpass issuer config, written by `hwpass-issuer init`.
#
# Relative paths in this file resolve against its own folder ({config_dir}/), never
# the current directory. `hwpass-issuer config check` checks it and prints every value in
# force; after an edit, `systemctl reload hwpass-issuer` (SIGHUP) applies it to the running
# service, or refuses it and keeps the old one (docs/operations.md).

# `iss` and `aud` of every pass; desktops learn both from the trust bundle.
issuer = {issuer}
audience = {audience}

# The audit log: one JSON line per pass and revocation, hash-chained, with checkpoints signed
# in the HSM, fsynced before a pass is handed out. The revocation register goes beside it.
audit_log = {audit_log}

[key]
# RFC 7512 PKCS#11 URI: module, token and key label. The PIN comes from pin-source, a file
# the issuer's account alone may read (mode 0600), or HWPASS_PIN, or a prompt; never from the
# command line.
uri = {uri}
{module_env}
[policy]
default_lifetime = "7d"
max_lifetime = "14d"
# Software-bound desktops (no TPM) are the weaker binding: accepted, for at most 2 days.
allow_software = true
software_max_lifetime = "2d"
# A request must be signed within this long after it was made.
max_request_age = "7d"

# TPM attestation (docs/attestation.md): require evidence that the key is in a genuine TPM.
# [attestation]
# require = true
# ek_roots = ["tpm-roots.pem"]                  # that is {config_dir}/tpm-roots.pem
# ek_intermediates = ["tpm-intermediates.pem"]

[serve]
# The issuing service (`hwpass-issuer serve`, the hwpass-issuer systemd unit): loopback
# unless TLS is configured or a TLS proxy is in front.
listen = "127.0.0.1:8080"
# tls_cert = "tls/fullchain.pem"                # that is {config_dir}/tls/fullchain.pem
# tls_key = "tls/key.pem"
# Admins: `hwpass-issuer admin-token --name NAME` prints a [[serve.admins]] block for here.
"#,
            config_dir = config_dir.display(),
            issuer = toml(&self.issuer),
            audience = toml(&self.audience),
            audit_log = toml(&state.join("audit.jsonl").display().to_string()),
            uri = toml(&uri),
        )
    }
}

/// Why `init` stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// Something `init` would create is there already.
    #[error("{} exists already; init never overwrites (move it aside, or use another --config or --state-dir)", .0.display())]
    Exists(PathBuf),
    /// A file or directory could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The new config does not load, the token or key could not be made.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
}

impl From<KeyError> for InitError {
    fn from(e: KeyError) -> Self {
        Self::Issuer(e.into())
    }
}

/// A PIN `init` made: no prompt needed.
struct Known<'a>(&'a SecretString);

impl PinPrompt for Known<'_> {
    fn pin(&self, _prompt: &str) -> Result<SecretString, String> {
        Ok(self.0.clone())
    }
}

/// Random hex digits (PINs).
fn random_hex(bytes: usize) -> Result<String, InitError> {
    let mut raw = vec![0u8; bytes];
    getrandom::getrandom(&mut raw).map_err(|e| InitError::Io {
        path: PathBuf::from("/dev/urandom"),
        source: std::io::Error::other(e),
    })?;
    Ok(hex::encode(raw))
}

/// Writes a new file (never replacing one) with `mode`.
fn create(path: &Path, data: &[u8], mode: u32) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => InitError::Exists(path.to_path_buf()),
            _ => io(e),
        })?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)?;
    // The umask may have taken bits the mode asked for; set them exactly.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

fn mkdir(path: &Path, mode: u32) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// Hands `path` (and, for a directory, everything in it) to `owner`.
fn chown_all(path: &Path, owner: &Account) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).map_err(io)?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            chown_all(&entry.map_err(io)?.path(), owner)?;
        }
    }
    Ok(())
}

/// Sets up an issuer as `opts` says; see the module documentation.
pub fn init(opts: &InitOptions) -> Result<InitReport, InitError> {
    let softhsm = matches!(opts.key, InitKey::SoftHsm { .. });
    let bundle_path = opts.state_dir.join("issuer.jwks");
    let mut planned = vec![opts.config.clone()];
    if softhsm {
        planned.extend([opts.pin_file(), opts.token_dir(), bundle_path.clone()]);
    }
    planned.push(opts.state_dir.join("audit.jsonl"));
    if let Some(existing) = planned.iter().find(|p| p.exists()) {
        return Err(InitError::Exists(existing.clone()));
    }
    // The config's folder: other accounts may read it, never write it.
    let config_dir = opts.config_dir();
    if !config_dir.exists() {
        mkdir(&config_dir, 0o755)?;
    }
    let made_state_dir = !opts.state_dir.exists();
    if made_state_dir {
        mkdir(&opts.state_dir, 0o750)?;
    }
    let mut report = InitReport {
        config: opts.config.clone(),
        trust_bundle: None,
        kid: None,
        pin_file: None,
        token_dir: None,
    };
    let pin = match &opts.key {
        InitKey::SoftHsm { module } => {
            let token_dir = opts.token_dir();
            mkdir(&token_dir.join("tokens"), 0o700)?;
            mkdir(&token_dir, 0o700)?;
            report.token_dir = Some(token_dir.clone());
            let absolute = std::path::absolute(&token_dir).unwrap_or(token_dir.clone());
            let conf = absolute.join("softhsm2.conf");
            create(
                &conf,
                format!(
                    "# SoftHSM2 token store of the hwpass issuer (made by hwpass-issuer init).\n\
                     directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                    absolute.join("tokens").display()
                )
                .as_bytes(),
                0o600,
            )?;
            // SoftHSM reads this when it loads; the config names it for every later run.
            std::env::set_var("SOFTHSM2_CONF", &conf);
            let user_pin = SecretString::from(random_hex(12)?);
            let so_pin = SecretString::from(random_hex(16)?);
            create(
                &opts.pin_file(),
                format!("{}\n", secrecy::ExposeSecret::expose_secret(&user_pin)).as_bytes(),
                0o600,
            )?;
            report.pin_file = Some(opts.pin_file());
            // Kept with the token, for whoever administers it (reset the user PIN).
            create(
                &token_dir.join("so-pin"),
                format!("{}\n", secrecy::ExposeSecret::expose_secret(&so_pin)).as_bytes(),
                0o600,
            )?;
            init_free_token(module, TOKEN_LABEL, &so_pin, &user_pin)
                .map_err(|e| IssuerError::Key(e.into()))?;
            Some(user_pin)
        }
        InitKey::Uri(_) => None,
    };
    // The config, readable by the service's group, writable by its owner alone.
    let config_mode = if opts.owner.is_some() { 0o640 } else { 0o600 };
    create(&opts.config, opts.config_text().as_bytes(), config_mode)?;
    if let Some(owner) = &opts.owner {
        std::os::unix::fs::chown(&opts.config, None, Some(owner.gid)).map_err(|source| {
            InitError::Io {
                path: opts.config.clone(),
                source,
            }
        })?;
    }
    // What was written must load, as every later command will load it.
    let cfg = IssuerConfig::load(&opts.config)?;
    if let Some(pin) = &pin {
        cfg.key.unlock(&Known(pin))?;
        let key = cfg.key.create()?;
        report.kid = Some(crate::core::jwk::Jwk::new(*key.verifying_key()).thumbprint());
        let bundle = trust_bundle(&cfg)?;
        let text = serde_json::to_string_pretty(&bundle.to_json()).unwrap_or_default();
        create(&bundle_path, format!("{text}\n").as_bytes(), 0o644)?;
        report.trust_bundle = Some(bundle_path);
    }
    // The service's account owns what it writes to and reads secrets from: only what init
    // made (a state directory that was there keeps its owner; the package makes it so).
    if let Some(owner) = &opts.owner {
        let mut made: Vec<&Path> = Vec::new();
        if made_state_dir {
            made.push(&opts.state_dir);
        }
        made.extend(report.token_dir.as_deref());
        made.extend(report.pin_file.as_deref());
        made.extend(report.trust_bundle.as_deref());
        for path in made {
            if path == opts.state_dir {
                std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).map_err(
                    |source| InitError::Io {
                        path: path.to_path_buf(),
                        source,
                    },
                )?;
            } else {
                chown_all(path, owner)?;
            }
        }
    }
    Ok(report)
}
