//! `hwpass request --server`: online enrolment from the desktop through the OAuth 2.0 Device
//! Authorization Grant (RFC 8628). The real desktop binary against the real issuing service
//! and a real OpenID Provider (node-oidc-provider, tests/oidc/) of its own; headless Chromium
//! completes the provider's device page as the person would, with the code the desktop
//! printed.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::idp::{device_flow, Refresher};
use crate::service::*;

/// `hwpass-users` get up to 7 days; `engineering` TPM-bound passes only.
const GROUPS: &str = r#"
[[policy.group]]
name = "hwpass-users"
max_lifetime = "7d"
passes_per_day = 3

[[policy.group]]
name = "engineering"
software = false
"#;

/// How long a desktop may take to show its code, and to finish once the browser is done.
const DEADLINE: Duration = Duration::from_secs(60);

/// `hwpass request --server` running, its stderr read line by line as it comes.
struct Pending {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: Option<std::thread::JoinHandle<String>>,
    started: Instant,
}

/// What the desktop showed the person.
struct Shown {
    verification_uri: String,
    user_code: String,
}

impl Pending {
    /// Starts `hwpass request --server URL --device-name test-laptop ARGS…` on `d`.
    fn start(d: &Desktop, server: &str, args: &[&str]) -> Self {
        let mut cmd = d.cmd(NOW);
        cmd.args([
            "request",
            "--server",
            server,
            "--device-name",
            "test-laptop",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn hwpass request --server");
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let all = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let line = line.unwrap_or_default();
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        Self {
            child,
            lines,
            stderr,
            stdout: Some(stdout),
            started: Instant::now(),
        }
    }

    /// Waits (bounded) until the desktop has printed where to sign in and the code.
    fn shown(&self) -> Shown {
        let (mut uri, mut code) = (None, None);
        let deadline = Instant::now() + DEADLINE;
        while uri.is_none() || code.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("  open  ") {
                        uri = Some(u.trim().to_string());
                    }
                    if let Some(c) = line.strip_prefix("  code  ") {
                        code = Some(c.trim().to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no sign-in code within {DEADLINE:?}:\n{}",
                    self.stderr.lock().unwrap()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "hwpass ended before showing a code:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
        Shown {
            verification_uri: uri.unwrap(),
            user_code: code.unwrap(),
        }
    }

    /// Sends SIGINT, as Ctrl-C in the terminal does.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to end; its exit code and output, and how long it ran.
    fn finish(mut self) -> (Run, Duration) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "hwpass request --server did not end:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let ran = self.started.elapsed();
        let stdout = self.stdout.take().unwrap().join().unwrap();
        // The reader thread ends with the pipe; give it a moment to hand over the last lines.
        let end = Instant::now() + Duration::from_secs(5);
        while self.lines.recv_timeout(Duration::from_millis(100)).is_ok() && Instant::now() < end {}
        let stderr = self.stderr.lock().unwrap().clone();
        use std::os::unix::process::ExitStatusExt as _;
        let code = status.code().or(status.signal().map(|s| 128 + s));
        let run = Run {
            code: code.unwrap_or(-1),
            stdout,
            stderr,
        };
        (run, ran)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file in a state directory with its contents and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                let data = std::fs::read(&path).unwrap();
                files.insert(path, (data, meta.modified().unwrap()));
            }
        }
    }
    files
}

/// The person signs in at the provider in Chromium with the code the desktop showed.
fn sign_in(shown: &Shown, user: &IdpUser) -> serde_json::Value {
    let r = idp_browser(
        "device",
        &shown.verification_uri,
        user,
        &[("user_code.txt", &shown.user_code)],
    );
    assert_eq!(r["done"], true, "{r}");
    assert_eq!(
        r["confirm_code"], shown.user_code,
        "the provider's page shows the code the desktop printed"
    );
    r
}

/// Nothing of a JWT (an ID token, a pass) in `text`: they all start `eyJ`.
fn no_token_in(text: &str, what: &str) {
    assert!(!text.contains("eyJ"), "a token in {what}:\n{text}");
}

/// The usual scene: an issuer whose service signs `user` in at the test provider (the groups
/// of [`GROUPS`]), an enrolled software desktop trusting it, and that desktop's state before
/// anything happens. Destructure it in the order of the fields, so that its parts drop as
/// locals would: the desktop first, the issuer last.
struct Scene {
    issuer: Issuer,
    user: IdpUser,
    server: Server,
    idp: Idp,
    d: Desktop,
    before: BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)>,
}

impl Scene {
    fn new(user: IdpUser) -> Self {
        let issuer = Issuer::new();
        let trust = issuer.setup();
        let (server, idp) = Server::start_with_idp(&issuer, std::slice::from_ref(&user), GROUPS);
        let d = Desktop::enrolled(&trust);
        let before = snapshot(&d.state);
        Self {
            issuer,
            user,
            server,
            idp,
            d,
            before,
        }
    }
}

#[test]
fn signing_in_from_the_terminal_installs_the_pass_and_the_audit_names_the_person() {
    let Scene {
        issuer,
        user: olga,
        server,
        idp,
        d,
        before: _,
    } = Scene::new(IdpUser::new("olga", &["staff", "hwpass-users"]));

    let pending = Pending::start(&d, &server.url, &["--valid-for", "2d", "--json"]);
    let shown = pending.shown();
    assert_eq!(shown.verification_uri, format!("{}/device", idp.issuer()));
    sign_in(&shown, &olga);
    let (out, _) = pending.finish();
    assert_eq!(out.code, 0, "{out:?}");

    // What the person saw: where, the code, a QR code, the countdown, who signed in.
    let err = &out.stderr;
    assert!(err.contains("sign in with your company account"), "{err}");
    assert!(err.contains('▀') || err.contains('▄'), "a QR code: {err}");
    assert!(
        err.contains("hwpass: waiting for sign-in; the code expires in 5m 00s"),
        "the countdown: {err}"
    );
    assert!(
        err.contains("signed in as olga@corp.example (group hwpass-users)"),
        "{err}"
    );
    no_token_in(err, "stderr");
    no_token_in(&out.stdout, "stdout");

    // --json: one machine-readable line.
    let v = out.json();
    assert_eq!(v["status"], "valid", "{v}");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["subject"], "olga@corp.example");
    assert_eq!(v["signed_in_as"], "olga@corp.example");
    assert_eq!(v["idp"], idp.issuer());
    assert_eq!(v["group"], "hwpass-users");
    assert_eq!(v["server"], server.url.as_str());
    assert_eq!(v["sealed_to_tpm"], false);
    assert_eq!(v["binding"], "software");
    assert_eq!(v["remaining_seconds"], 2 * 86_400);

    // The pass is installed here and checks.
    let (code, verdict) = d.check(NOW);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(verdict["subject"], "olga@corp.example");
    // The audit names the person, the provider and the group that allowed it.
    let records = issuer.audit_lines();
    assert_eq!(records.len(), 1, "{records:?}");
    let rec = &records[0];
    assert_eq!(rec["sub"], "olga@corp.example");
    assert_eq!(rec["by"], "olga@corp.example");
    assert_eq!(rec["idp"], idp.issuer());
    assert_eq!(rec["group"], "hwpass-users");
    assert_eq!(rec["dev"], "test-laptop");
    assert_eq!(rec["jti"], verdict["jti"]);
    assert_eq!(
        rec["exp"].as_i64().unwrap() - rec["nbf"].as_i64().unwrap(),
        2 * 86_400
    );

    // The server is remembered: a bare `hwpass refresh` goes there.
    let status = d.run(&["status", "--json"], None, NOW).ok().json();
    assert_eq!(status["server"], server.url.as_str(), "{status}");
    let refreshed = d.run(&["refresh", "--json"], None, NOW).ok().json();
    assert!(refreshed["seq"].as_u64().is_some(), "{refreshed}");

    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
    no_token_in(&log, "the service's log");
}

#[test]
fn a_tpm_desktop_gets_its_pass_sealed_to_its_tpm_through_sign_in() {
    let ca = LocalCa::new();
    let tpm = Swtpm::provisioned(&ca);
    let issuer = Issuer::with_attestation(&ca.roots(), None, true);
    let trust = issuer.setup();
    let erik = IdpUser::new("erik", &["engineering"]);
    let (server, idp) = Server::start_with_idp(&issuer, std::slice::from_ref(&erik), GROUPS);
    let d = Desktop::with_tpm(&trust, &tpm);

    // --subject naming the person who then signs in is fine; --lifetime is --valid-for.
    let pending = Pending::start(
        &d,
        &server.url,
        &["--subject", "erik@corp.example", "--lifetime", "3d"],
    );
    sign_in(&pending.shown(), &erik);
    let (out, _) = pending.finish();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("installed: pass for erik@corp.example is valid until")
            && out.stdout.contains("(3d left)"),
        "what `hwpass install` prints: {out:?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "`hwpass refresh` now fetches revocations and new issuer keys from {}",
            server.url
        )),
        "{}",
        out.stderr
    );

    assert!(
        out.stderr
            .contains("hwpass: the pass came sealed to this computer's TPM, which opened it"),
        "{}",
        out.stderr
    );
    let (code, v) = d.check(NOW);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["binding"], "tpm");
    assert_eq!(v["attestation"], "ek-cert");
    let rec = &issuer.audit_lines()[0];
    assert_eq!(rec["by"], "erik@corp.example");
    assert_eq!(rec["group"], "engineering");
    assert_eq!(rec["idp"], idp.issuer());
    assert_eq!(rec["att"], "ek-cert");
    assert!(tpm.transient_handles().is_empty(), "every handle flushed");
}

#[test]
fn turning_the_sign_in_down_at_the_provider_installs_nothing() {
    let Scene {
        issuer,
        user: olga,
        server,
        idp: _idp,
        d,
        before,
    } = Scene::new(IdpUser::new("olga", &["hwpass-users"]));

    let pending = Pending::start(&d, &server.url, &[]);
    let shown = pending.shown();
    let r = idp_browser(
        "device-abort",
        &shown.verification_uri,
        &olga,
        &[("user_code.txt", &shown.user_code)],
    );
    assert_eq!(r["done"], false, "{r}");
    assert_eq!(r["error"], "The sign-in request was interrupted.", "{r}");
    let (out, _) = pending.finish();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("hwpass: error: sign-in was turned down at the provider")
            && out.stderr.contains("End-User aborted interaction"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: run the command again and approve the sign-in"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(&d.state), before, "nothing written");
    assert_eq!(d.check(NOW).0, 3, "no pass installed");
    assert!(issuer.audit_lines().is_empty(), "nothing signed");
}

#[test]
fn a_code_that_expires_before_anyone_signs_in_installs_nothing() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let olga = IdpUser::new("olga", &["hwpass-users"]);
    // The provider's device codes live 3 s (its default is 5 min).
    let (server, _idp) = Server::start_with_idp_options(
        &issuer,
        std::slice::from_ref(&olga),
        GROUPS,
        IdpOptions {
            ttl: vec![("DeviceCode", 3)],
            ..IdpOptions::default()
        },
        "",
    );
    let d = Desktop::enrolled(&trust);
    let before = snapshot(&d.state);

    let pending = Pending::start(&d, &server.url, &["--json"]);
    pending.shown();
    let (out, ran) = pending.finish();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(ran < Duration::from_secs(30), "gave up in time: {ran:?}");
    assert!(
        out.stderr
            .contains("hwpass: waiting for sign-in; the code expires in 3s"),
        "{}",
        out.stderr
    );
    let v = out.json();
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["failure"], "expired", "{v}");
    assert_eq!(
        v["message"],
        "the sign-in code expired (3s after it was shown) before sign-in was completed"
    );
    assert_eq!(
        v["hint"],
        "run the command again and finish signing in before the countdown ends"
    );
    assert_eq!(snapshot(&d.state), before, "nothing written");
    assert!(issuer.audit_lines().is_empty());
}

#[test]
fn a_person_in_no_allowed_group_is_refused_with_the_groups_named() {
    let Scene {
        issuer,
        user: nina,
        server,
        idp: _idp,
        d,
        before,
    } = Scene::new(IdpUser::new("nina", &["staff"]));

    let pending = Pending::start(&d, &server.url, &[]);
    sign_in(&pending.shown(), &nina);
    let (out, _) = pending.finish();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "you are in none of the groups that may get passes here; ask to be added to one of: 'hwpass-users', 'engineering'\nhint: ask your IT department"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hwpass: error: "), "{}", out.stderr);
    assert!(!out.stderr.contains("signed in as"), "{}", out.stderr);
    assert_eq!(snapshot(&d.state), before, "nothing written");
    assert!(issuer.audit_lines().is_empty(), "nothing signed");
}

#[test]
fn a_subject_naming_someone_else_is_refused_before_anything_is_signed() {
    let Scene {
        issuer,
        user: olga,
        server,
        idp: _idp,
        d,
        before,
    } = Scene::new(IdpUser::new("olga", &["hwpass-users"]));

    let pending = Pending::start(&d, &server.url, &["--subject", "bob@corp.example"]);
    sign_in(&pending.shown(), &olga);
    let (out, _) = pending.finish();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "hwpass: error: you signed in as 'olga@corp.example', but --subject names 'bob@corp.example': a pass is only ever for the person who signed in"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: leave out --subject"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(&d.state), before, "nothing written");
    assert!(issuer.audit_lines().is_empty(), "nothing signed");
}

#[test]
fn ctrl_c_while_waiting_for_sign_in_exits_130_and_changes_nothing() {
    let Scene {
        issuer,
        user: _olga,
        server,
        idp: _idp,
        d,
        before,
    } = Scene::new(IdpUser::new("olga", &["hwpass-users"]));

    for json in [false, true] {
        let args: &[&str] = if json { &["--json"] } else { &[] };
        let pending = Pending::start(&d, &server.url, args);
        pending.shown();
        pending.interrupt();
        let (out, ran) = pending.finish();
        assert_eq!(out.code, 130, "{out:?}");
        assert!(ran < Duration::from_secs(30), "{ran:?}");
        assert!(
            out.stderr
                .contains("hwpass: cancelled; nothing was changed"),
            "{}",
            out.stderr
        );
        if json {
            let v = out.json();
            assert_eq!(v["status"], "cancelled", "{v}");
            assert_eq!(v["exit_code"], 130);
        } else {
            assert_eq!(out.stdout, "");
        }
        assert_eq!(snapshot(&d.state), before, "nothing written");
    }
    assert!(issuer.audit_lines().is_empty());
}

#[test]
fn refused_before_sign_in_plain_http_on_the_network_and_a_service_without_sign_in() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let before = snapshot(&d.state);

    // The ID token must not cross the network in the clear.
    let r = d.run(
        &["request", "--server", "http://passes.corp.example"],
        None,
        NOW,
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("http://passes.corp.example is plain http:// on the network"),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains("hint: use the service's https:// address"),
        "{r:?}"
    );

    // An issuing service without company sign-in for desktops.
    let server = Server::start(&issuer, "");
    let r = d.run(&["request", "--server", &server.url], None, NOW);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("offers no sign-in for desktops"), "{r:?}");
    assert!(
        r.stderr.contains("hwpass request --subject you@corp"),
        "the offline path is named: {r:?}"
    );

    // Not enrolled: said before anyone signs in.
    let fresh = Desktop::new();
    let r = fresh.run(&["request", "--server", &server.url], None, NOW);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(!r.stderr.contains("sign in with"), "{r:?}");
    assert_eq!(snapshot(&d.state), before, "nothing written");
}

#[test]
fn forged_and_misdirected_id_tokens_get_no_pass_at_the_self_service_api() {
    let Scene {
        issuer,
        user: frank,
        server,
        idp,
        d,
        before: _,
    } = Scene::new(IdpUser::new("frank", &["hwpass-users"]));
    let request = d.request(&frank.email, &[]);
    let body = sign_body(&request, None);

    // The desktop client's tokens, as `hwpass request --server` gets them; each hostile one
    // comes from a refresh (the same issuing code at the provider).
    let (tokens, _) = device_flow(&idp, &frank, "openid email profile groups offline_access");
    let mut refresher = Refresher::new(&idp, &tokens);
    let sign = |auth: Option<&str>| server.post("/v1/self/passes", auth, &body);

    for mode in Hostile::ALL {
        let why = mode.refusal();
        idp.set_hostile(Some(mode));
        let token = refresher.next_id_token();
        let (status, _, answer) = sign(Some(&format!("Bearer {token}")));
        assert_eq!(status, 401, "{mode:?}: {answer}");
        assert!(answer.contains(why), "{mode:?}: {answer}");
        assert!(
            !answer.contains(&token),
            "{mode:?}: the token is not echoed"
        );
    }
    idp.set_hostile(None);
    // No token, a token of another kind (the admin bearer token is not an ID token), garbage.
    for auth in [None, Some(server.bearer()), Some("Bearer not.a.jwt".into())] {
        let (status, _, answer) = sign(auth.as_deref());
        assert_eq!(status, 401, "{auth:?}: {answer}");
    }
    assert!(issuer.audit_lines().is_empty(), "nothing signed");

    // A genuine token of the desktop client gets Frank his own pass (the check is live).
    let token = refresher.next_id_token();
    let (status, _, answer) = sign(Some(&format!("Bearer {token}")));
    assert_eq!(status, 201, "{answer}");
    let records = issuer.audit_lines();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["by"], "frank@corp.example");
    assert_eq!(records[0]["idp"], idp.issuer());
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(&token), "the ID token is not logged");
}
