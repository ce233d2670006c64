//! The issuing service as operators run it: liveness, readiness, Prometheus metrics, SIGHUP
//! reloads, and TLS files checked before "listening".

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::service::{admin_block, answer, cookie_in, csrf_in, sign_body, Server};

/// `GET /metrics` as text.
fn scrape(server: &Server) -> String {
    let (status, kind, body) = server.get("/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    body
}

/// The value of the sample `name` (with its labels, as written) in a scrape, if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Polls the metrics until `name` reaches `want` (a reload runs on its own task); fails after
/// 20 s. Waits on the event, not on a guessed duration.
pub fn wait_for(server: &Server, name: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(server);
        if sample(&text, name) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sighup(server: &Server) {
    let pid = server.pid().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
}

#[test]
fn healthz_readyz_and_metrics_count_passes_refusals_latencies_and_the_deny_list() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    assert_eq!(server.get("/healthz").0, 200);
    let (status, _, body) = server.get("/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let before = scrape(&server);
    assert_eq!(
        sample(&before, "hwpass_passes_issued_total{kind=\"software\"}"),
        None
    );
    assert_eq!(sample(&before, "hwpass_denylist_sequence"), Some(0.0));
    assert_eq!(
        sample(&before, "hwpass_audit_commit_seconds_count"),
        Some(0.0)
    );

    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);
    for _ in 0..2 {
        let (status, _, body) = server.post(
            "/v1/passes",
            Some(&server.bearer()),
            &sign_body(&request, None),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, _, _) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body("not a request", None),
    );
    assert_eq!(status, 422);
    let (status, _, _) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, Some("30d")),
    );
    assert_eq!(status, 403, "above the policy's maximum");
    let issued = issuer.audit_lines();
    let jti = issued[0]["jti"].as_str().unwrap();
    let (status, _, body) = server.post(
        "/v1/revocations",
        Some(&server.bearer()),
        &serde_json::json!({ "pass": jti }).to_string(),
    );
    assert_eq!(status, 201, "{body}");

    let text = scrape(&server);
    assert_eq!(
        sample(&text, "hwpass_passes_issued_total{kind=\"software\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "hwpass_passes_refused_total{reason=\"request-refused\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hwpass_passes_refused_total{reason=\"policy\"}"),
        Some(1.0),
        "{text}"
    );
    // Two passes signed in the HSM (checkpoints are signed by the audit writer's own session,
    // counted in the commit time).
    assert!(
        sample(&text, "hwpass_hsm_sign_seconds_count").unwrap() >= 2.0,
        "{text}"
    );
    assert!(
        text.contains("hwpass_hsm_sign_seconds_bucket{le=\"0.0005\"}"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hwpass_audit_commit_seconds_count"),
        Some(2.0),
        "one group commit per pass here (the revocation's record is appended by the register): {text}"
    );
    assert_eq!(
        sample(&text, "hwpass_denylist_sequence"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "hwpass_open_connections").unwrap() >= 1.0,
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text");
    for secret in ["alice@corp", jti, &server.token] {
        assert!(
            !text.contains(secret),
            "no subject, pass id or token in metrics"
        );
    }
}

#[test]
fn readyz_answers_503_with_the_reason_while_the_audit_log_cannot_be_written() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    let d = Desktop::enrolled(&trust);
    let (status, _, body) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&d.request("alice@corp", &[]), None),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.get("/readyz").0, 200);
    // The audit log's directory replaced by a file: nothing can be appended.
    let dir = issuer.audit.parent().unwrap().to_path_buf();
    let aside = issuer.dir.path().join("audit-aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let (status, kind, body) = server.get("/readyz");
    assert_eq!(
        (status, kind.as_str()),
        (503, "application/problem+json"),
        "{body}"
    );
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:hwpass:problem:not-ready");
    assert_eq!(problem["reason"], "audit");
    assert!(
        !body.contains(&dir.display().to_string()),
        "no file path for an anonymous client: {body}"
    );
    assert_eq!(server.get("/healthz").0, 200, "alive all the same");
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    assert_eq!(server.get("/readyz").0, 200, "ready again once repaired");

    // An audit log that does not verify (a record edited): signing stops, and so does
    // readiness, from the next append on.
    let text = std::fs::read_to_string(&issuer.audit).unwrap();
    std::fs::write(&issuer.audit, text.replacen("alice@corp", "mallo@corp", 1)).unwrap();
    let (status, _, _) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&d.request("bob@corp", &[]), None),
    );
    assert_eq!(status, 503);
    let (status, _, body) = server.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not verify"), "{body}");
    let (_, log) = server.stop();
    assert!(
        log.contains("not ready") || log.contains("audit log failed"),
        "{log}"
    );
}

#[test]
fn readyz_answers_503_when_the_hsm_session_does_not_answer() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(&issuer, "");
    assert_eq!(server.get("/readyz").0, 200);
    // SoftHSM's token taken away under the running service (its files gone).
    let tokens = issuer.hsm.conf.parent().unwrap().join("tokens");
    let aside = issuer.dir.path().join("tokens-aside");
    std::fs::rename(&tokens, &aside).unwrap();
    let (status, _, body) = server.get("/readyz");
    std::fs::rename(&aside, &tokens).unwrap();
    assert_eq!(status, 503, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["reason"], "hsm", "{body}");
    let (_, log) = server.stop();
    assert!(log.contains("not ready: the HSM did not answer"), "{log}");
}

/// Signs in on the web page with `token`; returns the session cookie.
fn web_login(server: &Server, token: &str) -> String {
    let agent = server.agent();
    let first = agent.get(&format!("{}/", server.url)).call().unwrap();
    let anon = cookie_in(&first, "hwpass_login");
    let csrf = csrf_in(&first.into_string().unwrap());
    let ok = agent
        .post(&format!("{}/login", server.url))
        .set("Cookie", &anon)
        .send_form(&[("csrf", &csrf), ("token", token)])
        .unwrap();
    assert_eq!(ok.status(), 303);
    cookie_in(&ok, "hwpass_session")
}

/// Whether the session cookie still shows the signed-in page.
fn signed_in(server: &Server, cookie: &str) -> bool {
    let (_, _, html) = answer(
        server
            .agent()
            .get(&format!("{}/", server.url))
            .set("Cookie", cookie)
            .call(),
    );
    html.contains("Recent issuances")
}

#[test]
fn sighup_reloads_config_admins_and_policy_keeps_sessions_and_refuses_a_bad_config() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    let alice = web_login(&server, &server.token);
    assert!(signed_in(&server, &alice));
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);
    // A second admin, and a longer software maximum, in the config on disk.
    let bob = issuer.run(&["admin-token", "--name", "bob"], None).ok();
    let bob_token = bob.line();
    let bob_lines = admin_block(&bob);
    let original = std::fs::read_to_string(&issuer.config).unwrap();
    let bearer_bob = format!("Bearer {bob_token}");
    let (status, _, _) = server.post("/v1/passes", Some(&bearer_bob), &sign_body(&request, None));
    assert_eq!(status, 401, "bob is not an admin yet");
    let (status, _, _) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, Some("5d")),
    );
    assert_eq!(status, 403, "5 days is above the software maximum of 3");
    let grown = original.replace(
        "software_max_lifetime = \"3d\"",
        "software_max_lifetime = \"6d\"",
    ) + "\n"
        + &bob_lines
        + "\n";
    std::fs::write(&issuer.config, &grown).unwrap();
    sighup(&server);
    wait_for(
        &server,
        "hwpass_config_reloads_total{result=\"applied\"}",
        1.0,
    );
    let (status, _, body) = server.post(
        "/v1/passes",
        Some(&bearer_bob),
        &sign_body(&request, Some("5d")),
    );
    assert_eq!(
        status, 201,
        "bob's token and the new policy are in force: {body}"
    );
    assert!(
        signed_in(&server, &alice),
        "alice's web session survives the reload"
    );

    // A config that does not load: refused, logged, the old one stays in force.
    std::fs::write(
        &issuer.config,
        grown.replacen("hsm_sessions = 2", "hsm_sesions = 2", 1),
    )
    .unwrap();
    sighup(&server);
    wait_for(
        &server,
        "hwpass_config_reloads_total{result=\"refused\"}",
        1.0,
    );
    let (status, _, body) = server.post(
        "/v1/passes",
        Some(&bearer_bob),
        &sign_body(&request, Some("5d")),
    );
    assert_eq!(
        status, 201,
        "still serving with the last good config: {body}"
    );
    assert!(signed_in(&server, &alice));

    // Alice's token removed: her token and her web session end; bob's go on.
    let alice_gone: String = grown
        .split("[[serve.admins]]")
        .enumerate()
        .filter(|(i, part)| *i == 0 || !part.contains("\"alice\""))
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                format!("[[serve.admins]]{part}")
            }
        })
        .collect();
    assert!(!alice_gone.contains("\"alice\"") && alice_gone.contains("\"bob\""));
    std::fs::write(&issuer.config, &alice_gone).unwrap();
    sighup(&server);
    wait_for(
        &server,
        "hwpass_config_reloads_total{result=\"applied\"}",
        2.0,
    );
    assert!(!signed_in(&server, &alice), "a removed admin is signed out");
    let (status, _, _) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, None),
    );
    assert_eq!(status, 401, "a removed admin's token is refused");
    let (status, _, _) = server.post("/v1/passes", Some(&bearer_bob), &sign_body(&request, None));
    assert_eq!(status, 201);

    let (code, log) = server.stop();
    assert_eq!(code, 0, "SIGHUP never stopped the service: {log}");
    assert_eq!(log.matches("config reloaded").count(), 2, "{log}");
    assert!(
        log.contains("config reload refused")
            && log.contains("unknown key `hsm_sesions` in [serve] (did you mean `hsm_sessions`?)"),
        "why it was refused is logged: {log}"
    );
}

#[test]
fn a_missing_tls_certificate_fails_before_listening_is_logged() {
    let issuer = Issuer::new();
    issuer.setup();
    let made = issuer.run(&["admin-token", "--name", "alice"], None).ok();
    let snippet = admin_block(&made);
    let mut config = std::fs::read_to_string(&issuer.config).unwrap();
    config.push_str(&format!(
        "\n[serve]\ntls_cert = \"missing-cert.pem\"\ntls_key = \"missing-key.pem\"\n{snippet}\n"
    ));
    std::fs::write(&issuer.config, config).unwrap();
    let mut cmd = issuer.cmd(NOW);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let out = run(cmd, None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "no address printed: {out:?}");
    assert!(!out.stderr.contains("listening"), "{out:?}");
    assert!(out.stderr.contains("missing-cert.pem"), "{out:?}");
}

#[test]
fn a_replaced_admin_token_ends_the_web_sessions_opened_with_it() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(&issuer, "");
    let stolen = web_login(&server, &server.token);
    assert!(signed_in(&server, &stolen));
    // Alice's leaked token replaced by a new one under the same name.
    let fresh = issuer.run(&["admin-token", "--name", "alice"], None).ok();
    let fresh_token = fresh.line();
    let fresh_block = admin_block(&fresh);
    let config = std::fs::read_to_string(&issuer.config).unwrap();
    let at = config.find("[[serve.admins]]").expect("an admin block");
    let end = config[at..]
        .find("token_sha256")
        .map(|i| at + i + config[at + i..].find('\n').unwrap_or(config.len() - at - i))
        .unwrap();
    assert!(
        config[at..end].contains("\"alice\""),
        "{}",
        &config[at..end]
    );
    std::fs::write(
        &issuer.config,
        format!("{}{fresh_block}{}", &config[..at], &config[end..]),
    )
    .unwrap();
    sighup(&server);
    wait_for(
        &server,
        "hwpass_config_reloads_total{result=\"applied\"}",
        1.0,
    );
    assert!(
        !signed_in(&server, &stolen),
        "the session opened with the replaced token ended"
    );
    let (status, _, _) = answer(
        server
            .agent()
            .get(&format!("{}/v1/issuances", server.url))
            .set("Authorization", &server.bearer())
            .call(),
    );
    assert_eq!(status, 401, "the replaced token is refused");
    let renewed = web_login(&server, &fresh_token);
    assert!(signed_in(&server, &renewed), "the new token signs alice in");
}

#[test]
fn a_sighup_while_the_service_starts_does_not_end_it() {
    use std::io::{BufRead as _, Write as _};
    let issuer = Issuer::new();
    issuer.setup();
    let made = issuer.run(&["admin-token", "--name", "alice"], None).ok();
    let snippet = admin_block(&made);
    // The PIN from a FIFO: `serve` waits there, mid start-up, until the test writes it.
    let fifo = issuer.dir.path().join("pin-fifo");
    let mut mk = Command::new("mkfifo");
    mk.args(["-m", "600"]).arg(&fifo);
    assert_eq!(run(mk, None).code, 0);
    let config = std::fs::read_to_string(&issuer.config).unwrap().replacen(
        "libsofthsm2.so\"",
        &format!("libsofthsm2.so&pin-source=file:{}\"", fifo.display()),
        1,
    ) + &format!("\n[serve]\nhsm_sessions = 2\n{snippet}\n");
    std::fs::write(&issuer.config, config).unwrap();
    let mut cmd = issuer.cmd(NOW);
    cmd.env_remove("HWPASS_PIN")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Opening the FIFO for writing returns once `serve` opened it to read the PIN.
    let mut pin = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let mut hup = Command::new("kill");
    hup.args(["-HUP", &child.id().to_string()]);
    assert_eq!(run(hup, None).code, 0);
    // Written after the signal: a process that the SIGHUP ended never reads it.
    let _ = writeln!(pin, "{PIN}");
    drop(pin);
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let alive = child.try_wait().unwrap().is_none();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        first.starts_with("listening on ") && alive,
        "serve survives a SIGHUP during start-up: {first:?}, {status:?}\n{err}"
    );
}
