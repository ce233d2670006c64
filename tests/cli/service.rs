//! The issuing service over real HTTP on loopback, with a real SoftHSM token: auth, CSRF,
//! the JSON API, revocation reaching a desktop, concurrency with every pass audited, TLS,
//! graceful shutdown, and the web page in headless Chromium.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use crate::common::*;

/// `hwpass-issuer serve` on a free loopback port (port 0; the server prints the address).
pub struct Server {
    child: Child,
    pub url: String,
    pub token: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Makes an admin token with `admin-token`, appends its config lines and `extra` to the
    /// issuer's config, and starts the service.
    pub fn start(issuer: &Issuer, extra: &str) -> Self {
        Self::start_at(issuer, extra, NOW)
    }

    pub fn start_at(issuer: &Issuer, extra: &str, now: i64) -> Self {
        let made = issuer.run(&["admin-token", "--name", "alice"], None).ok();
        let token = made.line();
        assert!(
            !made.stderr.contains(&token),
            "the token is printed once, on stdout"
        );
        let snippet = admin_block(&made);
        let mut config = std::fs::read_to_string(&issuer.config).unwrap();
        config.push_str(&format!(
            "\n[serve]\nhsm_sessions = 2\n{extra}\n{snippet}\n"
        ));
        std::fs::write(&issuer.config, config).unwrap();
        Self::spawn_at(issuer, token, now)
    }

    pub fn spawn_at(issuer: &Issuer, token: String, now: i64) -> Self {
        let mut cmd = issuer.cmd(now);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        Self::spawn_cmd(cmd, token)
    }

    /// The service of `issuer` with company sign-in through a test OpenID Provider of its own:
    /// the provider (clock at [`NOW`], the service's timeline) knows `users` and registers the
    /// service's callback; `[oidc]` names it (identity from `email`, groups from `groups`, the
    /// desktop client for `request --server`), followed by `more` (e.g. `[[policy.group]]`
    /// entries and `[oidc]`-less sections). The admin token of [`Server::start`] still works.
    pub fn start_with_idp(issuer: &Issuer, users: &[IdpUser], more: &str) -> (Self, Idp) {
        Self::start_with_idp_options(issuer, users, more, IdpOptions::default(), "")
    }

    /// [`Server::start_with_idp`], with the provider's options and extra `[oidc]` lines.
    pub fn start_with_idp_options(
        issuer: &Issuer,
        users: &[IdpUser],
        more: &str,
        options: IdpOptions,
        oidc_extra: &str,
    ) -> (Self, Idp) {
        // The callback must be registered before the service listens: its port is chosen
        // first.
        let port = free_port();
        let redirect = format!("http://127.0.0.1:{port}/oidc/callback");
        let idp = Idp::start_with(
            users,
            IdpOptions {
                web_redirect_uris: vec![redirect.clone()],
                now: Some(NOW),
                ..options
            },
        );
        let secret = idp.web_client_secret_file();
        let oidc = format!(
            "[oidc]\nissuer = \"{iss}\"\nclient_id = \"{web}\"\nclient_secret_file = \"{secret}\"\nredirect_url = \"{redirect}\"\ndesktop_client_id = \"{desktop}\"\n{oidc_extra}\n{more}\n",
            iss = idp.issuer(),
            web = Idp::WEB_CLIENT_ID,
            secret = secret.display(),
            desktop = Idp::DESKTOP_CLIENT_ID,
        );
        let made = issuer.run(&["admin-token", "--name", "alice"], None).ok();
        let token = made.line();
        let snippet = admin_block(&made);
        let mut config = std::fs::read_to_string(&issuer.config).unwrap();
        config.push_str(&format!("\n[serve]\nhsm_sessions = 2\n{snippet}\n{oidc}"));
        std::fs::write(&issuer.config, config).unwrap();
        let mut cmd = issuer.cmd(NOW);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        (Self::spawn_cmd(cmd, token), idp)
    }

    /// Starts `cmd` (a `serve` command line) and waits for the address it prints.
    pub fn spawn_cmd(mut cmd: Command, token: String) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn serve");
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines() {
                all.push_str(&line.unwrap_or_default());
                all.push('\n');
            }
            all
        });
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = match first.trim().strip_prefix("listening on ") {
            Some(u) => u.to_string(),
            None => {
                let _ = child.wait();
                let err = stderr.join().unwrap();
                panic!("serve did not start: {first:?}\n{err}");
            }
        };
        Self {
            child,
            url,
            token,
            stderr: Some(stderr),
        }
    }

    pub fn agent(&self) -> ureq::Agent {
        ureq::AgentBuilder::new().redirects(0).build()
    }

    /// POST JSON; returns status, content type and body (error statuses included).
    pub fn post(&self, path: &str, auth: Option<&str>, body: &str) -> (u16, String, String) {
        let mut req = self
            .agent()
            .post(&format!("{}{path}", self.url))
            .set("Content-Type", "application/json");
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        answer(req.send_string(body))
    }

    pub fn get(&self, path: &str) -> (u16, String, String) {
        answer(self.agent().get(&format!("{}{path}", self.url)).call())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// SIGTERM, wait, and return the exit code and everything logged.
    pub fn stop(self) -> (i32, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.wait()
    }

    /// Waits until the process ends (a signal sent to it, or to the service under it, by the
    /// test), and returns the exit code and everything logged.
    pub fn wait(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        let log = self.stderr.take().unwrap().join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        // Killed by a signal: the shell's 128 + N, so a failure names the signal.
        let code = status.code().or(status.signal().map(|s| 128 + s));
        (code.unwrap_or(-1), log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String, String) {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let kind = resp.content_type().to_string();
    (status, kind, resp.into_string().unwrap())
}

pub fn sign_body(request: &str, valid_for: Option<&str>) -> String {
    let mut b = serde_json::json!({ "request": request });
    if let Some(v) = valid_for {
        b["valid_for"] = v.into();
    }
    b.to_string()
}

#[test]
fn api_signs_only_for_admins_and_speaks_problem_json() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);

    let (status, kind, body) = server.post("/v1/passes", None, &sign_body(&request, None));
    assert_eq!(
        (status, kind.as_str()),
        (401, "application/problem+json"),
        "{body}"
    );
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:hwpass:problem:unauthorized");
    assert_eq!(problem["status"], 401);
    let wrong = format!("Bearer {}x", server.token);
    let (status, _, body) = server.post("/v1/passes", Some(&wrong), &sign_body(&request, None));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not an admin token"), "{body}");
    let (status, _, _) = server.post(
        "/v1/passes",
        Some("Basic YWxpY2U6eA=="),
        &sign_body(&request, None),
    );
    assert_eq!(status, 401);
    assert!(
        issuer.audit_lines().is_empty(),
        "nothing signed without an admin"
    );

    let (status, kind, body) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, Some("2d")),
    );
    assert_eq!((status, kind.as_str()), (201, "application/json"), "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reply["exp"].as_i64().unwrap() - reply["nbf"].as_i64().unwrap(),
        2 * 86_400
    );
    let pass = reply["pass"].as_str().unwrap();
    d.install(pass, NOW).ok();
    assert_eq!(d.check(NOW + 60).0, 0);
    let audit = issuer.audit_lines();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["jti"], reply["jti"]);
    assert_eq!(audit[0]["by"], "alice", "the audit record names the admin");

    // Refusals, each with its problem type.
    for (body, status, slug) in [
        ("{\"request\":", 400, "bad-input"),
        ("{\"request\":\"x\",\"extra\":1}", 400, "bad-input"),
        (
            &sign_body("not.a.request", None)[..],
            422,
            "request-refused",
        ),
        (&sign_body(&request, Some("30d"))[..], 403, "policy"),
        (&sign_body(&request, Some("soon"))[..], 400, "bad-input"),
    ] {
        let (got, kind, text) = server.post("/v1/passes", Some(&server.bearer()), body);
        assert_eq!(
            (got, kind.as_str()),
            (status, "application/problem+json"),
            "{body}: {text}"
        );
        let p: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(p["type"], format!("urn:hwpass:problem:{slug}"), "{text}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let (status, _, _) = server.post("/v1/revocations", None, "{\"pass\":\"x\"}");
    assert_eq!(status, 401);
    let (status, _, body) = server.get("/v1/issuances");
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = server.get("/nothing-here");
    assert_eq!(status, 404);

    // Public documents: the trust bundle is what `jwks` prints; the OpenAPI document lists
    // every endpoint.
    let (status, kind, body) = server.get("/v1/jwks");
    assert_eq!((status, kind.as_str()), (200, "application/jwk-set+json"));
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let printed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trust).unwrap()).unwrap();
    assert_eq!(served, printed);
    let (status, _, body) = server.get("/v1/openapi.json");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/passes",
        "/v1/jwks",
        "/v1/denylist",
        "/v1/revocations",
        "/v1/issuances",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }

    let token = server.token.clone();
    let (code, log) = server.stop();
    assert_eq!(code, 0, "graceful shutdown on SIGTERM: {log}");
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
    assert!(log.contains("pass issued"), "{log}");
    assert!(
        !log.contains(&token) && !log.contains(PIN),
        "no secrets in logs: {log}"
    );
    assert!(!log.contains(&request), "no request bodies in logs");
}

#[test]
fn revocation_over_http_reaches_the_desktop_with_refresh_server() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    let d = Desktop::enrolled(&trust);
    let request = d.request("erin@corp", &[]);
    let (_, _, body) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, None),
    );
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    d.install(reply["pass"].as_str().unwrap(), NOW).ok();

    let r = d
        .run(&["refresh", "--server", &server.url], None, NOW + 10)
        .ok();
    assert!(r.stdout.contains("installed deny list #1"), "{r:?}");
    assert_eq!(d.check(NOW + 20).0, 0);

    let revoke =
        serde_json::json!({"pass": reply["jti"], "reason": "left the company"}).to_string();
    let (status, _, body) = server.post("/v1/revocations", Some(&server.bearer()), &revoke);
    assert_eq!(status, 201, "{body}");
    let out: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (out["seq"].as_u64(), out["already"].as_bool()),
        (Some(2), Some(false))
    );
    let (status, _, body) = server.post("/v1/revocations", Some(&server.bearer()), &revoke);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = server.post(
        "/v1/revocations",
        Some(&server.bearer()),
        "{\"pass\":\"x\",\"device\":\"y\"}",
    );
    assert_eq!(status, 404, "exactly one of pass and device: {body}");

    let (status, _, list) = server.get("/v1/issuances?limit=5");
    assert_eq!(status, 401, "{list}");
    let recent = answer(
        server
            .agent()
            .get(&format!("{}/v1/issuances?limit=5", server.url))
            .set("Authorization", &server.bearer())
            .call(),
    );
    let rows: serde_json::Value = serde_json::from_str(&recent.2).unwrap();
    assert_eq!(rows[0]["jti"], reply["jti"]);
    assert_eq!(rows[0]["revoked"], true);

    let r = d
        .run(
            &["refresh", "--server", &format!("{}/", server.url), "--json"],
            None,
            NOW + 30,
        )
        .ok();
    let report = r.json();
    assert_eq!(report["seq"], 2);
    assert_eq!(report["installed_pass_revoked"], true);
    let (code, v) = d.check(NOW + 40);
    assert_eq!(code, 8, "{v}");

    // The deny list as served is a signed JWS that `inspect` decodes.
    let (status, kind, text) = server.get("/v1/denylist");
    assert_eq!((status, kind.as_str()), (200, "application/jwt"));
    let shown = d
        .run(&["inspect", "--json", text.trim()], None, NOW)
        .ok()
        .json();
    assert_eq!(shown["kind"], "deny list");
    assert_eq!(shown["payload"]["passes"][0]["jti"], reply["jti"]);

    // Unreachable server: exit 1 with a hint, the installed list stays.
    drop(server);
    let r = d.run(
        &["refresh", "--server", "http://127.0.0.1:9"],
        None,
        NOW + 50,
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("hint:"), "{r:?}");
    assert_eq!(d.check(NOW + 60).0, 8);
}

#[test]
fn two_hundred_concurrent_sign_requests_are_all_issued_and_audited() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    // All 200 come from one address: above the per-address caps' defaults.
    let server = Server::start(
        &issuer,
        "max_connections_per_ip = 256\nmax_requests_per_ip = 256\n",
    );
    let desktops: Vec<Desktop> = (0..4).map(|_| Desktop::enrolled(&trust)).collect();
    let requests: Vec<String> = desktops
        .iter()
        .enumerate()
        .map(|(i, d)| d.request(&format!("user{i}@corp"), &[]))
        .collect();
    let jtis: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (server, request) = (&server, &requests[i % requests.len()]);
                s.spawn(move || {
                    let (status, _, body) = server.post(
                        "/v1/passes",
                        Some(&server.bearer()),
                        &sign_body(request, None),
                    );
                    assert_eq!(status, 201, "{body}");
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    v["jti"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = jtis.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 200);
    let audited: std::collections::HashSet<String> = issuer
        .audit_lines()
        .iter()
        .map(|r| r["jti"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(audited.len(), 200);
    assert!(jtis.iter().all(|j| audited.contains(j)));
    let verify = issuer.run(&["audit", "verify"], None).ok();
    assert!(verify.stdout.contains("200 records"), "{verify:?}");
}

/// Writes a proxy secret file (0600) into the issuer's directory; returns the secret.
pub fn proxy_secret(issuer: &Issuer) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let secret = hex::encode([7u8; 32]);
    let file = issuer.dir.path().join("proxy-secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    secret
}

#[test]
fn proxy_user_header_is_believed_only_with_the_proxys_secret() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let request = Desktop::enrolled(&trust).request("frank@corp", &[]);
    let secret = proxy_secret(&issuer);
    let server = Server::start(
        &issuer,
        "[serve.proxy]\nheader = \"X-Remote-User\"\nsecret_file = \"proxy-secret\"\n",
    );
    let send = |server: &Server, headers: &[(&str, &str)]| {
        let mut req = server
            .agent()
            .post(&format!("{}/v1/passes", server.url))
            .set("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        answer(req.send_string(&sign_body(&request, None)))
    };
    // Any local account can send from 127.0.0.1: the address alone vouches for nobody.
    let (status, _, body) = send(&server, &[("X-Remote-User", "grace")]);
    assert_eq!(status, 401, "the user header without the secret: {body}");
    let (status, _, body) = send(
        &server,
        &[
            ("X-Remote-User", "grace"),
            ("X-Hwpass-Proxy-Secret", &format!("{secret}x")),
        ],
    );
    assert_eq!(status, 401, "a wrong secret: {body}");
    assert!(issuer.audit_lines().is_empty());
    let (status, _, body) = send(
        &server,
        &[
            ("X-Remote-User", "grace"),
            ("X-Hwpass-Proxy-Secret", &secret),
        ],
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(issuer.audit_lines()[0]["by"], "proxy:grace");
    let (_, log) = server.stop();
    assert!(log.contains("without the proxy's secret"), "{log}");
    assert!(!log.contains(&secret), "the secret is never logged: {log}");

    // With the proxy's address as well, the secret from elsewhere is not enough.
    let other = Issuer::new();
    other.setup();
    let secret = proxy_secret(&other);
    let server = Server::start(
        &other,
        "[serve.proxy]\nheader = \"X-Remote-User\"\nsecret_file = \"proxy-secret\"\ntrusted = [\"192.0.2.1\"]\n",
    );
    let (status, _, body) = send(
        &server,
        &[
            ("X-Remote-User", "grace"),
            ("X-Hwpass-Proxy-Secret", &secret),
        ],
    );
    assert_eq!(status, 401, "{body}");
    let (_, log) = server.stop();
    assert!(log.contains("ignoring a proxy user header"), "{log}");
}

#[test]
fn a_proxy_trusted_by_a_loopback_address_alone_is_a_config_error() {
    let issuer = Issuer::new();
    issuer.setup();
    for trusted in [
        "127.0.0.1",
        "::1",
        "127.0.0.2",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ] {
        let mut config = std::fs::read_to_string(&issuer.config).unwrap();
        if let Some(at) = config.find("\n[serve]") {
            config.truncate(at);
        }
        config.push_str(&format!(
            "\n[serve]\n[serve.proxy]\nheader = \"X-Remote-User\"\ntrusted = [\"{trusted}\"]\n"
        ));
        std::fs::write(&issuer.config, config).unwrap();
        // Bounded either way: a service that starts anyway is stopped and fails the test.
        let mut cmd = issuer.cmd(NOW);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        if first.starts_with("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{trusted}: the service started with a loopback-trusted proxy");
        }
        let out = child.wait_with_output().unwrap();
        let out = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: first,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(out.code, 1, "{trusted}: {out:?}");
        assert!(
            out.stderr
                .contains("every local account can send from that address")
                && out.stderr.contains("secret_file"),
            "{trusted}: {out:?}"
        );
    }
}

/// The `[[serve.admins]]` block that `admin-token` printed on stderr, to add to a config.
pub fn admin_block(made: &Run) -> String {
    made.stderr
        .lines()
        .skip_while(|l| !l.starts_with("[[serve.admins]]"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scrapes the CSRF token out of a page.
pub fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

/// The `name=value` part of the cookie `name` a response sets.
pub fn cookie_in(resp: &ureq::Response, name: &str) -> String {
    resp.all("set-cookie")
        .into_iter()
        .find_map(|c| {
            c.split(';')
                .next()
                .filter(|kv| kv.starts_with(&format!("{name}=")))
        })
        .unwrap_or_else(|| panic!("a {name} cookie in {:?}", resp.all("set-cookie")))
        .to_string()
}

#[test]
fn web_forms_refuse_a_missing_or_wrong_csrf_token() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, "");
    let agent = server.agent();
    let url = |p: &str| format!("{}{p}", server.url);
    let request = Desktop::enrolled(&trust).request("heidi@corp", &[]);

    // A visitor gets a login nonce cookie (and no server-side session).
    let first = agent.get(&url("/")).call().unwrap();
    let set = first.header("set-cookie").unwrap().to_string();
    assert!(
        set.starts_with("hwpass_login=")
            && set.contains("HttpOnly")
            && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    assert!(first.header("strict-transport-security").is_none());
    let csp = first.header("content-security-policy").unwrap().to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let anon = cookie_in(&first, "hwpass_login");
    let html = first.into_string().unwrap();
    assert!(html.contains("Admin token"), "the login page");
    let csrf = csrf_in(&html);

    let login = |cookie: &str, csrf: &str, token: &str| {
        agent
            .post(&url("/login"))
            .set("Cookie", cookie)
            .send_form(&[("csrf", csrf), ("token", token)])
            .map_err(Box::new)
    };
    let boxed = |r: Result<ureq::Response, Box<ureq::Error>>| answer(r.map_err(|e| *e));
    let (status, _, _) = boxed(login(&anon, "forged", &server.token));
    assert_eq!(status, 403, "login with a wrong CSRF token");
    let (status, _, body) = boxed(login(&anon, &csrf, "hwpa_wrong"));
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = boxed(login(
        "hwpass_login=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &csrf,
        &server.token,
    ));
    assert_eq!(
        status, 403,
        "a CSRF token made for another browser's cookie"
    );
    let (status, _, _) = answer(
        agent
            .post(&url("/login"))
            .send_form(&[("csrf", &csrf), ("token", &server.token)]),
    );
    assert_eq!(status, 403, "a CSRF token without its cookie");
    let (status, _, body) = answer(agent.post(&url("/login")).set("Cookie", &anon).send_form(&[
        ("csrf", &csrf),
        ("csrf", &csrf),
        ("token", &server.token),
    ]));
    assert_eq!(status, 400, "a field given twice: {body}");
    assert!(body.contains("given twice"), "{body}");
    let ok = login(&anon, &csrf, &server.token).unwrap();
    assert_eq!(ok.status(), 303);
    let admin = cookie_in(&ok, "hwpass_session");
    assert!(
        ok.all("set-cookie")
            .iter()
            .any(|c| c.starts_with("hwpass_login=;") && c.contains("Max-Age=0")),
        "the nonce is spent: {:?}",
        ok.all("set-cookie")
    );
    // The nonce cookie alone is no session.
    let home = agent.get(&url("/")).set("Cookie", &anon).call().unwrap();
    assert!(home.into_string().unwrap().contains("Admin token"));

    let home = agent.get(&url("/")).set("Cookie", &admin).call().unwrap();
    let html = home.into_string().unwrap();
    assert!(html.contains("Recent issuances"), "{html}");
    let csrf = csrf_in(&html);
    let sign = |cookie: &str, fields: &[(&str, &str)]| {
        answer(
            agent
                .post(&url("/sign"))
                .set("Cookie", cookie)
                .send_form(fields),
        )
    };
    let lifetime = "86400";
    let (status, _, _) = sign(&admin, &[("request", &request), ("lifetime", lifetime)]);
    assert_eq!(status, 403, "no CSRF token");
    let (status, _, _) = sign(
        &admin,
        &[("csrf", "x"), ("request", &request), ("lifetime", lifetime)],
    );
    assert_eq!(status, 403, "wrong CSRF token");
    let (status, _, _) = sign(
        &anon,
        &[
            ("csrf", &csrf),
            ("request", &request),
            ("lifetime", lifetime),
        ],
    );
    assert_eq!(status, 403, "another browser's cookie");
    assert!(issuer.audit_lines().is_empty(), "nothing was signed");
    let (status, _, html) = sign(
        &admin,
        &[
            ("csrf", &csrf),
            ("request", &request),
            ("lifetime", lifetime),
        ],
    );
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("id=\"pass\"") && html.contains("<svg"),
        "{html}"
    );
    assert_eq!(issuer.audit_lines().len(), 1);

    // Revoke through the page needs the token too.
    let jti = issuer.audit_lines()[0]["jti"].as_str().unwrap().to_string();
    let (status, _, _) = answer(
        agent
            .post(&url("/revoke"))
            .set("Cookie", &admin)
            .send_form(&[("jti", &jti)]),
    );
    assert_eq!(status, 403);
    let (status, _, html) = answer(
        agent
            .post(&url("/revoke"))
            .set("Cookie", &admin)
            .send_form(&[("csrf", &csrf), ("jti", &jti)]),
    );
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Revoked pass"), "{html}");

    // Signing out ends the session on the server, not only in the browser.
    let out = answer(
        agent
            .post(&url("/logout"))
            .set("Cookie", &admin)
            .send_form(&[("csrf", &csrf)]),
    );
    assert_eq!(out.0, 303);
    let home = agent.get(&url("/")).set("Cookie", &admin).call().unwrap();
    assert!(home.into_string().unwrap().contains("Admin token"));
}

#[test]
fn https_with_rustls_and_refresh_checks_the_servers_ca() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let dir = issuer.dir.path();
    test_server_pki(dir);
    // TLS certificate validity is checked against the real clock inside rustls, so this
    // server and desktop run at the real time instead of the tests' fixed one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let server = Server::start_at(
        &issuer,
        "tls_cert = \"server.pem\"\ntls_key = \"server.key\"\n",
        now,
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let d = Desktop::enrolled_at(&trust, now);
    let ca = dir.join("ca.pem");
    let r = d.run(
        &[
            "refresh",
            "--server",
            &server.url,
            "--ca",
            ca.to_str().unwrap(),
        ],
        None,
        now,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("installed deny list #1"), "{r:?}");
    let r = d.run(&["refresh", "--server", &server.url], None, now);
    assert_eq!(r.code, 1, "the system roots do not know this CA: {r:?}");
    assert!(
        r.stderr.contains("UnknownIssuer") || r.stderr.contains("certificate"),
        "{r:?}"
    );

    // Under TLS: HSTS, and the cookies are Secure with the __Host- prefix.
    let agent = {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        ureq::AgentBuilder::new()
            .tls_config(std::sync::Arc::new(tls))
            .build()
    };
    let page = agent.get(&format!("{}/", server.url)).call().unwrap();
    assert_eq!(
        page.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let set = page.header("set-cookie").unwrap();
    assert!(
        set.starts_with("__Host-hwpass_login=") && set.contains("; Secure"),
        "{set}"
    );
}

#[test]
fn web_page_in_headless_chromium_signs_copies_and_revokes() {
    browser_flow("");
}

/// The same flow with `Secure`, `__Host-` cookies (as behind a TLS proxy): Chromium treats
/// http://127.0.0.1 as a secure context and keeps them.
#[test]
fn web_page_in_headless_chromium_with_secure_host_cookies() {
    browser_flow("behind_tls_proxy = true\n");
}

fn browser_flow(extra: &str) {
    require("chromium", "chromium");
    require("chromedriver", "chromium-driver");
    assert!(
        std::path::Path::new("/usr/lib/python3/dist-packages/selenium").is_dir(),
        "selenium is not installed: install the Debian package python3-selenium (run ci/setup)"
    );
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let server = Server::start(&issuer, extra);
    let d = Desktop::enrolled(&trust);
    let request = d.request("ivan@corp", &["--valid-for", "1d"]);
    let artifacts = repo().join(if extra.is_empty() {
        "target/test-artifacts"
    } else {
        "target/test-artifacts/secure-cookies"
    });
    std::fs::create_dir_all(&artifacts).unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("request.txt"), &request).unwrap();
    std::fs::write(work.path().join("token.txt"), &server.token).unwrap();
    // Debian's interpreter, where python3-selenium is installed (not a pyenv or venv one).
    let out = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/browser/web_flow.py"))
        .arg(&server.url)
        .arg(work.path())
        .arg(&artifacts)
        .env_remove("HWPASS_PIN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser flow failed:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["subject_shown"], "ivan@corp");
    assert_eq!(result["copy_button"], "Copied");
    assert_eq!(
        result["clipboard"], result["pass"],
        "the copy button copied the pass"
    );
    assert_eq!(result["revoked_tag"], true);
    assert!(result["qr_svg"].as_bool().unwrap());
    let pass = result["pass"].as_str().unwrap();
    // The pass from the page works on the desktop…
    d.install(pass, NOW).ok();
    assert_eq!(d.check(NOW + 60).0, 0);
    // …the download link carries the same pass…
    assert_eq!(result["download"].as_str().unwrap(), pass);
    // …and after Revoke on the page, a refreshed desktop refuses it.
    assert_eq!(result["revoked_notice"], true);
    d.run(&["refresh", "--server", &server.url], None, NOW + 120)
        .ok();
    assert_eq!(d.check(NOW + 180).0, 8);
    for shot in ["web-1-review.png", "web-2-pass.png", "web-3-revoked.png"] {
        let png = std::fs::read(artifacts.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "{shot}");
    }
}
