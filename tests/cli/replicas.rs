//! The PostgreSQL store and issuer replicas (issue 15): a real PostgreSQL per test, the CLI
//! and `serve` replicas against it, a token shared through `p11-kit server`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::modules::{poll, Kind};
use crate::pg::{PgIssuer, Postgres};
use crate::service::{answer, sign_body, Server};

/// The payload of a compact JWS (a pass or a deny list), not verified.
fn payload_of(token: &str) -> serde_json::Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn pg_cli_needs_migrate_then_signs_revokes_verifies_and_exports() {
    let issuer = PgIssuer::new(Kind::SoftHsm);
    issuer.run(&["keygen"], None).ok();
    let jwks = issuer.run(&["jwks"], None).ok();
    let trust = issuer.dir.path().join("issuer.jwks");
    std::fs::write(&trust, &jwks.stdout).unwrap();
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);

    // No schema yet: nothing is signed, and the hint names the command.
    let r = issuer.run(&["sign"], Some(&request));
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stdout.is_empty(), "no pass without its record: {r:?}");
    assert!(r.stderr.contains("has no hwpass schema"), "{r:?}");
    assert!(r.stderr.contains("hwpass-issuer db migrate"), "{r:?}");
    let tables = issuer
        .pg
        .count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'hwpass_%'");
    assert_eq!(tables, 0, "nothing but `db migrate` creates tables");

    let m = issuer.run(&["db", "migrate", "--json"], None).ok().json();
    assert_eq!((m["from"].as_i64(), m["to"].as_i64()), (Some(0), Some(1)));
    let again = issuer.run(&["db", "migrate", "--json"], None).ok().json();
    assert_eq!(
        (again["from"].as_i64(), again["to"].as_i64()),
        (Some(1), Some(1))
    );

    let mut jtis = Vec::new();
    for _ in 0..3 {
        let pass = issuer.run(&["sign"], Some(&request)).ok().line();
        jtis.push(payload_of(&pass)["jti"].as_str().unwrap().to_string());
    }
    let v = issuer.verify();
    assert_eq!(v["records"], 3, "{v}");
    assert_eq!(
        v["checkpoint"]["size"], 3,
        "the CLI covers its own entries: {v}"
    );
    assert_eq!(v["uncovered"], 0, "{v}");

    let r = issuer
        .run(&["revoke", "--pass", &jtis[1], "--json"], None)
        .ok()
        .json();
    assert_eq!(
        (r["seq"].as_u64(), r["already"].as_bool()),
        (Some(1), Some(false)),
        "{r}"
    );
    assert!(r["audit_error"].is_null(), "{r}");
    let r = issuer
        .run(&["revoke", "--pass", &jtis[1], "--json"], None)
        .ok()
        .json();
    assert_eq!(
        (r["seq"].as_u64(), r["already"].as_bool()),
        (Some(1), Some(true)),
        "{r}"
    );
    let list = issuer.run(&["denylist"], None).ok().line();
    let claims = payload_of(&list);
    // As with the file store, the first list also records the keys: one more number.
    assert_eq!(claims["seq"], 2, "{claims}");
    assert_eq!(claims["passes"][0]["jti"], jtis[1].as_str());

    let listed = issuer.run(&["audit", "list", "--json"], None).ok();
    let entries: Vec<serde_json::Value> = listed
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 4, "three passes and a revocation");
    assert_eq!(entries[3]["event"], "revoke");
    assert_eq!(
        issuer
            .pg
            .count("SELECT count(*) FROM hwpass_audit_entries WHERE position BETWEEN 0 AND 3"),
        4
    );

    // Export for an auditor: verifies offline with the trust bundle alone.
    let out = issuer.dir.path().join("export/audit.jsonl");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let e = issuer
        .run(
            &["audit", "export", "-o", out.to_str().unwrap(), "--json"],
            None,
        )
        .ok()
        .json();
    assert_eq!(
        (e["records"].as_u64(), e["left_out"].as_u64()),
        (Some(4), Some(0))
    );
    let offline = issuer
        .run(
            &[
                "audit",
                "verify",
                "--log",
                out.to_str().unwrap(),
                "--trust",
                trust.to_str().unwrap(),
                "--json",
            ],
            None,
        )
        .ok()
        .json();
    assert_eq!(offline["records"], 4, "{offline}");
    assert_eq!(offline["checkpoint"]["size"], 4, "{offline}");
    let again = issuer.run(&["audit", "export", "-o", out.to_str().unwrap()], None);
    assert_ne!(again.code, 0, "an export never overwrites: {again:?}");

    // An edited entry and a deleted one are both caught.
    issuer.pg.sql(
        "hwpass",
        "UPDATE hwpass_audit_entries SET line = replace(line, 'alice@corp', 'mallory@corp') WHERE position = 1",
    );
    let r = issuer.run(&["audit", "verify"], None);
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stderr.contains("line 3 does not follow line 2"), "{r:?}");
    issuer.pg.sql(
        "hwpass",
        "UPDATE hwpass_audit_entries SET line = replace(line, 'mallory@corp', 'alice@corp') WHERE position = 1",
    );
    issuer.run(&["audit", "verify"], None).ok();
    issuer.pg.sql(
        "hwpass",
        "DELETE FROM hwpass_audit_entries WHERE position = 2",
    );
    let r = issuer.run(&["audit", "verify"], None);
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stderr.contains("position 3 where 2 was due"), "{r:?}");
}

#[test]
fn pg_import_takes_a_verified_file_store_and_refuses_a_damaged_one() {
    let issuer = PgIssuer::new(Kind::SoftHsm);
    let with_store = std::fs::read_to_string(&issuer.config).unwrap().replace(
        "audience = \"analytics-desktop\"\n",
        "audience = \"analytics-desktop\"\naudit_log = \"audit/audit.jsonl\"\n",
    );
    let files_only = &with_store[..with_store.find("[store]").unwrap()];
    std::fs::write(&issuer.config, files_only).unwrap();
    issuer.run(&["keygen"], None).ok();
    let jwks = issuer.run(&["jwks"], None).ok();
    let trust = issuer.dir.path().join("issuer.jwks");
    std::fs::write(&trust, &jwks.stdout).unwrap();
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);
    let first = issuer.run(&["sign"], Some(&request)).ok().line();
    issuer.run(&["sign"], Some(&request)).ok();
    let jti = payload_of(&first)["jti"].as_str().unwrap().to_string();
    issuer.run(&["revoke", "--pass", &jti], None).ok();
    let log = issuer.dir.path().join("audit/audit.jsonl");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);

    // Switch the config to the database (keeping audit_log: where `db import` reads).
    std::fs::write(&issuer.config, &with_store).unwrap();
    issuer.run(&["db", "migrate"], None).ok();

    // A copy with one record edited is refused as a whole: nothing is imported.
    let bad = issuer.dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        bad.join("audit.jsonl"),
        text.replacen("alice@corp", "mallory@corp", 1),
    )
    .unwrap();
    std::fs::copy(
        log.with_extension("jsonl.checkpoint"),
        bad.join("audit.jsonl.checkpoint"),
    )
    .unwrap();
    let r = issuer.run(
        &[
            "db",
            "import",
            "--audit-log",
            bad.join("audit.jsonl").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stderr.contains("does not follow"), "{r:?}");
    assert_eq!(
        issuer.pg.count("SELECT count(*) FROM hwpass_audit_entries"),
        0
    );

    let done = issuer.run(&["db", "import", "--json"], None).ok().json();
    assert_eq!(done["records"], 3, "{done}");
    assert_eq!(done["checkpoint"], 3, "{done}");
    assert_eq!(
        (done["passes"].as_u64(), done["seq"].as_u64()),
        (Some(1), Some(1))
    );
    let v = issuer.verify();
    assert_eq!(
        (v["records"].as_u64(), v["checkpoint"]["size"].as_u64()),
        (Some(3), Some(3))
    );

    // The database continues the same chain; the revocation came along.
    issuer.run(&["sign"], Some(&request)).ok();
    let v = issuer.verify();
    assert_eq!(
        (v["records"].as_u64(), v["checkpoint"]["size"].as_u64()),
        (Some(4), Some(4))
    );
    let list = issuer.run(&["denylist"], None).ok().line();
    assert_eq!(payload_of(&list)["passes"][0]["jti"], jti.as_str());
    let r = issuer
        .run(&["revoke", "--pass", &jti, "--json"], None)
        .ok()
        .json();
    assert_eq!(r["already"], true, "{r}");

    let again = issuer.run(&["db", "import"], None);
    assert_eq!(again.code, 11, "{again:?}");
    assert!(again.stderr.contains("already holds"), "{again:?}");
    assert!(
        again.stderr.contains("import only into a new database"),
        "{again:?}"
    );
}

/// `pg_locks`: the backend holding the checkpoint leader's advisory lock
/// (0x6877_7061_0000_0001: classid 0x68777061, objid 1), if any.
fn leader_pid(pg: &Postgres) -> Option<i64> {
    let r = pg.sql(
        "hwpass",
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid = 1752658017 AND objid = 1 AND objsubid = 1",
    );
    let pids: Vec<i64> = r
        .stdout
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(pids.len() <= 1, "one leader at most: {pids:?}");
    pids.first().copied()
}

/// What a client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Pass ids of the passes received (201).
    passes: Vec<String>,
    /// Error answers: status, content type, body.
    errors: Vec<(u16, String, String)>,
    /// Requests that got no answer: the replica's address, and why.
    unanswered: Vec<(String, String)>,
}

#[test]
fn pg_three_replicas_lose_nothing_when_the_leader_is_killed_and_the_database_restarts() {
    // One token behind `p11-kit server` (a network HSM's shape), one database, three replicas.
    let mut issuer = PgIssuer::new(Kind::P11Kit);
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let request = d.request("load@corp", &[]);
    let caps = "max_connections_per_ip = 256\nmax_requests_per_ip = 256\n";
    // The first replica leads the checkpoints before the others start.
    let mut replicas = vec![Some(issuer.replica(caps))];
    assert!(
        poll(Duration::from_secs(20), || leader_pid(&issuer.pg).is_some()),
        "the first replica takes the checkpoint leader's lock"
    );
    let first_leader = leader_pid(&issuer.pg);
    replicas.push(Some(issuer.replica(caps)));
    replicas.push(Some(issuer.replica(caps)));
    let token = issuer.token.clone().unwrap();
    let urls: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        replicas
            .iter()
            .map(|r| r.as_ref().unwrap().url.clone())
            .collect(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let turn = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (urls, stop, seen, turn) = (urls.clone(), stop.clone(), seen.clone(), turn.clone());
            let body = sign_body(&request, Some("1d"));
            let auth = format!("Bearer {token}");
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                while !stop.load(Ordering::SeqCst) {
                    let i = turn.fetch_add(1, Ordering::SeqCst) % 3;
                    let url = urls.lock().unwrap()[i].clone();
                    let r = agent
                        .post(&format!("{url}/v1/passes"))
                        .set("Content-Type", "application/json")
                        .set("Authorization", &auth)
                        .send_string(&body);
                    let mut seen = seen.lock().unwrap();
                    match r {
                        Err(ureq::Error::Transport(t)) => {
                            seen.unanswered.push((url, t.to_string()));
                        }
                        other => {
                            let (status, kind, text) = answer(other);
                            if status == 201 {
                                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                                seen.passes.push(v["jti"].as_str().unwrap().to_string());
                            } else {
                                seen.errors.push((status, kind, text));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let passes = |seen: &Mutex<Seen>| seen.lock().unwrap().passes.len();
    let wait_for = |n: usize, what: &str| {
        assert!(
            poll(Duration::from_secs(90), || passes(&seen) >= n),
            "{what}: only {} passes",
            passes(&seen)
        );
    };

    wait_for(150, "before the kill");
    // SIGKILL the leader mid-load; another replica takes the lock over.
    let killed = replicas[0].take().unwrap();
    let killed_url = killed.url.clone();
    std::process::Command::new("kill")
        .args(["-KILL", &killed.pid().to_string()])
        .status()
        .unwrap();
    drop(killed);
    assert!(
        poll(Duration::from_secs(20), || {
            leader_pid(&issuer.pg).is_some_and(|p| Some(p) != first_leader)
        }),
        "another replica takes the checkpoint leader's lock over"
    );
    let restarted = issuer.replica(caps);
    urls.lock().unwrap()[0] = restarted.url.clone();
    replicas[0] = Some(restarted);
    let at_kill = passes(&seen);
    wait_for(at_kill + 150, "after the replica restarted");

    // PostgreSQL crashes (immediate stop: recovery from the WAL) and comes back.
    let before_crash = passes(&seen);
    let errors_before_crash = seen.lock().unwrap().errors.len();
    issuer.pg.restart();
    wait_for(before_crash + 150, "after PostgreSQL restarted");
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // The leader covers everything the replicas appended.
    let mut v = serde_json::Value::Null;
    let covered = poll(Duration::from_secs(30), || {
        v = issuer.verify();
        v["uncovered"] == 0
    });
    assert!(covered, "a checkpoint covers every entry: {v}");
    let records = v["records"].as_i64().unwrap();
    assert_eq!(v["checkpoint"]["size"].as_i64(), Some(records), "{v}");

    // Every pass a client received has exactly one record; positions 0..n, no gap.
    let in_db: HashMap<String, i64> = issuer
        .pg
        .sql(
            "hwpass",
            "SELECT jti || ' ' || count(*) FROM hwpass_audit_entries WHERE jti IS NOT NULL GROUP BY jti",
        )
        .stdout
        .lines()
        .map(|l| {
            let (jti, n) = l.split_once(' ').unwrap();
            (jti.to_string(), n.parse().unwrap())
        })
        .collect();
    let mut received = std::collections::HashSet::new();
    for jti in &seen.passes {
        assert!(received.insert(jti.clone()), "pass {jti} handed out twice");
        assert_eq!(
            in_db.get(jti),
            Some(&1),
            "pass {jti} has exactly one record"
        );
    }
    assert!(in_db.values().all(|n| *n == 1));
    assert_eq!(
        issuer.pg.count(
            "SELECT count(*) FROM hwpass_audit_entries WHERE position >= 0 AND position < \
             (SELECT size FROM hwpass_audit_head)"
        ),
        records,
        "positions 0 … n-1, each once"
    );
    assert!(records as usize >= seen.passes.len());

    // Clients saw passes or clean 503 problem documents; only the killed replica's address
    // went unanswered.
    for (status, kind, body) in &seen.errors {
        assert_eq!(
            (*status, kind.as_str()),
            (503, "application/problem+json"),
            "{body}"
        );
        let p: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(p["type"], "urn:hwpass:problem:audit", "{body}");
    }
    for (url, why) in &seen.unanswered {
        assert_eq!(
            url, &killed_url,
            "only the killed replica left requests unanswered: {why}"
        );
    }
    assert!(
        seen.errors.len() > errors_before_crash,
        "the database outage was seen by clients (as 503s)"
    );
    let mut logs = String::new();
    for r in replicas.into_iter().flatten() {
        logs.push_str(&r.stop().1);
    }
    assert!(!logs.contains("panicked"), "no replica panicked:\n{logs}");
    eprintln!(
        "replicas: {} passes, {} records, {} answers 503, {} unanswered (killed replica)",
        seen.passes.len(),
        records,
        seen.errors.len(),
        seen.unanswered.len()
    );
}

/// GET /v1/denylist with optional If-None-Match: status, ETag, body.
fn get_denylist(url: &str, etag: Option<&str>) -> (u16, String, String) {
    let agent = ureq::AgentBuilder::new().build();
    let mut req = agent.get(&format!("{url}/v1/denylist"));
    if let Some(e) = etag {
        req = req.set("If-None-Match", e);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let tag = resp.header("ETag").unwrap_or_default().to_string();
    (resp.status(), tag, resp.into_string().unwrap())
}

#[test]
fn pg_revocations_through_different_replicas_only_raise_the_sequence_and_reach_every_replica() {
    let mut issuer = PgIssuer::new(Kind::P11Kit);
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);
    let replicas: Vec<Server> = (0..3).map(|_| issuer.replica("")).collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let issued: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            let (status, _, body) = replicas[i % 3].post(
                "/v1/passes",
                Some(&replicas[i % 3].bearer()),
                &sign_body(&request, None),
            );
            assert_eq!(status, 201, "{body}");
            serde_json::from_str(&body).unwrap()
        })
        .collect();
    let jtis: Vec<String> = issued
        .iter()
        .map(|v| v["jti"].as_str().unwrap().to_string())
        .collect();
    d.install(issued[5]["pass"].as_str().unwrap(), NOW).ok();
    assert_eq!(d.check(NOW + 60).0, 0);
    let (status, etag0, first) = get_denylist(&urls[0], None);
    assert_eq!(status, 200);
    let base = payload_of(&first)["seq"].as_u64().unwrap();

    // Every replica's published number, read while the revocations run: it never goes down.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (urls, done) = (urls.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = vec![0u64; urls.len()];
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) || reads < 3 {
                for (i, url) in urls.iter().enumerate() {
                    let (status, _, list) = get_denylist(url, None);
                    assert_eq!(status, 200, "{list}");
                    let seq = payload_of(&list)["seq"].as_u64().unwrap();
                    assert!(
                        seq >= last[i],
                        "replica {i} served #{seq} after #{}",
                        last[i]
                    );
                    last[i] = seq;
                }
                reads += 1;
            }
            reads
        })
    };
    let revokers: Vec<_> = jtis
        .iter()
        .enumerate()
        .map(|(i, jti)| {
            let (url, auth) = (urls[i % 3].clone(), replicas[i % 3].bearer());
            let body = serde_json::json!({ "pass": jti, "reason": "lost" }).to_string();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let (status, _, text) = answer(
                    agent
                        .post(&format!("{url}/v1/revocations"))
                        .set("Content-Type", "application/json")
                        .set("Authorization", &auth)
                        .send_string(&body),
                );
                assert_eq!(status, 201, "{text}");
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(v["audit_error"].is_null(), "{text}");
                v["seq"].as_u64().unwrap()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = revokers.into_iter().map(|t| t.join().unwrap()).collect();
    let answered = Instant::now();
    seqs.sort();
    assert_eq!(
        seqs,
        (base + 1..=base + 12).collect::<Vec<_>>(),
        "each revocation raised the number by one, through whichever replica"
    );
    done.store(true, Ordering::SeqCst);
    assert!(watcher.join().unwrap() >= 3);

    // Within 10 s every replica serves one list carrying all of them, under one ETag.
    let mut lists = Vec::new();
    for url in &urls {
        let mut got = (0, String::new(), String::new());
        let ok = poll(
            Duration::from_secs(10).saturating_sub(answered.elapsed()),
            || {
                got = get_denylist(url, None);
                let p = payload_of(&got.2);
                p["seq"] == base + 12 && p["passes"].as_array().is_some_and(|a| a.len() == 12)
            },
        );
        assert!(ok, "{url} serves the new list within 10 s: {}", got.2);
        lists.push(got);
    }
    assert!(
        lists.iter().all(|l| l.1 == lists[0].1 && l.2 == lists[0].2),
        "{lists:?}"
    );
    assert_ne!(lists[0].1, etag0, "a new list has a new ETag");
    for url in &urls {
        let (status, tag, body) = get_denylist(url, Some(&lists[0].1));
        assert_eq!((status, body.as_str()), (304, ""), "{url}");
        assert_eq!(tag, lists[0].1);
        let (status, _, _) = get_denylist(url, Some(&etag0));
        assert_eq!(status, 200, "an old ETag gets the new list");
    }
    // The list is one the desktops take: it revokes a pass installed there.
    let file = issuer.dir.path().join("deny.jwt");
    std::fs::write(&file, &lists[0].2).unwrap();
    d.run(
        &["refresh", "--file", file.to_str().unwrap()],
        None,
        NOW + 60,
    )
    .ok();
    assert_eq!(d.check(NOW + 60).0, 8, "revoked");
    let v = issuer.verify();
    assert_eq!(v["records"], 24, "12 passes and 12 revocations: {v}");
    let revoked = issuer
        .pg
        .count("SELECT count(*) FROM hwpass_revoked_passes WHERE reason = 'lost'");
    assert_eq!(revoked, 12);
}

#[test]
fn pg_replicas_start_with_a_role_without_ddl_rights_and_on_a_read_only_standby() {
    let mut issuer = PgIssuer::new(Kind::SoftHsm);
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);
    // A role that may read and write rows but create nothing.
    issuer.pg.sql(
        "hwpass",
        &format!(
            "CREATE ROLE hwpass_app LOGIN PASSWORD '{}'; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO hwpass_app; \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            issuer.pg.password
        ),
    );
    issuer.write_config(&issuer.pg.url("hwpass_app"), "");
    let no_ddl = issuer.replica("");
    let (status, _, body) = no_ddl.get("/readyz");
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "INSERT and UPDATE suffice"
    );
    let (status, _, body) = no_ddl.post(
        "/v1/passes",
        Some(&no_ddl.bearer()),
        &sign_body(&request, None),
    );
    assert_eq!(status, 201, "signs without DDL rights: {body}");
    let jti = serde_json::from_str::<serde_json::Value>(&body).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, body) = no_ddl.post(
        "/v1/revocations",
        Some(&no_ddl.bearer()),
        &serde_json::json!({ "pass": jti }).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _, list) = no_ddl.get("/v1/denylist");
    assert_eq!(status, 200, "{list}");
    let seq = payload_of(&list)["seq"].as_u64().unwrap();
    let (code, log) = no_ddl.stop();
    assert_eq!(code, 0, "{log}");
    // `db migrate` with that role: nothing to do at this version, and nothing it could do.
    let m = issuer.run(&["db", "migrate", "--json"], None).ok().json();
    assert_eq!((m["from"].as_i64(), m["to"].as_i64()), (Some(1), Some(1)));
    issuer
        .pg
        .sql("hwpass", "UPDATE hwpass_schema SET version = 0");
    let r = issuer.run(&["db", "migrate"], None);
    assert_eq!(r.code, 11, "{r:?}");
    assert!(
        r.stderr.contains("SQLSTATE 42"),
        "refused by PostgreSQL: {r:?}"
    );
    issuer
        .pg
        .sql("hwpass", "UPDATE hwpass_schema SET version = 1");

    // A hot standby of the database: a replica on it starts and serves what needs no write.
    let standby = Postgres::standby_of(&issuer.pg);
    let caught_up = poll(Duration::from_secs(20), || {
        standby.count("SELECT count(*) FROM hwpass_deny_lists") >= 1
            && standby.count("SELECT count(*) FROM hwpass_audit_checkpoints WHERE size = 2") == 1
    });
    assert!(caught_up, "the standby replays the primary's writes");
    issuer.write_config(&standby.url("hwpass"), "");
    let reader = issuer.replica("");
    let (status, _, body) = reader.get("/v1/jwks");
    assert_eq!(status, 200, "{body}");
    let (status, _, served) = reader.get("/v1/denylist");
    assert_eq!(status, 200, "{served}");
    assert_eq!(payload_of(&served)["seq"].as_u64(), Some(seq));
    assert_eq!(payload_of(&served)["passes"][0]["jti"], jti.as_str());
    let (status, _, body) = answer(
        reader
            .agent()
            .get(&format!("{}/v1/issuances", reader.url))
            .set("Authorization", &reader.bearer())
            .call(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&jti), "{body}");
    // Not ready to issue, and says why.
    let (status, kind, body) = reader.get("/readyz");
    assert_eq!(
        (status, kind.as_str()),
        (503, "application/problem+json"),
        "{body}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"],
        "audit",
        "{body}"
    );
    // Writes are refused cleanly: 503 problem documents, never a pass.
    let (status, kind, body) = reader.post(
        "/v1/passes",
        Some(&reader.bearer()),
        &sign_body(&request, None),
    );
    assert_eq!(
        (status, kind.as_str()),
        (503, "application/problem+json"),
        "{body}"
    );
    let (status, kind, body) = reader.post(
        "/v1/revocations",
        Some(&reader.bearer()),
        &serde_json::json!({ "pass": jti, "reason": "again" }).to_string(),
    );
    // Already revoked: answered from the register without a write.
    assert_eq!((status, kind.as_str()), (200, "application/json"), "{body}");
    let (code, log) = reader.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains("checkpoint failed"),
        "a standby takes no part in checkpoints: {log}"
    );
    // The CLI reads there too.
    let v = issuer.verify();
    assert_eq!(v["records"], 2, "{v}");
}

#[test]
fn pg_an_edited_entry_found_by_the_checkpoint_signer_stops_every_replica_until_sealed() {
    // Checkpoints once an hour: entries the replica appends stay uncovered for the test.
    let mut issuer = PgIssuer::with_store(Kind::SoftHsm, "checkpoint_interval = \"1h\"", "hwpass");
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let request = d.request("alice@corp", &[]);
    let a = issuer.replica("");
    let b = issuer.replica("");
    // The leader has taken its lock (and made its first round, on an empty log); its next
    // round is an hour away.
    assert!(poll(Duration::from_secs(20), || leader_pid(&issuer.pg).is_some()));
    let sign = |r: &Server| r.post("/v1/passes", Some(&r.bearer()), &sign_body(&request, None));
    assert_eq!(sign(&a).0, 201);
    assert_eq!(sign(&b).0, 201);
    let v = issuer.verify();
    assert_eq!(v["records"], 2, "{v}");
    assert!(
        v["uncovered"].as_u64() >= Some(1),
        "the last entry is not covered yet: {v}"
    );

    // Someone with access to the database edits an entry no checkpoint covers yet.
    issuer.pg.sql(
        "hwpass",
        "UPDATE hwpass_audit_entries SET line = replace(line, 'alice@corp', 'mallory@corp') WHERE position = 1",
    );
    // The next signer (here the CLI's own append) checks before it signs, and refuses.
    let r = issuer.run(&["sign"], Some(&request));
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains("do not match") || r.stderr.contains("does not follow"),
        "{r:?}"
    );
    // Every replica now refuses to sign, with a clean 503.
    for r in [&a, &b] {
        let (status, kind, body) = sign(r);
        assert_eq!(
            (status, kind.as_str()),
            (503, "application/problem+json"),
            "{body}"
        );
    }
    let r = issuer.run(&["audit", "verify"], None);
    assert_eq!(r.code, 11, "{r:?}");
    // Put right (from a backup, say): verify names the stop, seal resumes appends.
    issuer.pg.sql(
        "hwpass",
        "UPDATE hwpass_audit_entries SET line = replace(line, 'mallory@corp', 'alice@corp') WHERE position = 1",
    );
    let r = issuer.run(&["audit", "verify"], None);
    assert_eq!(r.code, 11, "{r:?}");
    assert!(r.stderr.contains("audit log stopped"), "{r:?}");
    assert!(r.stderr.contains("audit seal"), "{r:?}");
    issuer.run(&["audit", "seal"], None).ok();
    assert_eq!(sign(&a).0, 201);
    assert_eq!(sign(&b).0, 201);
    let v = issuer.verify();
    assert_eq!(
        v["records"], 5,
        "two, the CLI's refused pass's record, two more: {v}"
    );
}

/// Signs in through `server`'s login form with the browser state of `page` (another replica's
/// page: its login cookie and CSRF token); returns the session cookie.
fn login_across(page: &Server, server: &Server) -> String {
    let first = page.agent().get(&format!("{}/", page.url)).call().unwrap();
    let visitor = crate::service::cookie_in(&first, "hwpass_login");
    let csrf = crate::service::csrf_in(&first.into_string().unwrap());
    let ok = server
        .agent()
        .post(&format!("{}/login", server.url))
        .set("Cookie", &visitor)
        .send_form(&[("csrf", &csrf), ("token", &server.token)])
        .unwrap();
    assert_eq!(ok.status(), 303);
    crate::service::cookie_in(&ok, "hwpass_session")
}

/// The home page through `server` with `cookie`: its CSRF token when signed in.
fn home(server: &Server, cookie: &str) -> Option<String> {
    let page = server
        .agent()
        .get(&format!("{}/", server.url))
        .set("Cookie", cookie)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    page.contains("Recent issuances")
        .then(|| crate::service::csrf_in(&page))
}

#[test]
fn pg_a_person_signed_in_through_one_replica_is_signed_in_through_the_others() {
    let mut issuer = PgIssuer::new(Kind::P11Kit);
    issuer.setup();
    let (a, b) = (issuer.replica(""), issuer.replica(""));

    // A's login form, posted to B: the replicas make and check CSRF tokens with one key.
    let session = login_across(&a, &b);
    let sid = session.split_once('=').unwrap().1.to_string();
    assert!(home(&b, &session).is_some(), "signed in through B");
    let csrf = home(&a, &session).expect("and through A, with the same session");
    // The database holds the session under the hash of its id, never the id.
    assert_eq!(
        issuer.pg.count("SELECT count(*) FROM hwpass_web_sessions"),
        1
    );
    assert_eq!(
        issuer.pg.count(&format!(
            "SELECT count(*) FROM hwpass_web_sessions WHERE data LIKE '%{sid}%' OR id_sha256 = '{sid}'"
        )),
        0
    );

    // Signing out through B (with A's page's token) ends it for A too.
    let out = b
        .agent()
        .post(&format!("{}/logout", b.url))
        .set("Cookie", &session)
        .send_form(&[("csrf", &csrf)])
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(home(&a, &session).is_none(), "signed out everywhere");
    assert_eq!(
        issuer.pg.count("SELECT count(*) FROM hwpass_web_sessions"),
        0
    );
}

#[test]
fn pg_over_tls_checks_the_servers_certificate_against_the_configured_ca() {
    let mut issuer = PgIssuer::new(Kind::SoftHsm);
    let ca = issuer.pg.require_tls();
    let url = issuer.pg.url("hwpass");

    // The server refuses connections without TLS, so a config without a CA cannot reach it.
    let plain = issuer.run(&["db", "migrate"], None);
    assert_ne!(plain.code, 0, "{plain:?}");
    assert!(
        plain.stderr.contains("no encryption"),
        "PostgreSQL's refusal is shown: {plain:?}"
    );
    // A host on the network without a CA: refused unless the URL itself accepts plaintext.
    issuer.write_config("postgresql://hwpass@db.invalid:5432/hwpass", "");
    let remote = issuer.run(&["db", "migrate"], None);
    assert_eq!(remote.code, 1, "{remote:?}");
    assert!(
        remote.stderr.contains("no [store] ca_file") && remote.stderr.contains("sslmode=disable"),
        "{remote:?}"
    );
    issuer.write_config(
        "postgresql://hwpass@db.invalid:5432/hwpass?sslmode=disable",
        "",
    );
    let accepted = issuer.run(&["db", "migrate"], None);
    assert!(
        accepted.code != 0 && !accepted.stderr.contains("ca_file"),
        "plaintext accepted when asked for; the host is then not found: {accepted:?}"
    );
    // sslmode=require without a CA to check the server against is refused before connecting.
    issuer.write_config(&format!("{url}?sslmode=require"), "");
    let no_ca = issuer.run(&["db", "migrate"], None);
    assert_eq!(no_ca.code, 1, "{no_ca:?}");
    assert!(no_ca.stderr.contains("[store] ca_file"), "{no_ca:?}");
    // A CA that did not sign the server's certificate: refused by the TLS handshake.
    let other = test_ca(issuer.dir.path(), "other-ca", "someone else");
    issuer.write_config(
        &url,
        &format!("ca_file = {:?}", other.display().to_string()),
    );
    let wrong = issuer.run(&["db", "migrate"], None);
    assert_ne!(wrong.code, 0, "{wrong:?}");
    assert!(
        wrong
            .stderr
            .contains("invalid peer certificate: UnknownIssuer"),
        "the certificate is named: {wrong:?}"
    );
    assert_eq!(
        issuer
            .pg
            .count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'hwpass_%'"),
        0,
        "nothing reached the database"
    );

    // The right CA: migrate, and a replica that signs over TLS.
    issuer.write_config(&url, &format!("ca_file = {:?}", ca.display().to_string()));
    let trust = issuer.setup();
    let replica = issuer.replica("");
    let request = Desktop::enrolled(&trust).request("alice@corp", &[]);
    let (status, _, body) = replica.post(
        "/v1/passes",
        Some(&replica.bearer()),
        &sign_body(&request, None),
    );
    assert_eq!(status, 201, "{body}");
    let tls = issuer.pg.count(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'hwpass-issuer' AND s.ssl",
    );
    let plain = issuer.pg.count(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'hwpass-issuer' AND NOT s.ssl",
    );
    assert!(
        tls >= 1 && plain == 0,
        "{tls} TLS and {plain} plain connections"
    );
    let check = issuer.run(&["config", "check", "--json"], None);
    let check: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert!(
        check["effective"]["store"]
            .as_str()
            .unwrap()
            .ends_with("(TLS, the server checked against [store] ca_file)"),
        "{check}"
    );
    assert_eq!(
        issuer
            .pg
            .count("SELECT count(*) FROM hwpass_audit_entries WHERE jti IS NOT NULL"),
        1
    );
}

#[test]
fn pg_readyz_with_a_hung_hsm_answers_at_once_while_an_earlier_check_still_waits() {
    let mut issuer = PgIssuer::new(Kind::P11Kit);
    issuer.setup();
    let replica = issuer.replica("");
    assert_eq!(replica.get("/readyz").0, 200);
    // The network HSM hangs: its server process stopped, calls to it wait.
    let pid = issuer.module.pid_of("p11-kit server").unwrap().to_string();
    // The server and the process it forked for each client connection.
    let signal = |sig: &str| {
        let mut children = std::process::Command::new("pkill");
        children.args([sig, "-P", &pid]);
        run(children, None);
        let mut cmd = std::process::Command::new("kill");
        cmd.args([sig, &pid]);
        assert_eq!(run(cmd, None).code, 0);
    };
    signal("-STOP");
    let (status, _, first) = replica.get("/readyz");
    let (again, _, second) = replica.get("/readyz");
    signal("-CONT");
    assert_eq!(status, 503, "{first}");
    assert!(first.contains("did not answer within 3 s"), "{first}");
    assert_eq!(again, 503, "{second}");
    assert!(
        second.contains("an earlier readiness check is still waiting for the HSM"),
        "no second thread waits for the hung HSM: {second}"
    );
    assert!(
        poll(Duration::from_secs(10), || replica.get("/readyz").0 == 200),
        "ready again once the HSM answers"
    );
}
