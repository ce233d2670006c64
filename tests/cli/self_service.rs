//! Self-service through the company's sign-in: a real OpenID Provider (node-oidc-provider,
//! tests/oidc/) per test, the real service and desktop binaries, and Debian's headless
//! Chromium for the browser flows.

use std::process::Command;

use hwpass::format_time;

use crate::common::*;
use crate::service::*;

/// The groups most tests use: `hwpass-users` get passes of up to 7 days, two a day.
const GROUPS: &str = r#"
[[policy.group]]
name = "contractors"
allowed = false

[[policy.group]]
name = "hwpass-users"
max_lifetime = "7d"
passes_per_day = 2

[[policy.group]]
name = "engineering"
software = false
"#;

/// What the browser did and saw (tests/browser/self_service.py's summary).
fn browser(
    server: &Server,
    user: &IdpUser,
    files: &[(&str, &str)],
    tag: &str,
) -> serde_json::Value {
    require_browser();
    let artifacts = repo().join("target/test-artifacts/self-service");
    std::fs::create_dir_all(&artifacts).unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("username.txt"), &user.preferred_username).unwrap();
    std::fs::write(work.path().join("password.txt"), &user.password).unwrap();
    std::fs::write(work.path().join("tag.txt"), tag).unwrap();
    for (name, text) in files {
        std::fs::write(work.path().join(name), text).unwrap();
    }
    let out = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/browser/self_service.py"))
        .arg(&server.url)
        .arg(work.path())
        .arg(&artifacts)
        .env_remove("HWPASS_PIN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser failed:\n{stdout}\n{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert!(
        result["exception"].is_null(),
        "the browser flow broke: {result}\n{stderr}"
    );
    result
}

#[test]
fn an_employee_signs_in_gets_their_own_pass_and_the_audit_names_them() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let olga = IdpUser::new("olga", &["staff", "hwpass-users"]);
    let (server, idp) = Server::start_with_idp(&issuer, std::slice::from_ref(&olga), GROUPS);
    let d = Desktop::enrolled(&trust);
    let request = d.request(&olga.email, &["--valid-for", "3d"]);
    let r = browser(
        &server,
        &olga,
        &[("request.txt", &request), ("lifetime.txt", "86400")],
        "employee",
    );
    assert_eq!(r["signed_in_as"], "olga@corp.example", "{r}");
    assert_eq!(r["group"], "hwpass-users");
    assert!(
        r["rule"].as_str().unwrap().contains("up to 7d")
            && r["rule"].as_str().unwrap().contains("2 more"),
        "{r}"
    );
    assert_eq!(r["admin_page"], false, "an employee sees no admin list");
    let r = &r["results"][0];
    assert_eq!(r["subject_shown"], "olga@corp.example", "{r}");
    // The group's 7 days bound the lifetimes offered.
    let offered: Vec<i64> = r["lifetimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(offered.iter().all(|&l| l <= 3 * 86400), "{offered:?}");
    let pass = r["pass"].as_str().unwrap();
    d.install(pass, NOW).ok();
    let (code, verdict) = d.check(NOW);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(verdict["subject"], "olga@corp.example");

    let records = issuer.audit_lines();
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert_eq!(rec["by"], "olga@corp.example");
    assert_eq!(rec["idp"], idp.issuer());
    assert_eq!(rec["group"], "hwpass-users");
    assert_eq!(rec["sub"], "olga@corp.example");
    assert_eq!(
        rec["exp"].as_i64().unwrap() - rec["nbf"].as_i64().unwrap(),
        86400
    );
    // The issuance list names them too.
    let listed = issuer.run(&["audit", "list"], None).ok().stdout;
    assert!(
        listed.contains(&format!(
            "by olga@corp.example (group hwpass-users, via {})",
            idp.issuer()
        )),
        "{listed}"
    );
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(&olga.password), "no password in the log");
    assert!(
        !log.contains(idp.web_client_secret()),
        "no client secret in the log"
    );
}

// ---------------------------------------------------------------------------------------------
// The sign-in at the HTTP level: the test holds the service's cookies itself, so it can replay
// and tamper with what a browser would send.

/// A client of the service that keeps its own cookies and follows no redirects.
struct Client {
    agent: ureq::Agent,
    base: String,
    cookies: std::collections::BTreeMap<String, String>,
}

/// An answer: status, the `Location` header, the body.
struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Client {
    fn new(server: &Server) -> Self {
        Self {
            agent: ureq::AgentBuilder::new().redirects(0).build(),
            base: server.url.clone(),
            cookies: Default::default(),
        }
    }

    fn keep(&mut self, resp: &ureq::Response) {
        for c in resp.all("set-cookie") {
            let pair = c.split(';').next().unwrap_or_default();
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn answer(&mut self, r: Result<ureq::Response, ureq::Error>) -> Answer {
        let resp = match r {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport: {e}"),
        };
        self.keep(&resp);
        Answer {
            status: resp.status(),
            location: resp.header("location").map(str::to_string),
            body: resp.into_string().unwrap(),
        }
    }

    /// GET a path (or a full URL on the service).
    fn get(&mut self, path: &str) -> Answer {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.agent.get(&url);
        if !self.cookies.is_empty() {
            req = req.set("Cookie", &self.cookie_header());
        }
        let r = req.call();
        self.answer(r)
    }

    /// Starts a sign-in: the provider's authorization URL.
    fn start(&mut self) -> String {
        let a = self.get("/oidc/login");
        assert_eq!(a.status, 303, "{}", a.body);
        assert!(
            self.cookies.keys().any(|k| k.contains("hwpass_signin")),
            "the sign-in under way is in a cookie: {:?}",
            self.cookies.keys()
        );
        a.location.unwrap()
    }
}

/// Signs `user` in at the provider in Chromium for an authorization URL the test started; the
/// callback URL the provider sent the browser to (the browser's own visit to it is refused by
/// the service: that browser never started a sign-in there).
fn at_the_provider(server: &Server, user: &IdpUser, auth_url: &str) -> String {
    let redirect = format!("{}/oidc/callback", server.url);
    let r = idp_browser("code", auth_url, user, &[("redirect_uri.txt", &redirect)]);
    assert_eq!(r["done"], true, "{r}");
    r["final_url"].as_str().unwrap().to_string()
}

#[test]
fn forged_tokens_replayed_answers_and_a_provider_that_is_down_sign_nobody_in() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let olga = IdpUser::new("olga", &["hwpass-users"]);
    let (server, mut idp) = Server::start_with_idp(&issuer, std::slice::from_ref(&olga), GROUPS);

    // Each kind of forged or misdirected ID token: the callback is refused with what is wrong
    // and no session is opened.
    for mode in Hostile::ALL {
        let why = mode.refusal();
        idp.set_hostile(Some(mode));
        let mut c = Client::new(&server);
        let auth = c.start();
        let callback = at_the_provider(&server, &olga, &auth);
        let a = c.get(&callback);
        assert_eq!(a.status, 401, "{mode:?}: {}", a.body);
        assert!(a.body.contains(why), "{mode:?}: {}", a.body);
        assert!(
            !c.cookies.keys().any(|k| k.contains("hwpass_session")),
            "{mode:?}: no session"
        );
        let home = c.get("/");
        assert!(
            home.body.contains("oidc-sign-in"),
            "{mode:?}: still signed out"
        );
    }
    idp.set_hostile(None);

    // A genuine sign-in works once; its answer replayed (same cookie, same state) is refused.
    let mut c = Client::new(&server);
    let auth = c.start();
    let callback = at_the_provider(&server, &olga, &auth);
    let pending = c.cookies.clone();
    let a = c.get(&callback);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("Signed in as"), "{}", a.body);
    let mut replay = Client::new(&server);
    replay.cookies = pending;
    let again = replay.get(&callback);
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("already used"), "{}", again.body);
    // Another browser's answer (no sign-in started there), a state from elsewhere, and a
    // provider that names someone else (RFC 9207 iss) are refused the same way.
    let mut stranger = Client::new(&server);
    let a = stranger.get(&callback);
    assert!(a.body.contains("not started in this browser"), "{}", a.body);
    let mut c2 = Client::new(&server);
    let auth2 = c2.start();
    let cb2 = at_the_provider(&server, &olga, &auth2);
    let state = |u: &str| {
        u.split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("state="))
            .unwrap()
            .to_string()
    };
    let swapped = cb2.replace(&state(&cb2), &state(&callback));
    let a = c2.get(&swapped);
    assert!(a.body.contains("does not belong"), "{}", a.body);
    let mut c3 = Client::new(&server);
    let auth3 = c3.start();
    let cb3 = at_the_provider(&server, &olga, &auth3);
    let iss = cb3
        .split(['?', '&'])
        .find(|kv| kv.starts_with("iss="))
        .expect("the provider names itself (RFC 9207)")
        .to_string();
    let a = c3.get(&cb3.replace(&iss, "iss=https%3A%2F%2Fevil.example"));
    assert!(a.body.contains("another provider"), "{}", a.body);

    // The provider goes down between sign-in and callback: a clear page, nothing signed.
    let mut c4 = Client::new(&server);
    let auth4 = c4.start();
    let cb4 = at_the_provider(&server, &olga, &auth4);
    idp.stop();
    let a = c4.get(&cb4);
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(a.body.contains("unavailable"), "{}", a.body);
    assert!(a.body.contains("nothing was signed"), "{}", a.body);
    assert!(a.body.contains("admins can still sign in"), "{}", a.body);
    assert!(!c4.cookies.keys().any(|k| k.contains("hwpass_session")));
    // … and admins still sign passes with their token.
    let d = Desktop::enrolled(&trust);
    let request = d.request("olga@corp.example", &[]);
    let (status, _, body) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, None),
    );
    assert_eq!(status, 201, "{body}");
    let records = issuer.audit_lines();
    assert_eq!(records.len(), 1, "only the admin's pass was signed");
    assert_eq!(records[0]["by"], "alice");
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains(idp.web_client_secret()),
        "no client secret in the log"
    );
}

#[test]
fn refusals_say_which_group_is_needed_whose_pass_it_is_and_when_the_next_is_possible() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let carl = IdpUser::new("carl", &["contractors", "hwpass-users"]);
    let nina = IdpUser::new("nina", &["staff"]);
    let olga = IdpUser::new("olga", &["hwpass-users"]);
    let erik = IdpUser::new("erik", &["engineering"]);
    let users = [carl.clone(), nina.clone(), olga.clone(), erik.clone()];
    let (server, _idp) = Server::start_with_idp(&issuer, &users, GROUPS);

    // In a group listed `allowed = false` (before one that would allow): refused at sign-in.
    let r = browser(&server, &carl, &[], "contractor");
    assert_eq!(r["title"], "Sign-in refused", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("members of the group 'contractors' may not get passes"),
        "{r}"
    );
    // In no listed group: the page names the groups that would do.
    let r = browser(&server, &nina, &[], "no-group");
    assert_eq!(
        r["error"],
        "you are in none of the groups that may get passes here; ask to be added to one of: 'hwpass-users', 'engineering'",
        "{r}"
    );

    // Olga: a request naming someone else, then two of her own, then a third (two a day).
    let d = Desktop::enrolled(&trust);
    let requests = [
        d.request("bob@corp.example", &[]),
        d.request(&olga.email, &[]),
        d.request(&olga.email, &[]),
        d.request(&olga.email, &[]),
    ]
    .join("\n");
    let r = browser(&server, &olga, &[("request.txt", &requests)], "olga");
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{r}");
    assert_eq!(results[0]["title"], "Not your pass to ask for", "{r}");
    assert!(
        results[0]["error"].as_str().unwrap().contains(
            "this request is for 'bob@corp.example', but you signed in as 'olga@corp.example'"
        ),
        "{r}"
    );
    assert!(results[1]["pass"].is_string(), "{r}");
    assert!(results[2]["pass"].is_string(), "{r}");
    assert_eq!(results[3]["title"], "Passes per day reached", "{r}");
    let third = results[3]["error"].as_str().unwrap();
    assert!(
        third.contains("you have had 2 passes in the last 24 hours")
            && third.contains("group 'hwpass-users'")
            && third.contains(&format_time(NOW + 86400)),
        "{third}"
    );

    // Erik's group takes TPM-bound passes only: a software request is refused.
    let r = browser(
        &server,
        &erik,
        &[("request.txt", &d.request(&erik.email, &[]))],
        "erik",
    );
    assert_eq!(r["group"], "engineering", "{r}");
    assert!(
        r["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("your group 'engineering' may get TPM-bound passes only"),
        "{r}"
    );

    let records = issuer.audit_lines();
    assert_eq!(records.len(), 2, "only Olga's two passes were signed");
    assert!(records.iter().all(|r| r["by"] == "olga@corp.example"));
}

#[test]
fn an_admin_group_member_signs_for_someone_else_and_people_revoke_their_own_after_confirming() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let anna = IdpUser::new("anna", &["hwpass-admins"]);
    let olga = IdpUser::new("olga", &["hwpass-users"]);
    let (server, idp) = Server::start_with_idp_options(
        &issuer,
        &[anna.clone(), olga.clone()],
        GROUPS,
        IdpOptions::default(),
        "admin_groups = [\"hwpass-admins\"]",
    );
    let d = Desktop::enrolled(&trust);
    // Anna, an admin through her group, signs Olga's request from the admin page.
    let request = d.request(&olga.email, &["--valid-for", "2d"]);
    let r = browser(&server, &anna, &[("request.txt", &request)], "admin");
    assert_eq!(r["admin_page"], true, "{r}");
    assert_eq!(r["signed_in_as"], "anna@corp.example");
    let first = &r["results"][0];
    assert_eq!(first["subject_shown"], "olga@corp.example", "{r}");
    let pass = first["pass"].as_str().unwrap();
    d.install(pass, NOW).ok();
    assert_eq!(d.check(NOW).0, 0);
    let rec = &issuer.audit_lines()[0];
    assert_eq!(rec["by"], "anna@corp.example");
    assert_eq!(rec["group"], "hwpass-admins");
    assert_eq!(rec["idp"], idp.issuer());
    let jti = rec["jti"].as_str().unwrap().to_string();

    // Olga sees the pass among hers and revokes it (a lost laptop), confirming first.
    let r = browser(&server, &olga, &[("revoke.txt", &jti)], "revoke");
    assert!(
        r["my_passes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row.as_str().unwrap().contains(&jti)),
        "{r}"
    );
    let confirm = r["confirm_page"].as_str().unwrap();
    assert!(
        confirm.contains(&jti)
            && confirm.contains("test-laptop")
            && confirm.contains("cannot be undone"),
        "{confirm}"
    );
    assert!(
        r["revoke_notice"]
            .as_str()
            .unwrap()
            .contains(&format!("Revoked pass {jti}")),
        "{r}"
    );
    let register: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(issuer.dir.path().join("audit/revocations.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(register["passes"][0]["jti"], jti.as_str());
    assert_eq!(register["passes"][0]["by"], "olga@corp.example");
    let revoked = issuer
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "revoke");
    assert!(revoked.is_some(), "the revocation is audited");
}

#[test]
fn a_provider_that_rotated_its_keys_is_asked_again_once() {
    let issuer = Issuer::new();
    issuer.setup();
    let olga = IdpUser::new("olga", &["hwpass-users"]);
    let (server, mut idp) = Server::start_with_idp(&issuer, std::slice::from_ref(&olga), GROUPS);
    let mut c = Client::new(&server);
    let auth = c.start();
    let cb = at_the_provider(&server, &olga, &auth);
    assert_eq!(
        c.get(&cb).status,
        200,
        "the service now holds the provider's keys"
    );
    let fetched = |idp: &Idp| idp.log().matches("GET /jwks").count();
    let before = fetched(&idp);
    // Same issuer, new signing keys (new kids): the next token names a key the service has
    // not seen; it fetches the keys once more and signs Olga in.
    idp.restart();
    let mut c = Client::new(&server);
    let auth = c.start();
    let cb = at_the_provider(&server, &olga, &auth);
    let a = c.get(&cb);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.contains("Signed in as <b>olga@corp.example</b>"),
        "{}",
        a.body
    );
    assert_eq!(
        fetched(&idp),
        before + 1,
        "the restarted provider's keys were fetched once: {}",
        idp.log()
    );
}

#[test]
fn sighup_builds_the_provider_from_the_new_config_and_keeps_used_sign_ins_and_sessions() {
    use crate::ops::{sighup, wait_for};
    let issuer = Issuer::new();
    issuer.setup();
    let olga = IdpUser::new("olga", &["hwpass-users"]);
    let (server, idp) = Server::start_with_idp(&issuer, std::slice::from_ref(&olga), GROUPS);
    let mut c = Client::new(&server);
    let auth = c.start();
    let callback = at_the_provider(&server, &olga, &auth);
    let pending = c.cookies.clone();
    assert_eq!(c.get(&callback).status, 200);
    let signed_in = |c: &mut Client| {
        let home = c.get("/");
        !home.body.contains("oidc-sign-in") && home.body.contains(&olga.email)
    };
    assert!(signed_in(&mut c));

    // A reload that changes a group's rule: Olga stays signed in, and the answer she used
    // stays used (a reload must not make a sign-in answer good again).
    let applied = "hwpass_config_reloads_total{result=\"applied\"}";
    let before = std::fs::read_to_string(&issuer.config).unwrap();
    assert!(before.contains("passes_per_day = 2"));
    std::fs::write(
        &issuer.config,
        before.replace("passes_per_day = 2", "passes_per_day = 1"),
    )
    .unwrap();
    let base = {
        let (_, _, text) = server.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(applied)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    sighup(&server);
    wait_for(&server, applied, base + 1.0);
    assert!(signed_in(&mut c), "sessions outlive a reload");
    let mut replay = Client::new(&server);
    replay.cookies = pending;
    let again = replay.get(&callback);
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("already used"), "{}", again.body);
    // The provider after the reload (built from the new config) still starts sign-ins there.
    let mut fresh = Client::new(&server);
    assert!(fresh.start().starts_with(idp.issuer()));

    // Another provider in the config: people signed in through the old one are signed out,
    // and sign-ins go to the new one (down here: the page names it).
    let elsewhere = "http://127.0.0.1:9/other-provider";
    let now = std::fs::read_to_string(&issuer.config).unwrap();
    std::fs::write(
        &issuer.config,
        now.replace(
            &format!("issuer = \"{}\"", idp.issuer()),
            &format!("issuer = \"{elsewhere}\""),
        ),
    )
    .unwrap();
    sighup(&server);
    wait_for(&server, applied, base + 2.0);
    assert!(!signed_in(&mut c), "signed out: their provider is gone");
    let a = Client::new(&server).get("/oidc/login");
    assert!(a.body.contains(elsewhere), "{}: {}", a.status, a.body);
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
}
