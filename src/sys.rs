//! The few operating-system helpers both sides use: crash-safe file writes (temp file, fsync,
//! rename, fsync the directory — a crash leaves the old or the new version, never half of one),
//! private directories, the clock, standard input and the HTTP client. Neither `core` (pure) nor a room of its
//! own: `issuer` and `desktop` share these without importing each other.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `data` to `path` atomically with mode 0600 (the temp file is created 0600, so the
/// content is never readable by others, not even briefly).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut rnd = [0u8; 6];
    getrandom::getrandom(&mut rnd).map_err(io::Error::other)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(rnd)
    ));
    let result = (|| {
        let mut f = private_new_file(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so a rename or a new file in it survives a crash (Unix; other platforms
/// make a rename durable without it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(all(unix, not(hwpass_emulate_non_unix)))]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(all(unix, not(hwpass_emulate_non_unix))))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates a new file readable and writable by its owner only (mode 0600 on Unix; elsewhere
/// the platform's default for a file in the user's profile).
fn private_new_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(all(unix, not(hwpass_emulate_non_unix)))]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates a directory (and parents) with mode 0700 if it does not exist (on Unix; elsewhere the
/// platform's default, which for the per-user data directory is private to the user).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(all(unix, not(hwpass_emulate_non_unix)))]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Environment variable that injects the current time (Unix seconds) for tests and demos.
///
/// It grants nothing a person could not get by setting the system clock, which they control
/// anyway; clock-rollback detection applies to it the same way. Every use is announced on
/// stderr by the binaries.
pub const FAKE_NOW_ENV: &str = "HWPASS_FAKE_NOW";

/// The current time in Unix seconds, from [`FAKE_NOW_ENV`] when set.
pub fn now() -> Result<i64, String> {
    match std::env::var(FAKE_NOW_ENV) {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{FAKE_NOW_ENV} must be Unix seconds, got {v:?}")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .map_err(|_| "the system clock is before 1970".to_string()),
    }
}

/// Reads a token from the argument, or from stdin when it is `-` or absent. Surrounding
/// whitespace (the newline of a paste) is removed; anything else is left for the strict parser.
pub fn read_token_arg(arg: Option<&str>) -> Result<String, String> {
    match arg {
        Some(t) if t != "-" => Ok(t.trim().to_string()),
        _ => read_stdin(crate::core::jws::MAX_TOKEN_LEN * 2),
    }
}

/// Reads a document the person gave: `-` (or nothing) for standard input, the path of an
/// existing file, or the text itself; at most `limit` bytes. An argument that looks like a
/// path but names no file is refused, saying so (it is a typo, not a token).
pub fn read_document(arg: Option<&str>, limit: usize, what: &str) -> Result<String, String> {
    let arg = match arg {
        None | Some("-") => return read_stdin(limit),
        Some(a) => a,
    };
    let path = Path::new(arg);
    if path.is_file() {
        use std::io::Read as _;
        let mut text = String::new();
        File::open(path)
            .and_then(|f| f.take(limit as u64).read_to_string(&mut text))
            .map_err(|e| format!("cannot read {what} from {arg}: {e}"))?;
        return Ok(text);
    }
    let pathlike = arg.contains('/')
        || [".txt", ".jwt", ".jwks", ".json", ".pass", ".req"]
            .iter()
            .any(|x| arg.ends_with(x));
    if pathlike {
        return Err(format!(
            "there is no file {arg}; give the {what} itself (quoted), a file that holds it, or - to paste it on standard input"
        ));
    }
    Ok(arg.to_string())
}

/// Reads at most `limit` bytes of stdin (more is left unread, and the strict parsers refuse
/// the cut text), trimmed.
pub fn read_stdin(limit: usize) -> Result<String, String> {
    use std::io::Read as _;
    let mut buf = String::new();
    std::io::stdin()
        .take(limit as u64)
        .read_to_string(&mut buf)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    Ok(buf.trim().to_string())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn atomic_write_replaces_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

/// The HTTP client for the issuing service and the sign-in provider: no redirects (an answer
/// must not send this process elsewhere), `timeout` for each request, and the system's web
/// PKI roots, or only the CA certificates in `ca` (PEM) when given.
pub fn http_agent(ca: Option<&Path>, timeout: std::time::Duration) -> Result<ureq::Agent, String> {
    agent(ca.map(|ca| (ca, false)), timeout)
}

#[cfg(feature = "desktop")]
/// Like [`http_agent`], but the CA certificates in `ca` are trusted *besides* the web PKI
/// roots: for the sign-in provider an issuing service names, which is often a public service
/// (Entra ID, Okta, Google) while the issuing service itself has a private CA.
pub fn http_agent_also_trusting(
    ca: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<ureq::Agent, String> {
    agent(ca.map(|ca| (ca, true)), timeout)
}

/// `ca`: a CA file, and whether the web PKI roots are trusted beside it.
fn agent(ca: Option<(&Path, bool)>, timeout: std::time::Duration) -> Result<ureq::Agent, String> {
    let mut builder = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .user_agent(concat!("hwpass/", env!("CARGO_PKG_VERSION")));
    if let Some((ca, web)) = ca {
        builder = builder.tls_config(std::sync::Arc::new(tls_roots(ca, web)?));
    }
    Ok(builder.build())
}

/// A TLS client config that trusts only the CA certificates in `ca` (PEM).
#[cfg(feature = "issuer")]
pub fn tls_client_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
    tls_roots(ca, false)
}

fn tls_roots(ca: &Path, web: bool) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let bad = |detail: String| format!("CA file {}: {detail}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificates in it".into()));
    }
    #[cfg(feature = "desktop")]
    if web {
        // The same roots ureq trusts by default.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    #[cfg(not(feature = "desktop"))]
    let _ = web;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
