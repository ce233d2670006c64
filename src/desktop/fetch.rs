//! Fetching the signed deny list from the issuing service (`hwpass refresh --server`).
//!
//! Transport security is a convenience here, not the protection: the list is verified against
//! the issuer keys the desktop already trusts, whatever channel it came over. HTTPS still keeps
//! it private and lets a desktop notice a wrong server early.

use std::path::Path;
use std::time::Duration;

use super::error::DesktopError;
use crate::core::denylist::MAX_DENYLIST_LEN;

/// `GET {server}/v1/denylist`, trusting the system's web PKI roots, or only the CA
/// certificates in `ca` (PEM) when given.
pub fn denylist(server: &str, ca: Option<&Path>) -> Result<String, DesktopError> {
    let base = server.trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err(DesktopError::Input(format!(
            "{server:?} is not an http:// or https:// URL"
        )));
    }
    let agent = crate::sys::http_agent(ca, Duration::from_secs(20)).map_err(DesktopError::Input)?;
    let url = format!("{base}/v1/denylist");
    let fetch_err = |detail: String| DesktopError::Fetch(format!("GET {url}: {detail}"));
    let resp = agent.get(&url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => {
            fetch_err(format!("the server answered {code} {}", r.status_text()))
        }
        ureq::Error::Transport(t) => DesktopError::Fetch(t.to_string()),
    })?;
    let mut body = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(resp.into_reader(), MAX_DENYLIST_LEN as u64 + 2),
        &mut body,
    )
    .map_err(|e| fetch_err(e.to_string()))?;
    if body.trim().len() > MAX_DENYLIST_LEN {
        return Err(fetch_err("the answer is larger than any deny list".into()));
    }
    Ok(body.trim().to_string())
}
