//! `hwpass request --server`: a pass from the issuing service for the person who signs in at
//! the company's OpenID provider, through the OAuth 2.0 Device Authorization Grant (RFC 8628).
//!
//! The service names the provider and the desktop's public client (`GET /v1/self`). The
//! provider gives a code that the person enters on its page, on any browser; the ID token it
//! then hands this desktop goes to the service only (`GET /v1/self/whoami`,
//! `POST /v1/self/passes`), which verifies it and decides. The request and the install are the
//! very calls `hwpass request` and `hwpass install` make. Nothing is written on this desktop
//! before the pass has been verified; the pass and the remembered server are stored in one
//! write of the sealed state.
//!
//! What a person sees (the code, a countdown) and what an interruption may do are the front
//! end's business: [`SignInPrompt`] (rage's `Callbacks`), told each [`Stage`].

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::commands::{install_remembering, request};
use super::device::DeviceOptions;
use super::enrolment::Enrolment;
use super::error::{DesktopError, OnlineError};
use super::verdict::Verdict;
use crate::core::claims::{check_text, MAX_SUB_CHARS};
use crate::oidc::{OidcError, Provider};

/// Each request to the service or the provider may take this long.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Largest answer read from the service (a pass sealed to a TPM is a few kilobytes).
const MAX_ANSWER: u64 = 256 * 1024;

/// What `hwpass request --server` is given.
#[derive(Debug, Clone)]
pub struct OnlineRequest<'a> {
    /// The issuing service, e.g. `https://passes.corp.example`.
    pub server: &'a str,
    /// Trust only these CA certificates (PEM) for the service; for the sign-in provider they
    /// are trusted besides the web PKI roots.
    pub ca: Option<&'a Path>,
    /// Who the person expects to sign in as: anyone else is refused before anything is
    /// signed. `None`: whoever signs in.
    pub subject: Option<&'a str>,
    /// Lifetime to ask for, in seconds (the request's `ttl`).
    pub ttl: Option<i64>,
    /// Device name for the request.
    pub dev: Option<String>,
}

/// Where and with which code the person signs in (RFC 8628 §3.2).
#[derive(Debug, Clone)]
pub struct SignInCode {
    /// The provider (its issuer URL).
    pub idp: String,
    /// The page to open.
    pub verification_uri: String,
    /// The same page with the code filled in, when the provider gives one (for a QR code).
    pub verification_uri_complete: Option<String>,
    /// The code to enter there.
    pub user_code: String,
    /// How long the code is valid.
    pub expires_in: Duration,
}

/// Who signed in and what their group allows, as the service says (`GET /v1/self/whoami`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedIn {
    /// The verified identity: the pass's `sub`.
    pub identity: String,
    /// The provider.
    pub idp: String,
    /// The group whose rule applies.
    #[serde(default)]
    pub group: Option<String>,
    /// The longest pass the group may get, in seconds.
    #[serde(default)]
    pub max_lifetime: Option<i64>,
    /// Whether software-bound passes are allowed.
    #[serde(default)]
    pub software: Option<bool>,
    /// Whether a verified TPM attestation is required.
    #[serde(default)]
    pub attestation_required: Option<bool>,
    /// Passes left in the last 24 hours (`None`: no limit).
    #[serde(default)]
    pub passes_left_today: Option<u32>,
}

/// Where the flow is: a front end decides by it what an interruption (Ctrl-C) may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Opening the enrolment and its sealed state: the device is in use, nothing is written.
    Checking,
    /// Talking to the service and the provider, waiting for the person to sign in: the device
    /// is not in use and nothing is written.
    SigningIn,
    /// The device key signs the request: the device is in use, nothing is written.
    Requesting,
    /// The request is at the service, which may sign a pass (and record it in its audit log)
    /// whatever happens here; nothing is written on this desktop.
    Sending,
    /// The pass is verified and stored: the sealed state (and with a TPM, its counter) is
    /// written.
    Installing,
}

impl Stage {
    /// Whether the device is in use or the state is being written: an interruption should
    /// wait until the stage ends (a TPM left mid-command can keep objects loaded; a write
    /// stopped between the TPM counter and the file leaves a state the counter refuses).
    pub fn device_busy(self) -> bool {
        matches!(self, Self::Checking | Self::Requesting | Self::Installing)
    }
}

/// What [`request_online`] asks of its front end.
pub trait SignInPrompt {
    /// The flow enters `stage`.
    fn stage(&self, stage: Stage);
    /// Show the person where to sign in and the code (once, before the first wait).
    fn show(&self, code: &SignInCode);
    /// Wait `d` before polling the provider again (a front end counts down meanwhile).
    fn sleep(&self, d: Duration);
    /// The service says who signed in; the request is made next.
    fn signed_in(&self, who: &SignedIn);
}

/// What `hwpass request --server` did: the installed pass's verdict (as `install --json`
/// prints it) and who got it.
#[derive(Debug, Clone, Serialize)]
pub struct OnlineReport {
    /// The verdict on the installed pass.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The person who signed in (the pass's subject).
    pub signed_in_as: String,
    /// Their provider.
    pub idp: String,
    /// The group whose rule allowed the pass.
    pub group: Option<String>,
    /// The service, remembered for `hwpass refresh`.
    pub server: String,
    /// The pass came sealed to this TPM (`hwpass-dlv1.`) and was opened by it.
    pub sealed_to_tpm: bool,
    /// The service saw this desktop's clock ahead by this much once (its time mark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_ahead_seconds: Option<i64>,
}

/// Signs the person in at the provider the service names, asks the service for their pass
/// and installs it; `now` reads the clock (sign-in takes minutes).
pub fn request_online(
    dir: &Path,
    opts: &DeviceOptions,
    req: &OnlineRequest<'_>,
    now: &dyn Fn() -> i64,
    prompt: &dyn SignInPrompt,
) -> Result<OnlineReport, DesktopError> {
    let mut api = Api::new(req.server, req.ca)?;
    if let Some(s) = req.subject {
        check_text(s, MAX_SUB_CHARS)
            .map_err(|p| DesktopError::Input(format!("the subject {p}")))?;
    }
    // Not enrolled, or a state that does not open here: say so before the person signs in.
    prompt.stage(Stage::Checking);
    Enrolment::open(dir, opts)?.load_state()?;

    prompt.stage(Stage::SigningIn);
    let info = api.self_info()?;
    let idp = info.idp.as_str();
    if !secure(idp) {
        return Err(OnlineError::InsecureUrl { url: idp.into() }.into());
    }
    let agent =
        crate::sys::http_agent_also_trusting(req.ca, TIMEOUT).map_err(DesktopError::Input)?;
    let provider = Provider::new(idp, agent).map_err(|e| idp_error(idp, e, None))?;
    // The ID token comes back from the token endpoint: never in the clear on the network.
    let endpoints = provider
        .device_endpoints()
        .map_err(|e| idp_error(idp, e, None))?;
    if let Some(url) = endpoints.iter().find(|u| !secure(u)) {
        return Err(OnlineError::InsecureUrl { url: url.clone() }.into());
    }
    let code = provider
        .device_start(&info.client_id, &info.scopes)
        .map_err(|e| idp_error(idp, e, None))?;
    prompt.show(&SignInCode {
        idp: idp.to_string(),
        verification_uri: code.verification_uri.clone(),
        verification_uri_complete: code.verification_uri_complete.clone(),
        user_code: code.user_code.clone(),
        expires_in: code.expires_in,
    });
    let token = provider
        .device_wait(&info.client_id, &code, |d| prompt.sleep(d))
        .map_err(|e| idp_error(idp, e, Some(code.expires_in)))?;
    let who = api.whoami(&token)?;
    if let Some(subject) = req.subject {
        if subject != who.identity {
            return Err(OnlineError::WrongSubject {
                subject: subject.into(),
                identity: who.identity,
            }
            .into());
        }
    }
    prompt.signed_in(&who);

    prompt.stage(Stage::Requesting);
    let request = request(dir, opts, &who.identity, req.ttl, req.dev.clone(), now())?;
    prompt.stage(Stage::Sending);
    let issued = api.sign(&token, &request)?;
    prompt.stage(Stage::Installing);
    let verdict = install_remembering(dir, opts, &issued.pass, Some((req.server, req.ca)), now())?;
    Ok(OnlineReport {
        verdict,
        signed_in_as: who.identity,
        idp: who.idp,
        group: who.group,
        server: req.server.to_string(),
        sealed_to_tpm: issued.sealed_to_tpm,
        clock_ahead_seconds: issued.clock_ahead_seconds,
    })
}

/// A provider failure as the person should read it; `lifetime`: the code's, once shown.
fn idp_error(idp: &str, e: OidcError, lifetime: Option<Duration>) -> DesktopError {
    let idp = idp.to_string();
    match e {
        OidcError::Unavailable { detail, .. } => OnlineError::IdpUnavailable {
            detail: format!("the sign-in provider {idp} is unavailable: {detail}"),
            idp,
        },
        OidcError::Expired => OnlineError::Expired {
            lifetime: lifetime.map_or(0, |l| l.as_secs() as i64),
        },
        OidcError::Denied(detail) => OnlineError::Denied { idp, detail },
        OidcError::Refused(d) => OnlineError::IdpConfig {
            idp,
            detail: format!("it refused this desktop's sign-in ({d})"),
        },
        OidcError::Token(detail) | OidcError::Config(detail) => {
            OnlineError::IdpConfig { idp, detail }
        }
    }
    .into()
}

/// `https://`, or plain `http://` to this machine's own loopback address (a test, or a
/// service on this computer). Elsewhere the ID token, a bearer credential, would cross the
/// network in the clear.
fn secure(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// `GET /v1/self`.
#[derive(Debug, Deserialize)]
struct SelfInfo {
    idp: String,
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// `POST /v1/self/passes` → 201 (the fields this desktop uses).
#[derive(Debug, Deserialize)]
struct Issued {
    pass: String,
    #[serde(default)]
    sealed_to_tpm: bool,
    #[serde(default)]
    clock_ahead_seconds: Option<i64>,
}

/// An RFC 9457 problem document, as the service sends them.
#[derive(Debug, Deserialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

/// The service's self-service API.
struct Api {
    base: String,
    agent: ureq::Agent,
    /// The provider, once the service named it.
    idp: Option<String>,
}

impl Api {
    fn new(server: &str, ca: Option<&Path>) -> Result<Self, DesktopError> {
        let base = server.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(DesktopError::Input(format!(
                "{server:?} is not an https:// URL"
            )));
        }
        if !secure(base) {
            return Err(OnlineError::InsecureUrl { url: base.into() }.into());
        }
        let agent = crate::sys::http_agent(ca, TIMEOUT).map_err(DesktopError::Input)?;
        Ok(Self {
            base: base.to_string(),
            agent,
            idp: None,
        })
    }

    fn self_info(&mut self) -> Result<SelfInfo, OnlineError> {
        let url = format!("{}/v1/self", self.base);
        let info = match self.call::<SelfInfo>(self.agent.get(&url), None) {
            // An hwpass service from before self-service, or not an hwpass service at all.
            Err(Failure::Status {
                status: 404,
                problem: None,
                ..
            }) => Err(OnlineError::NoSelfService {
                server: self.base.clone(),
                detail: "GET /v1/self answered 404".into(),
            }),
            other => other.map_err(|f| self.failed(f, &url)),
        }?;
        self.idp = Some(info.idp.clone());
        Ok(info)
    }

    fn whoami(&self, token: &str) -> Result<SignedIn, OnlineError> {
        let url = format!("{}/v1/self/whoami", self.base);
        let req = self.agent.get(&url).set("Authorization", &bearer(token));
        let who: SignedIn = self.call(req, None).map_err(|f| self.failed(f, &url))?;
        if who.identity.trim().is_empty() {
            return Err(OnlineError::Service {
                url,
                detail: "it named nobody as the person who signed in".into(),
            });
        }
        Ok(who)
    }

    fn sign(&self, token: &str, request: &str) -> Result<Issued, OnlineError> {
        let url = format!("{}/v1/self/passes", self.base);
        let req = self
            .agent
            .post(&url)
            .set("Authorization", &bearer(token))
            .set("Content-Type", "application/json");
        let body = serde_json::json!({ "request": request }).to_string();
        self.call(req, Some(&body))
            .map_err(|f| self.failed(f, &url))
    }

    /// Sends `req` (with `body`: a POST) and reads its JSON answer.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: ureq::Request,
        body: Option<&str>,
    ) -> Result<T, Failure> {
        let sent = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let (ok, status, resp) = match sent {
            Ok(resp) => (true, resp.status(), resp),
            Err(ureq::Error::Status(code, resp)) => (false, code, resp),
            Err(ureq::Error::Transport(t)) => return Err(Failure::Unreachable(t.to_string())),
        };
        let status_text = resp.status_text().to_string();
        let mut text = String::new();
        resp.into_reader()
            .take(MAX_ANSWER)
            .read_to_string(&mut text)
            .map_err(|e| Failure::Unreachable(format!("reading its answer: {e}")))?;
        if ok {
            return serde_json::from_str(&text).map_err(|e| {
                Failure::Unreachable(format!(
                    "its answer is not what an hwpass issuing service sends ({e})"
                ))
            });
        }
        Err(Failure::Status {
            status,
            status_text,
            problem: serde_json::from_str::<Problem>(&text).ok(),
        })
    }

    /// A failed call as the person reads it: a refusal by its problem type.
    fn failed(&self, f: Failure, url: &str) -> OnlineError {
        let (status, status_text, problem) = match f {
            Failure::Unreachable(detail) => {
                return OnlineError::Service {
                    url: url.into(),
                    detail,
                }
            }
            Failure::Status {
                status,
                status_text,
                problem: None,
            } => {
                return OnlineError::Service {
                    url: url.into(),
                    detail: format!("it answered {status} {status_text}"),
                }
            }
            Failure::Status {
                status,
                status_text,
                problem: Some(p),
            } => (status, status_text, p),
        };
        let slug = problem
            .kind
            .strip_prefix("urn:hwpass:problem:")
            .unwrap_or(&problem.kind)
            .to_string();
        let detail = problem
            .detail
            .or(problem.title)
            .unwrap_or_else(|| format!("{status} {status_text}"));
        let server = self.base.clone();
        match slug.as_str() {
            "no-self-service" => OnlineError::NoSelfService { server, detail },
            "unauthorized" => OnlineError::TokenRefused { server, detail },
            "no-group" => OnlineError::NoGroup { detail },
            "rate-limited" => OnlineError::RateLimited { detail },
            "idp-unavailable" => OnlineError::IdpUnavailable {
                idp: self.idp.clone().unwrap_or_default(),
                detail: format!("{server} says: {detail}"),
            },
            _ => OnlineError::Refused {
                server,
                status,
                problem: slug,
                detail,
            },
        }
    }
}

/// Why a call to the service got no answer of the kind asked for.
#[derive(Debug)]
enum Failure {
    /// No answer, or one that is not JSON.
    Unreachable(String),
    /// A refusal, with its problem document when it sent one.
    Status {
        status: u16,
        status_text: String,
        problem: Option<Problem>,
    },
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_machine() {
        for ok in [
            "https://passes.corp.example",
            "http://127.0.0.1:8080",
            "http://127.0.0.2/",
            "http://localhost:9/x",
            "http://[::1]:8443/v1",
        ] {
            assert!(secure(ok), "{ok}");
        }
        for bad in [
            "http://passes.corp.example",
            "http://127.evil.example",
            "http://127.0.0.1@evil.example",
            "http://10.0.0.1:8080",
            "ftp://127.0.0.1",
            "passes.corp.example",
        ] {
            assert!(!secure(bad), "{bad}");
        }
    }

    #[test]
    fn only_the_device_and_its_state_stop_an_interruption() {
        assert!(Stage::Checking.device_busy());
        assert!(!Stage::SigningIn.device_busy());
        assert!(Stage::Requesting.device_busy());
        assert!(!Stage::Sending.device_busy());
        assert!(Stage::Installing.device_busy());
    }
}
