//! Every hint a person reads from `hwpass-issuer`: what to do next, by the error. The library
//! reports facts ([`IssuerError`] and the typed errors inside it); the advice lives here.

use hwpass::issuer::{
    Access, AttestError, AuditError, CheckpointError, Ckr, DbError, IssuerError, KeyError,
    Pkcs11Error, RevocationError,
};
use hwpass::{DocKind, TokenError};

/// An exit code, the one-sentence error, and what to do next.
pub type Failure = (i32, String, Option<&'static str>);

/// The failure a person sees for an issuer error.
pub fn fail(e: IssuerError) -> Failure {
    let hint = match &e {
        IssuerError::Config { .. } | IssuerError::ConfigAt { .. } => Some("fix the config file (`hwpass-issuer config check` checks it again; a commented example: /etc/hwpass/issuer.toml.example from the package, or hsm-config/ in the source)"),
        IssuerError::Request(TokenError::NotYetValid { .. }) => Some("the request is dated ahead of this issuer's clock: the person's computer clock is ahead; they should set it to the correct time and make a new request"),
        IssuerError::Request(TokenError::WrongDocument { found, .. }) => Some(match found {
            DocKind::Pass | DocKind::Delivery => "that is a pass this issuer signed: the person installs it with `hwpass install`; sign their request (`hwpass request`) instead",
            DocKind::DenyList => "that is a deny list: desktops install it with `hwpass refresh`",
            DocKind::TrustBundle => "that is the trust bundle desktops enrol with: sign a request from `hwpass request`",
            _ => "sign the one-line request from `hwpass request`",
        }),
        IssuerError::Request(t) if t.is_transport_damage() => Some("the request was damaged on its way here (cut short or re-encoded): ask the person to send it again, whole"),
        IssuerError::Request(_) => Some("ask the person for a new request (`hwpass request`), pasted whole on one line"),
        IssuerError::Policy(_) => Some("sign with a shorter --valid-for, or change [policy] in the config"),
        IssuerError::Attest(AttestError::Missing) => {
            Some("the desktop must request from its TPM (hwpass enroll --backend tpm), or set [attestation] require = false")
        }
        IssuerError::Attest(_) => Some("the TPM evidence does not hold up: do not issue a pass for this device; see README \"Attestation\""),
        IssuerError::Key(k) => key_hint(k),
        IssuerError::Revocation(RevocationError::Database(d)) => db_hint(d),
        IssuerError::Revocation(_) => Some("fix the revocation register's location or permissions (config `revocations`)"),
        IssuerError::NotFound(_) => Some("list issued passes with `hwpass-issuer audit list`"),
        IssuerError::Audit(a) => audit_hint(a.cause()),
        IssuerError::TooLarge { .. } => Some("shorten issuer or audience in the config: desktops refuse passes over 8 KiB"),
        IssuerError::Exposed { access: Access::Writable, .. } => Some("other accounts could change what the issuer trusts: `chmod go-w` the path named above (and make sure root or the issuer's own account owns it)"),
        IssuerError::Exposed { access: Access::Readable, .. } => Some("a secret must be readable by its owner only: `chmod 600` the file named above"),
        _ => None,
    };
    (e.exit_code(), e.to_string(), hint)
}

/// `db` commands with a config that names no database.
pub const NO_DATABASE: &str = "add a [store] section with `postgres = \"postgresql://USER@HOST:PORT/DB\"` (and password_file) to the config: docs/replicas.md";

/// What to do about a PostgreSQL failure.
fn db_hint(e: &DbError) -> Option<&'static str> {
    Some(match e {
        DbError::Unavailable { .. } => "check that PostgreSQL is running and reachable at [store] postgres (and the password in [store] password_file), then retry",
        DbError::Refused { code, .. } if code == "25006" => "this database is a read-only standby: replicas on it serve reads only; point [store] postgres at the primary to sign and revoke",
        DbError::Refused { code, .. } if code == "42501" => "the database role lacks a privilege: `db migrate` needs one that may create tables; replicas need SELECT, INSERT, UPDATE, DELETE on the hwpass_ tables (docs/replicas.md)",
        DbError::Refused { code, .. } if code == "28P01" || code == "28000" => "PostgreSQL refused the login: check the user in [store] postgres and the password in [store] password_file",
        DbError::Refused { .. } => "see PostgreSQL's message above; docs/replicas.md lists what hwpass needs from the database",
        DbError::Schema { found: None, .. } => "create the schema with `hwpass-issuer db migrate` (with a role that may create tables), then start the replicas",
        DbError::Schema { found: Some(v), expected, .. } if v < expected => "upgrade the schema with `hwpass-issuer db migrate` (replicas never change it themselves)",
        DbError::Schema { .. } => "the database was migrated by a newer hwpass-issuer: run that version",
        DbError::NotEmpty { .. } => "import only into a new database: create an empty one, run `db migrate`, then `db import`",
        DbError::Damaged { .. } => "the database holds rows hwpass did not write: restore it from a backup (docs/replicas.md)",
        DbError::Client(_) => "the process could not start its database client (threads): check the system's limits",
        _ => return None,
    })
}

/// What to do when a revocation is in force but its audit record could not be written.
pub const REVOKED_UNAUDITED: &str = "desktops get the revocation from the register as usual; check the audit log (`hwpass-issuer audit verify`) and the HSM, and note the revocation wherever you keep records of incidents";

/// What to do about an audit log that cannot be appended or does not verify (signing stops
/// until it does; docs/hardening.md "The audit log" has the procedures).
fn audit_hint(e: &AuditError) -> Option<&'static str> {
    Some(match e {
        AuditError::Io { .. } => "no pass was printed; fix the audit log location or permissions and sign again",
        AuditError::Sign(_) => "the HSM did not sign the audit checkpoint: no pass was printed; check the HSM and sign again",
        AuditError::NoCheckpoint { .. } => "if the checkpoint file was deleted, restore it from a backup; for a log written before checkpoints, check it (`hwpass-issuer audit verify` names any damage) and run `hwpass-issuer audit seal` once",
        AuditError::Cut { .. } => "records were removed from the log: restore it from a backup; to sign again without them, move the log and its .checkpoint file aside (keep both for investigation) and hwpass starts a new log",
        AuditError::Mismatch { .. } | AuditError::Broken { .. } | AuditError::Malformed { .. } => "the log was altered: compare it with a backup; to sign again, restore it, or move the log and its .checkpoint file aside (keep both for investigation) and hwpass starts a new log",
        AuditError::Uncovered { .. } => "review the lines after the last checkpoint (`hwpass-issuer audit list`): remove them if they are not genuine, or run `hwpass-issuer audit seal` to cover them",
        AuditError::Inconsistent { .. } => "the log was cut or rewritten since the saved checkpoint: restore it from a backup",
        AuditError::Database(d) => return db_hint(d),
        AuditError::Position { .. } => "entries were deleted or renumbered in the database: restore it from a backup (docs/replicas.md)",
        AuditError::Stopped(_) => "appends stopped on every replica: run `hwpass-issuer audit verify`; if the log verifies, `hwpass-issuer audit seal` resumes them, otherwise restore the database from a backup",
        AuditError::Checkpoint(CheckpointError::UnknownKey) => "the last checkpoint was signed by a key this issuer no longer trusts: list that key in [key] also_trusted (or restore the checkpoint file)",
        AuditError::Checkpoint(CheckpointError::WrongOrigin { .. }) => "[audit] origin in the config changed: set it back to the name the checkpoint carries",
        AuditError::Checkpoint(_) | AuditError::State { .. } => "the checkpoint file was altered or damaged: restore it from a backup",
        _ => return None,
    })
}

/// What to do about a key manager (HSM) failure.
fn key_hint(e: &KeyError) -> Option<&'static str> {
    if let KeyError::PinFileExposed { .. } = e {
        return Some("the PIN file must be readable by its owner only: `chmod 600` it (owned by the account that runs hwpass-issuer)");
    }
    if let KeyError::Pin(_) = e {
        return Some("set HWPASS_PIN or pin-source=file:/path in the key URI; the PIN is never taken from the command line");
    }
    if let KeyError::Uri(_) | KeyError::UnsupportedScheme { .. } = e {
        return Some("fix the key uri in the config's [key] section (RFC 7512: pkcs11:token=…;object=…?module-path=…)");
    }
    let p = e.pkcs11()?;
    Some(match p {
        Pkcs11Error::ModuleMissing { .. } => "install the module (SoftHSM: apt-get install softhsm2) or fix module-path in the config",
        Pkcs11Error::ModuleLoad { .. } => "check that module-path points to a PKCS#11 library",
        Pkcs11Error::NoToken { .. } => "create the token (softhsm/setup-token) or fix token= in the config",
        Pkcs11Error::AmbiguousToken { .. } => "add serial= to the URI to pick one token",
        Pkcs11Error::KeyExists { .. } => "choose another object= label",
        Pkcs11Error::NoKey { .. } => "run `hwpass-issuer keygen` or fix object= in the config",
        Pkcs11Error::AmbiguousKey { .. } => "add id= to the URI to pick one key",
        Pkcs11Error::Poisoned => "restart the issuer",
        Pkcs11Error::NoMechanism => "use a token that signs with ECDSA on P-256 (docs/hsm.md lists tested modules)",
        Pkcs11Error::WeakKey { .. } => "the module overrides hwpass's key template: check its key policy (docs/hsm.md) and run keygen again",
        Pkcs11Error::Call { rv, .. } => match rv {
            Ckr::PinIncorrect => "check the PIN — each wrong attempt counts towards the token's lock-out",
            Ckr::PinLocked => "the security officer must reset the user PIN",
            Ckr::PinExpired => "set a new PIN with the token's tools",
            Ckr::UserPinNotInitialized => "initialise the token's user PIN (softhsm2-util --init-token)",
            Ckr::DeviceMemory | Ckr::HostMemory => "free space on the token",
            Ckr::TokenNotPresent | Ckr::DeviceRemoved => "reconnect the token and retry",
            Ckr::SessionHandleInvalid | Ckr::SessionClosed => "retry",
            Ckr::SessionCount => "the HSM has no free session: lower [key] max_sessions or stop other clients of the token",
            Ckr::DeviceError | Ckr::GeneralError | Ckr::FunctionFailed => "check that the HSM (or its network client's server) is running and reachable, then retry",
            _ => return None,
        },
        _ => return None,
    })
}
