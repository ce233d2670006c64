//! The issuing service under attack (issue 13), over real HTTP on loopback with a SoftHSM
//! token per test: slow and idle clients cut by the configured timeouts while honest clients
//! are served, caps per peer, sessions only for people who signed in, strict bodies, no crash
//! from a form's lifetime, no internals in errors, the PIN out of the environment, no core
//! dumps, permissions, and the small ones (auth scheme, HSTS, `__Host-` cookies).
//!
//! Every wait here is bounded by the service's configured timeouts (short in these configs)
//! and by read timeouts on the test's sockets, never by sleeping until something happened.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::service::{admin_block, answer, csrf_in, proxy_secret, sign_body, Server};

fn addr(server: &Server) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("a loopback address")
}

/// Reads until the peer closes (or `limit` passes); returns what arrived and when it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (String::from_utf8_lossy(&all).into_owned(), None);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&all).into_owned(),
                    Some(start.elapsed()),
                )
            }
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (String::from_utf8_lossy(&all).into_owned(), None)
            }
            // A reset is a close too.
            Err(_) => {
                return (
                    String::from_utf8_lossy(&all).into_owned(),
                    Some(start.elapsed()),
                )
            }
        }
    }
}

/// The `name=value` of the first cookie a response sets.
fn first_cookie(resp: &ureq::Response) -> String {
    let all = resp.all("set-cookie");
    let first = all.first().expect("a cookie");
    first.split(';').next().unwrap().to_string()
}

/// Signs in through the page; returns the session cookie (`name=value`).
fn web_login(server: &Server) -> String {
    let agent = server.agent();
    let first = agent.get(&format!("{}/", server.url)).call().unwrap();
    let visitor = first_cookie(&first);
    let csrf = csrf_in(&first.into_string().unwrap());
    let ok = agent
        .post(&format!("{}/login", server.url))
        .set("Cookie", &visitor)
        .send_form(&[("csrf", &csrf), ("token", &server.token)])
        .unwrap();
    assert_eq!(ok.status(), 303);
    ok.all("set-cookie")
        .iter()
        .map(|c| c.split(';').next().unwrap())
        .find(|kv| kv.contains("hwpass_session=") && !kv.ends_with('='))
        .expect("a session cookie")
        .to_string()
}

fn signed_in(server: &Server, cookie: &str) -> bool {
    let home = server
        .agent()
        .get(&format!("{}/", server.url))
        .set("Cookie", cookie)
        .call()
        .unwrap();
    home.into_string().unwrap().contains("Recent issuances")
}

#[test]
fn a_bounded_slowloris_is_cut_while_honest_clients_are_served() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let request = Desktop::enrolled(&trust).request("olga@corp", &[]);
    // Short timeouts, and an open-file limit of 256: fewer than the attack's sockets.
    let made = issuer.run(&["admin-token", "--name", "alice"], None).ok();
    let token = made.line();
    let snippet = admin_block(&made);
    let mut config = std::fs::read_to_string(&issuer.config).unwrap();
    config.push_str(&format!(
        "\n[serve]\nhsm_sessions = 2\nheader_read_timeout = \"1s\"\nbody_timeout = \"1s\"\nidle_timeout = \"2s\"\n{snippet}\n"
    ));
    std::fs::write(&issuer.config, config).unwrap();
    require("prlimit", "util-linux");
    let mut cmd = Command::new("prlimit");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HWPASS_FAKE_NOW", NOW.to_string())
        .env("SOFTHSM2_CONF", &issuer.hsm.conf)
        .env("HWPASS_PIN", PIN)
        .args(["--nofile=256:256", env!("CARGO_BIN_EXE_hwpass-issuer")])
        .arg("--config")
        .arg(&issuer.config)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::spawn_cmd(cmd, token);
    let target = addr(&server);

    // The attack: 300 sockets from 127.0.0.2 that send half a request head and then one more
    // header line every 200 ms; a socket that is cut reconnects 100 ms later. Bounded: 4 s,
    // 12 000 sockets in all.
    const SOCKETS: usize = 300;
    const ATTACK: Duration = Duration::from_secs(4);
    let attack = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let end = tokio::time::Instant::now() + ATTACK;
            let tasks: Vec<_> = (0..SOCKETS)
                .map(|_| {
                    let opened = opened.clone();
                    tokio::spawn(async move {
                        // Connections cut, and the longest any was held (cut or still open
                        // when the attack ends).
                        let mut longest = Duration::ZERO;
                        let mut cut = 0usize;
                        while tokio::time::Instant::now() < end
                            && opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 12_000
                        {
                            let socket = tokio::net::TcpSocket::new_v4().unwrap();
                            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                            let Ok(Ok(stream)) =
                                tokio::time::timeout(Duration::from_secs(1), socket.connect(target))
                                    .await
                            else {
                                continue;
                            };
                            let held = Instant::now();
                            let _ = stream.try_write(b"POST /v1/passes HTTP/1.1\r\nHost: x\r\n");
                            let closed = loop {
                                let mut buf = [0u8; 512];
                                tokio::select! {
                                    _ = tokio::time::sleep_until(end) => break false,
                                    r = stream.readable() => {
                                        if r.is_err() {
                                            break true;
                                        }
                                        match stream.try_read(&mut buf) {
                                            Ok(_) => break true,
                                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                            Err(_) => break true,
                                        }
                                    }
                                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                                        if stream.try_write(b"X-Slow: 1\r\n").is_err() {
                                            break true;
                                        }
                                    }
                                }
                            };
                            longest = longest.max(held.elapsed());
                            if !closed {
                                break;
                            }
                            cut += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        (cut, longest)
                    })
                })
                .collect();
            let mut cut = 0;
            let mut longest = Duration::ZERO;
            for t in tasks {
                let (c, l) = t.await.unwrap();
                cut += c;
                longest = longest.max(l);
            }
            let opened = opened.load(std::sync::atomic::Ordering::SeqCst);
            (cut, longest, opened)
        })
    });

    // Honest clients from 127.0.0.1 while the attack runs: every request answered in time.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .redirects(0)
        .build();
    let start = Instant::now();
    let (mut health, mut signed) = (0, 0);
    while start.elapsed() < ATTACK {
        let (status, _, body) = answer(agent.get(&format!("{}/healthz", server.url)).call());
        assert_eq!(status, 200, "{body}");
        health += 1;
        if health % 5 == 0 {
            let (status, _, body) = answer(
                agent
                    .post(&format!("{}/v1/passes", server.url))
                    .set("Content-Type", "application/json")
                    .set("Authorization", &server.bearer())
                    .send_string(&sign_body(&request, None)),
            );
            assert_eq!(status, 201, "{body}");
            signed += 1;
        }
    }
    let (cut, longest, opened) = attack.join().unwrap();
    eprintln!(
        "slowloris: {opened} sockets opened, {cut} cut, longest held {longest:?}; honest: {health} health checks, {signed} passes"
    );
    assert!(
        health >= 5 && signed >= 1,
        "{health} health checks, {signed} passes"
    );
    assert!(
        cut >= SOCKETS,
        "slow sockets are cut (by the caps at once, by the 1 s header timeout at the latest): {cut} cut"
    );
    assert!(
        longest < Duration::from_secs(3),
        "a slow socket was held (or is still open) after {longest:?} with a 1 s header timeout"
    );
    assert_eq!(issuer.audit_lines().len(), signed);
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("max_connections lowered"), "{log}");
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_a_peer_has_few_requests_in_flight() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(
        &issuer,
        // The body timeout is the window in which the third request must be seen refused: wide
        // enough that a loaded machine's scheduling cannot close it first.
        "header_read_timeout = \"1s\"\nbody_timeout = \"5s\"\nidle_timeout = \"8s\"\nmax_requests_per_ip = 2\n",
    );
    let target = addr(&server);
    let limit = Duration::from_secs(6);

    // Connected, silent: closed by the header-read timeout.
    let mut idle = TcpStream::connect(target).unwrap();
    // Half a head.
    let mut half = TcpStream::connect(target).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A whole exchange, then nothing: the kept-alive connection is closed too.
    let mut kept = TcpStream::connect(target).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    for (name, s) in [
        ("idle", &mut idle),
        ("half a head", &mut half),
        ("kept alive", &mut kept),
    ] {
        let (got, closed) = read_until_closed(s, limit);
        let closed =
            closed.unwrap_or_else(|| panic!("{name}: still open after {limit:?}: {got:?}"));
        assert!(
            closed < Duration::from_secs(4),
            "{name}: closed after {closed:?}"
        );
        if name == "kept alive" {
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        }
    }

    // Two requests whose bodies never come are in flight; a third from the same peer is
    // refused with 429 until they are cut with 408 by the body timeout.
    let head = "POST /v1/passes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(target).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    let mut busy = None;
    for _ in 0..10_000 {
        let (status, _, body) = answer(
            server
                .agent()
                .get(&format!("{}/healthz", server.url))
                .call(),
        );
        if status == 429 {
            busy = Some(body);
            break;
        }
        assert_eq!(status, 200);
    }
    let busy = busy.expect("a third request in flight from one peer is refused");
    let problem: serde_json::Value = serde_json::from_str(&busy).unwrap();
    assert_eq!(problem["type"], "urn:hwpass:problem:busy");
    for s in &mut slow {
        let (got, closed) = read_until_closed(s, Duration::from_secs(9));
        assert!(
            got.starts_with("HTTP/1.1 408"),
            "a slow body is cut: {got:?}"
        );
        assert!(got.contains("urn:hwpass:problem:slow-body"), "{got}");
        assert!(closed.is_some(), "and its connection closed");
    }
    let (status, _, _) = server.get("/healthz");
    assert_eq!(status, 200, "the places are given back");
}

#[test]
fn anonymous_visitors_cost_no_session_and_cannot_sign_anybody_out() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(&issuer, "");
    let admin = web_login(&server);

    // A pending login: the page is loaded, the form not yet sent.
    let pending = server
        .agent()
        .get(&format!("{}/", server.url))
        .call()
        .unwrap();
    let nonce = first_cookie(&pending);
    let csrf = csrf_in(&pending.into_string().unwrap());

    // 12 000 anonymous visits (more than the old session table's 10 000), four at a time.
    let url = format!("{}/", server.url);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let agent = ureq::AgentBuilder::new().redirects(0).build();
                for _ in 0..3_000 {
                    let r = agent.get(&url).call().unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.into_string();
                }
            });
        }
    });

    assert!(signed_in(&server, &admin), "the admin is still signed in");
    let done = server
        .agent()
        .post(&format!("{}/login", server.url))
        .set("Cookie", &nonce)
        .send_form(&[("csrf", &csrf), ("token", &server.token)]);
    let (status, _, body) = answer(done);
    assert_eq!(status, 303, "the pending login still works: {body}");
}

#[test]
fn each_admin_holds_a_bounded_number_of_sessions() {
    let issuer = Issuer::new();
    issuer.setup();
    // The default: 8 per admin.
    let server = Server::start(&issuer, "");
    let sessions: Vec<String> = (0..8).map(|_| web_login(&server)).collect();
    assert!(sessions.iter().all(|s| signed_in(&server, s)));
    let ninth = web_login(&server);
    assert!(
        !signed_in(&server, &sessions[0]),
        "the oldest session ended"
    );
    assert!(sessions[1..].iter().all(|s| signed_in(&server, s)));
    assert!(signed_in(&server, &ninth));
}

#[test]
fn a_web_form_lifetime_outside_policy_is_refused_and_never_crashes_the_service() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    let request = Desktop::enrolled(&trust).request("paul@corp", &[]);
    let cookie = web_login(&server);
    let home = server
        .agent()
        .get(&format!("{}/", server.url))
        .set("Cookie", &cookie)
        .call()
        .unwrap();
    let csrf = csrf_in(&home.into_string().unwrap());
    let sign = |lifetime: &str| {
        answer(
            server
                .agent()
                .post(&format!("{}/sign", server.url))
                .set("Cookie", &cookie)
                .send_form(&[
                    ("csrf", &csrf),
                    ("request", &request),
                    ("lifetime", lifetime),
                ]),
        )
    };
    for lifetime in [
        "-3600",
        "0",
        "-9223372036854775808",
        "9223372036854775807",
        "1209601",
        "soon",
        "",
    ] {
        let (status, _, html) = sign(lifetime);
        assert_eq!(status, 422, "{lifetime:?}: {html}");
        assert!(
            html.contains("from 1 to 1209600 (14d)"),
            "{lifetime:?}: {html}"
        );
    }
    // Within the policy's largest maximum, above the software binding's own.
    let (status, _, html) = sign(&(4 * 86_400).to_string());
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("maximum of 3d for software passes"), "{html}");
    assert!(issuer.audit_lines().is_empty(), "nothing was signed");
    let (status, _, _) = server.get("/healthz");
    assert_eq!(status, 200, "the service lives");
    let (status, _, html) = sign("1");
    assert_eq!(status, 200, "{html}");
    let audit = issuer.audit_lines();
    assert_eq!(
        audit[0]["exp"].as_i64().unwrap() - audit[0]["nbf"].as_i64().unwrap(),
        1
    );
}

#[test]
fn api_bodies_are_strict_json_and_the_auth_scheme_is_case_insensitive() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    let request = Desktop::enrolled(&trust).request("quinn@corp", &[]);
    for body in [
        format!("{{\"request\":{request:?},\"valid_for\":null}}"),
        format!("{{\"request\":{request:?},\"request\":{request:?}}}"),
    ] {
        let (status, kind, text) = server.post("/v1/passes", Some(&server.bearer()), &body);
        assert_eq!(
            (status, kind.as_str()),
            (400, "application/problem+json"),
            "{text}"
        );
        assert!(
            text.contains("null") || text.contains("duplicate"),
            "{text}"
        );
    }
    let (status, _, text) = server.post(
        "/v1/revocations",
        Some(&server.bearer()),
        "{\"pass\":\"x\",\"reason\":null}",
    );
    assert_eq!(status, 400, "{text}");
    assert!(issuer.audit_lines().is_empty());
    // RFC 7235 §2.1: the scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {}", server.token);
        let (status, _, text) =
            server.post("/v1/passes", Some(&auth), &sign_body(&request, Some("1d")));
        assert_eq!(status, 201, "{scheme}: {text}");
    }
}

#[test]
fn errors_to_anonymous_clients_name_no_paths_or_parser_internals() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(&issuer, "");
    let register = issuer.dir.path().join("audit/revocations.json");
    std::fs::create_dir_all(register.parent().unwrap()).unwrap();
    std::fs::write(&register, "{\"seq\": 3, \"passes\": [").unwrap();
    let (status, kind, body) = server.get("/v1/denylist");
    assert_eq!(
        (status, kind.as_str()),
        (500, "application/problem+json"),
        "{body}"
    );
    let dir = issuer.dir.path().display().to_string();
    for leak in [dir.as_str(), "revocations.json", "line", "column", "EOF"] {
        assert!(!body.contains(leak), "{leak:?} in {body}");
    }
    let (_, log) = server.stop();
    assert!(
        log.contains("revocations.json"),
        "the log says what failed: {log}"
    );
}

#[test]
fn behind_a_tls_proxy_cookies_are_secure_host_cookies_and_hsts_is_sent() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(&issuer, "behind_tls_proxy = true\n");
    let first = server
        .agent()
        .get(&format!("{}/", server.url))
        .call()
        .unwrap();
    assert_eq!(
        first.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let set = first.header("set-cookie").unwrap().to_string();
    assert!(
        set.starts_with("__Host-hwpass_login=")
            && set.contains("; Secure")
            && set.contains("Path=/")
            && !set.contains("Domain"),
        "{set}"
    );
    let session = web_login(&server);
    assert!(session.starts_with("__Host-hwpass_session="), "{session}");
    assert!(signed_in(&server, &session));
    // The plain name is not read when cookies are secure.
    let plain = session.replace("__Host-", "");
    assert!(!signed_in(&server, &plain));
}

#[test]
fn the_pin_leaves_the_environment_core_dumps_are_off_and_a_warning_names_the_variable() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(&issuer, "");
    let pid = server.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let (_, log) = server.stop();
    assert!(log.contains("core dumps disabled"), "{log}");
    assert!(
        log.contains("the HSM PIN came from the environment") && log.contains("HWPASS_PIN"),
        "{log}"
    );
    assert!(!log.contains(PIN), "{log}");

    // From a file (the production way): no warning.
    let pin = issuer.dir.path().join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&issuer.config).unwrap().replace(
        "?module-path=",
        &format!("?pin-source=file:{}&module-path=", pin.display()),
    );
    std::fs::write(&issuer.config, text).unwrap();
    let mut cmd = issuer.cmd(NOW);
    cmd.env_remove("HWPASS_PIN")
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::spawn_cmd(cmd, String::new());
    let (_, log) = server.stop();
    assert!(!log.contains("came from the environment"), "{log}");
}

#[test]
fn files_others_may_change_or_read_are_refused_with_the_fix() {
    let issuer = Issuer::new();
    issuer.setup();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let jwks = |issuer: &Issuer| issuer.run(&["jwks"], None);

    mode(&issuer.config, 0o664);
    let out = jwks(&issuer);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("is writable by group or others (mode 0664)")
            && out.stderr.contains("chmod go-w"),
        "{out:?}"
    );
    mode(&issuer.config, 0o644);
    mode(issuer.dir.path(), 0o777);
    let out = jwks(&issuer);
    assert_eq!(
        out.code, 1,
        "a world-writable directory holding the config: {out:?}"
    );
    assert!(out.stderr.contains("(mode 0777)"), "{out:?}");
    mode(issuer.dir.path(), 0o1777);
    jwks(&issuer).ok();
    mode(issuer.dir.path(), 0o700);

    // A PIN file others may read.
    let pin = issuer.dir.path().join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    mode(&pin, 0o644);
    let text = std::fs::read_to_string(&issuer.config).unwrap().replace(
        "?module-path=",
        &format!("?pin-source=file:{}&module-path=", pin.display()),
    );
    std::fs::write(&issuer.config, &text).unwrap();
    let mut cmd = issuer.cmd(NOW);
    cmd.env_remove("HWPASS_PIN").arg("key-info");
    let out = run(cmd, None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("PIN file") && out.stderr.contains("chmod 600"),
        "{out:?}"
    );
    mode(&pin, 0o600);
    let mut cmd = issuer.cmd(NOW);
    cmd.env_remove("HWPASS_PIN").arg("key-info");
    run(cmd, None).ok();

    // A proxy secret others may read.
    proxy_secret(&issuer);
    mode(&issuer.dir.path().join("proxy-secret"), 0o640);
    let mut config = text;
    config.push_str(
        "\n[serve]\n[serve.proxy]\nheader = \"X-Remote-User\"\nsecret_file = \"proxy-secret\"\n",
    );
    std::fs::write(&issuer.config, config).unwrap();
    let out = jwks(&issuer);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("is readable by group or others (mode 0640)")
            && out.stderr.contains("chmod 600"),
        "{out:?}"
    );
}

#[test]
fn the_review_page_says_what_attestation_proved() {
    let ca = LocalCa::new();
    let tpm = Swtpm::provisioned(&ca);
    let issuer = Issuer::with_attestation(&ca.roots(), None, true);
    let trust = issuer.setup();
    let desk = Desktop::with_tpm(&trust, &tpm);
    let request = desk.request("rita@corp", &[]);
    let server = Server::start(&issuer, "");
    let cookie = web_login(&server);
    let home = server
        .agent()
        .get(&format!("{}/", server.url))
        .set("Cookie", &cookie)
        .call()
        .unwrap();
    let csrf = csrf_in(&home.into_string().unwrap());
    let (status, _, html) = answer(
        server
            .agent()
            .post(&format!("{}/review", server.url))
            .set("Cookie", &cookie)
            .send_form(&[("csrf", &csrf), ("request", &request)]),
    );
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("ek-cert, activation pending"), "{html}");
    assert!(
        html.contains("proven only when the TPM activates the credential"),
        "{html}"
    );
    // The TPM as its EK certificate names it (issue 19).
    assert!(
        html.contains(r#"<td id="f-tpm">"#) && html.contains("firmware id:"),
        "{html}"
    );
    // The pass itself keeps the wire value.
    let (status, _, body) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, None),
    );
    assert_eq!(status, 201, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["att"], "ek-cert");
}

#[test]
fn a_body_over_the_limit_is_refused_with_413_before_it_is_read() {
    let issuer = Issuer::new();
    issuer.setup();
    let server = Server::start(&issuer, "");
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.write_all(
        b"POST /v1/passes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 70000\r\n\r\n{",
    )
    .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("urn:hwpass:problem:too-large"), "{got}");
    assert!(closed.is_some(), "the connection is closed: {got}");
}
