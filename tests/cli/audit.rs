//! The audit log under attack: every cut, edit, forgery and reorder up to the last signed
//! checkpoint is caught by `audit verify`, and signing stops (exit 11, no pass) on a log that
//! does not verify, while revocation goes on. Checkpoints checked by independent tools
//! (OpenSSL, OpenSC, a Python RFC 6962 root).

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::common::*;
use hwpass::issuer::{AuditEntry, AuditTrust, Notary};
use hwpass::{MemoryKey, Signer as _};

/// The log's name in checkpoints, made from the test config's `issuer = "test-issuer"`.
const ORIGIN: &str = "test-issuer/hwpass-audit";

/// An issuer whose log holds signed passes, and a desktop that makes requests.
struct Logged {
    issuer: Issuer,
    request: String,
}

impl Logged {
    /// Signs `batches` batches of `per` passes (one checkpoint per batch); returns the checkpoint
    /// file after each.
    fn new(batches: usize, per: usize) -> (Self, Vec<Vec<u8>>) {
        let issuer = Issuer::new();
        let trust = issuer.setup();
        let desk = Desktop::enrolled(&trust);
        let request = desk.request("alice@corp", &[]);
        let logged = Self { issuer, request };
        let mut checkpoints = Vec::new();
        for _ in 0..batches {
            let input = vec![logged.request.as_str(); per].join("\n");
            let out = logged.issuer.sign(&input, NOW, &["--batch"]).ok();
            assert_eq!(out.stdout.lines().filter(|l| !l.is_empty()).count(), per);
            // (Read leniently, so that this fixture also runs against a build without
            // checkpoints, to see the tests fail there.)
            checkpoints.push(std::fs::read(logged.checkpoint()).unwrap_or_default());
        }
        (logged, checkpoints)
    }

    fn log(&self) -> &Path {
        &self.issuer.audit
    }

    fn checkpoint(&self) -> PathBuf {
        PathBuf::from(format!("{}.checkpoint", self.issuer.audit.display()))
    }

    fn lines(&self) -> Vec<Vec<u8>> {
        let text = std::fs::read(self.log()).unwrap();
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn write_lines(&self, lines: &[Vec<u8>]) {
        let mut text = Vec::new();
        for l in lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        std::fs::write(self.log(), text).unwrap();
    }

    fn verify(&self) -> Run {
        self.issuer.run(&["audit", "verify"], None)
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Recomputes every `prev`, as a forger who knows the format would.
fn rechain(lines: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut prev = hwpass::issuer::GENESIS.to_string();
    lines
        .iter()
        .map(|l| {
            let mut e = AuditEntry::parse(l).unwrap();
            e.set_prev(prev.clone());
            let out = e.canonical();
            prev = sha256_hex(&out);
            out
        })
        .collect()
}

/// A record that looks like the last one, for another pass.
fn forged_after(last: &[u8]) -> Vec<u8> {
    let mut e = AuditEntry::parse(last).unwrap();
    if let AuditEntry::Issued(r) = &mut e {
        r.jti = "forged-pass-id-0000000000".into();
        r.sub = "mallory@corp".into();
    }
    e.set_prev(sha256_hex(last));
    e.canonical()
}

/// RFC 6962 §2.1 Merkle tree hash, written here from the RFC (independent of hwpass's code).
fn mth(leaves: &[Vec<u8>]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => Sha256::new()
            .chain_update([0u8])
            .chain_update(&leaves[0])
            .finalize()
            .into(),
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            Sha256::new()
                .chain_update([1u8])
                .chain_update(mth(&leaves[..k]))
                .chain_update(mth(&leaves[k..]))
                .finalize()
                .into()
        }
    }
}

/// RFC 6962 §2.1.1 audit path of leaf `m`, leaf to root.
fn audit_path(m: usize, leaves: &[Vec<u8>]) -> Vec<[u8; 32]> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
    if m < k {
        let mut p = audit_path(m, &leaves[..k]);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = audit_path(m - k, &leaves[k..]);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// A checkpoint file for `lines`, signed by `key` (a forger's own key).
fn forged_checkpoint(lines: &[Vec<u8>], key: &MemoryKey) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let trust = AuditTrust::new(ORIGIN, [*key.verifying_key()]).unwrap();
    let (_, note) = Notary::new(&trust, key)
        .sign(lines.len() as u64, mth(lines), NOW)
        .unwrap();
    let offset: usize = lines.iter().map(|l| l.len() + 1).sum();
    let path: Vec<String> = audit_path(lines.len() - 1, lines)
        .iter()
        .map(|h| b64.encode(h))
        .collect();
    serde_json::json!({"v": 1, "checkpoint": {"note": note, "offset": offset, "path": path}})
        .to_string()
}

#[test]
fn audit_verify_catches_every_cut_edit_forgery_and_reorder_and_signing_stops() {
    let (logged, checkpoints) = Logged::new(2, 3);
    let pristine_log = std::fs::read(logged.log()).unwrap();
    let pristine_cp = std::fs::read(logged.checkpoint()).unwrap_or_default();
    let ok = logged.verify().ok();
    assert!(ok.stdout.contains("6 records"), "{ok:?}");
    assert!(ok.stdout.contains("checkpoint: 6 records"), "{ok:?}");

    type Tamper = fn(&Logged, &[Vec<u8>], &[Vec<u8>]);
    // Name, tampering, what `audit verify` says. `sign` checks the end of the log against the
    // last checkpoint before each append: every case below touches the end (a forger who
    // recomputes hashes changes the last record's `prev`), except a reorder in the middle that
    // breaks the chain, which only the whole-log check finds (`audit verify`, and the service
    // when it starts or after a failure).
    let cases: &[(&str, Tamper, &str)] = &[
        (
            "last record edited",
            |l, lines, _| {
                let mut lines = lines.to_vec();
                let last = lines.len() - 1;
                let mut e = AuditEntry::parse(&lines[last]).unwrap();
                if let AuditEntry::Issued(r) = &mut e {
                    r.sub = "mallory@corp".into();
                }
                lines[last] = e.canonical();
                l.write_lines(&lines);
            },
            "do not match the signed checkpoint",
        ),
        (
            "middle record deleted, hashes recomputed",
            |l, lines, _| {
                let mut lines = lines.to_vec();
                lines.remove(2);
                l.write_lines(&rechain(&lines));
            },
            "covers 6 records but the log has only 5",
        ),
        (
            "middle record deleted and one forged at the end, hashes recomputed",
            |l, lines, _| {
                let mut lines = lines.to_vec();
                lines.remove(2);
                let forged = forged_after(lines.last().unwrap());
                lines.push(forged);
                l.write_lines(&rechain(&lines));
            },
            "do not match the signed checkpoint",
        ),
        (
            "forged record appended",
            |l, lines, _| {
                let mut lines = lines.to_vec();
                lines.push(forged_after(lines.last().unwrap()));
                l.write_lines(&lines);
            },
            "1 line(s) after the 6 records of the last checkpoint are not covered",
        ),
        (
            "forged record appended with a forged checkpoint",
            |l, lines, _| {
                let mut lines = lines.to_vec();
                lines.push(forged_after(lines.last().unwrap()));
                l.write_lines(&lines);
                let forger = MemoryKey::generate();
                std::fs::write(l.checkpoint(), forged_checkpoint(&lines, &forger)).unwrap();
            },
            "no signature by a trusted issuer key",
        ),
        (
            "truncated by one byte",
            |l, _, _| {
                let text = std::fs::read(l.log()).unwrap();
                std::fs::write(l.log(), &text[..text.len() - 1]).unwrap();
            },
            "covers 6 records but the log has only 5",
        ),
        (
            "last record cut off",
            |l, lines, _| l.write_lines(&lines[..lines.len() - 1]),
            "covers 6 records but the log has only 5",
        ),
        (
            "records reordered",
            |l, lines, _| {
                let mut lines = lines.to_vec();
                lines.swap(1, 2);
                l.write_lines(&lines);
            },
            "line 2 does not follow line 1",
        ),
        (
            "records reordered, hashes recomputed",
            |l, lines, _| {
                let mut lines = lines.to_vec();
                lines.swap(1, 2);
                l.write_lines(&rechain(&lines));
            },
            "do not match the signed checkpoint",
        ),
        (
            "checkpoint file deleted",
            |l, _, _| std::fs::remove_file(l.checkpoint()).unwrap(),
            "6 records but no checkpoint",
        ),
        (
            "checkpoint file rolled back to an older one",
            |l, _, cps| std::fs::write(l.checkpoint(), &cps[0]).unwrap(),
            "3 line(s) after the 3 records of the last checkpoint are not covered",
        ),
        (
            "checkpoint's size edited",
            |l, _, _| {
                let text = std::fs::read_to_string(l.checkpoint()).unwrap();
                std::fs::write(l.checkpoint(), text.replacen("\\n6\\n", "\\n5\\n", 1)).unwrap();
            },
            "signature does not verify",
        ),
    ];
    for (name, tamper, needle) in cases {
        std::fs::write(logged.log(), &pristine_log).unwrap();
        std::fs::write(logged.checkpoint(), &pristine_cp).unwrap();
        let lines = logged.lines();
        tamper(&logged, &lines, &checkpoints);
        let log_before = std::fs::read(logged.log()).unwrap();

        let verify = logged.verify();
        assert_eq!(verify.code, 11, "{name}: {verify:?}");
        assert!(verify.stderr.contains(needle), "{name}: {verify:?}");

        if *name == "records reordered" {
            continue;
        }
        // One failure rule: signing stops, prints nothing, and touches nothing.
        let sign = logged.issuer.sign(&logged.request, NOW, &[]);
        assert_eq!(sign.code, 11, "{name}: {sign:?}");
        assert!(sign.stdout.is_empty(), "{name}: {sign:?}");
        assert!(sign.stderr.contains("hint: "), "{name}: {sign:?}");
        let batch = logged.issuer.sign(&logged.request, NOW, &["--batch"]);
        assert_eq!(batch.code, 11, "{name}: {batch:?}");
        assert!(batch.stdout.trim().is_empty(), "{name}: {batch:?}");
        assert_eq!(
            std::fs::read(logged.log()).unwrap(),
            log_before,
            "{name}: the log is left as it was"
        );
    }
    std::fs::write(logged.log(), &pristine_log).unwrap();
    std::fs::write(logged.checkpoint(), &pristine_cp).unwrap();
    logged.issuer.sign(&logged.request, NOW, &[]).ok();
    assert!(logged.verify().ok().stdout.contains("7 records"));
}

/// Finding 4: `truncate -s -1` used to make the next `sign` delete the last (complete,
/// printed) record as a "torn tail".
#[test]
fn a_record_that_lost_its_newline_is_never_deleted() {
    let (logged, _) = Logged::new(1, 2);
    let last_jti = logged.issuer.audit_lines()[1]["jti"].clone();
    let text = std::fs::read(logged.log()).unwrap();
    std::fs::write(logged.log(), &text[..text.len() - 1]).unwrap();
    let sign = logged.issuer.sign(&logged.request, NOW, &[]);
    assert_eq!(sign.code, 11, "{sign:?}");
    assert!(sign.stdout.is_empty());
    let after = std::fs::read_to_string(logged.log()).unwrap();
    assert_eq!(after.as_bytes(), &text[..text.len() - 1]);
    assert!(
        after.contains(last_jti.as_str().unwrap()),
        "the record is still there"
    );
    // Restoring the newline restores the log.
    std::fs::write(logged.log(), &text).unwrap();
    logged.issuer.sign(&logged.request, NOW, &[]).ok();
    logged.verify().ok();
}

/// What one machine cannot tell: the log and its checkpoint file rolled back together to an
/// earlier consistent state. A checkpoint kept elsewhere catches it.
#[test]
fn a_log_rolled_back_with_its_checkpoint_is_caught_only_against_a_saved_checkpoint() {
    let (logged, checkpoints) = Logged::new(1, 3);
    let early_log = std::fs::read(logged.log()).unwrap();
    let saved = logged.issuer.dir.path().join("saved.checkpoint");
    let later = logged;
    later.issuer.sign(&later.request, NOW, &[]).ok();
    let note = later.issuer.run(&["audit", "checkpoint"], None).ok().stdout;
    assert!(note.starts_with(&format!("{ORIGIN}\n4\n")), "{note}");
    std::fs::write(&saved, &note).unwrap();
    later.verify().ok();
    let ok = later
        .issuer
        .run(
            &["audit", "verify", "--against", saved.to_str().unwrap()],
            None,
        )
        .ok();
    assert!(ok.stdout.contains("extends the saved checkpoint"), "{ok:?}");

    std::fs::write(later.log(), &early_log).unwrap();
    std::fs::write(later.checkpoint(), &checkpoints[0]).unwrap();
    later.verify().ok();
    let caught = later.issuer.run(
        &["audit", "verify", "--against", saved.to_str().unwrap()],
        None,
    );
    assert_eq!(caught.code, 11, "{caught:?}");
    assert!(
        caught
            .stderr
            .contains("covers 4 records but the log has only 3"),
        "{caught:?}"
    );
}

/// Finding 5: with the log damaged, signing stops and revoking goes on, saying that its audit
/// record could not be written; once the log is repaired, revocations are audited.
#[test]
fn a_damaged_log_stops_signing_but_never_revocation() {
    let (logged, _) = Logged::new(1, 2);
    let first_jti = logged.issuer.audit_lines()[0]["jti"]
        .as_str()
        .unwrap()
        .to_string();
    let pristine = std::fs::read(logged.log()).unwrap();
    let mut lines = logged.lines();
    lines[1] = b"{\"v\":1,\"time\":garbage".to_vec();
    logged.write_lines(&lines);

    let sign = logged.issuer.sign(&logged.request, NOW, &[]);
    assert_eq!(sign.code, 11, "{sign:?}");
    assert!(sign.stdout.is_empty());
    let revoke = logged
        .issuer
        .run(&["revoke", "--pass", &first_jti, "--json"], None);
    assert_eq!(revoke.code, 0, "{revoke:?}");
    assert!(
        revoke
            .stderr
            .contains("the revocation is in force, but its audit record could not be written"),
        "{revoke:?}"
    );
    let out = revoke.json();
    assert_eq!(out["seq"], 1);
    assert!(
        out["audit_error"].as_str().unwrap().contains("cut off"),
        "{out}"
    );
    let list = logged.issuer.denylist("list.jwt", NOW);
    assert!(std::fs::read_to_string(list).unwrap().len() > 100);

    // Repaired: the next revocation is in the log, signed into a checkpoint.
    std::fs::write(logged.log(), &pristine).unwrap();
    let second_jti = logged.issuer.audit_lines()[1]["jti"]
        .as_str()
        .unwrap()
        .to_string();
    let revoke = logged
        .issuer
        .run(&["revoke", "--pass", &second_jti, "--reason", "lost"], None)
        .ok();
    assert!(!revoke.stderr.contains("warning"), "{revoke:?}");
    let verify = logged.verify().ok();
    assert!(verify.stdout.contains("3 records"), "{verify:?}");
    let list = logged.issuer.run(&["audit", "list"], None).ok();
    assert!(
        list.stdout
            .contains(&format!("revoked pass {second_jti} (deny list #3) by cli:")),
        "{list:?}"
    );
    let last = logged.issuer.audit_lines().pop().unwrap();
    assert_eq!(
        (
            last["v"].as_i64(),
            last["event"].as_str(),
            last["target"].as_str()
        ),
        (Some(1), Some("revoke"), Some("pass"))
    );
}

/// Finding 7: a register whose sequence number is at u64::MAX used to wrap to deny list #0
/// (release) or panic (debug); now revoking and publishing refuse with a clear error.
#[test]
fn a_register_at_the_highest_sequence_number_is_refused_not_wrapped() {
    let issuer = Issuer::new();
    issuer.setup();
    let register = issuer.audit.with_file_name("revocations.json");
    std::fs::create_dir_all(register.parent().unwrap()).unwrap();
    let text = format!(
        "{{\"v\":1,\"seq\":{},\"kids\":[],\"passes\":[],\"devices\":[]}}",
        u64::MAX
    );
    std::fs::write(&register, &text).unwrap();
    let jkt = "A".repeat(43);
    for args in [
        &["revoke", "--device", jkt.as_str()][..],
        &["denylist", "-o", "/dev/null"][..],
    ] {
        let out = issuer.run(args, None);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("deny list sequence number 18446744073709551615 cannot be raised"),
            "{out:?}"
        );
    }
    assert_eq!(std::fs::read_to_string(&register).unwrap(), text);
}

/// Findings 6 and 7: time arithmetic near the end of 9999 is refused, not signed or wrapped.
#[test]
fn a_pass_that_would_end_after_9999_is_refused_before_it_is_audited() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let late = hwpass::MAX_TIME - 3600;
    let desk = Desktop::enrolled_at(&trust, late);
    let request = desk
        .run(&["request", "--subject", "alice@corp"], None, late)
        .ok()
        .line();
    let out = issuer.sign(&request, late, &[]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(
        out.stderr.contains("would expire after 9999-12-31"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());
    let ok = issuer.sign(&request, late, &["--valid-for", "30m"]).ok();
    assert_eq!(ok.stdout.lines().count(), 1);
    assert_eq!(issuer.audit_lines().len(), 1);
}

/// Item 5: the issuer never signs what a desktop would refuse.
#[test]
fn a_pass_longer_than_a_desktop_accepts_is_refused_before_it_is_audited() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let request = desk.request("alice@corp", &[]);
    let text = std::fs::read_to_string(&issuer.config).unwrap();
    let long = "x".repeat(8000);
    std::fs::write(
        &issuer.config,
        text.replace(
            "audience = \"analytics-desktop\"",
            &format!("audience = \"{long}\""),
        ),
    )
    .unwrap();
    let out = issuer.sign(&request, NOW, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("more than the 8192 a desktop accepts"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());
    assert!(issuer.audit_lines().is_empty());
}

/// Finding 9 (the audit side): records in an old log may hold control, bidirectional and
/// invisible characters; `audit list` shows them escaped, never raw.
#[test]
fn audit_list_never_prints_control_characters_raw() {
    let issuer = Issuer::new();
    issuer.setup();
    let evil = "mallory\u{1b}[2J\r\nFAKE LINE\u{202e}\u{200b}\u{85}";
    let record = serde_json::json!({
        "v": 1, "time": NOW, "jti": "j\u{1b}[31m", "sub": evil, "jkt": "k",
        "kind": "software", "att": "none", "nbf": NOW, "exp": NOW + 60, "kid": "kid",
        "prev": hwpass::issuer::GENESIS,
    });
    // serde_json's own order is alphabetical; write the canonical form hwpass reads.
    let line = AuditEntry::parse(
        &serde_json::to_vec(
            &serde_json::from_value::<hwpass::issuer::AuditRecord>(record).unwrap(),
        )
        .unwrap(),
    )
    .unwrap()
    .canonical();
    std::fs::create_dir_all(issuer.audit.parent().unwrap()).unwrap();
    std::fs::write(&issuer.audit, [line, b"\n".to_vec()].concat()).unwrap();
    for args in [&["audit", "list"][..], &["audit", "list", "--json"][..]] {
        let out = issuer.run(args, None).ok();
        for c in ['\u{1b}', '\r', '\u{202e}', '\u{200b}', '\u{85}'] {
            assert!(!out.stdout.contains(c), "{args:?} printed {c:?}: {out:?}");
        }
        assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
        assert!(out.stdout.contains("FAKE LINE"), "{out:?}");
    }
    let plain = issuer.run(&["audit", "list"], None).ok();
    assert!(
        plain.stdout.contains("mallory\\u{1b}[2J\\u{d}\\u{a}FAKE"),
        "{plain:?}"
    );
}

/// A checkpoint verified with tools that share no code with hwpass: the public key read from
/// the token by OpenSC's pkcs11-tool, the key id by sha256sum, the ECDSA signature by OpenSSL,
/// and the RFC 6962 root by the Merkle tree hash written in this file.
#[test]
fn checkpoints_verify_with_openssl_and_an_independent_merkle_root() {
    require("openssl", "openssl");
    require("pkcs11-tool", "opensc");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (logged, _) = Logged::new(1, 5);
    logged.issuer.sign(&logged.request, NOW, &[]).ok();
    let note = logged
        .issuer
        .run(&["audit", "checkpoint"], None)
        .ok()
        .stdout;

    let (body, sigs) = note.rsplit_once("\n\n").unwrap();
    let body = format!("{body}\n");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], ORIGIN);
    assert_eq!(lines[1], "6");
    assert_eq!(lines[3], "Time: 2027-01-15T08:00:00Z");
    let root = b64.decode(lines[2]).unwrap();
    assert_eq!(
        root,
        mth(&logged.lines()),
        "RFC 6962 root over the log's lines"
    );
    let sig_line = sigs.trim_end_matches('\n');
    assert!(!sig_line.contains('\n'), "one signature");
    let rest = sig_line.strip_prefix("\u{2014} ").unwrap();
    let (name, sig) = rest.split_once(' ').unwrap();
    assert_eq!(name, ORIGIN);
    let blob = b64.decode(sig).unwrap();

    let dir = logged.issuer.dir.path();
    let spki = dir.join("pub.der");
    let out = std::process::Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &logged.issuer.hsm.conf)
        .args(["--module", "/usr/lib/softhsm/libsofthsm2.so"])
        .args([
            "--token-label",
            "hwpass-test",
            "--read-object",
            "--type",
            "pubkey",
        ])
        .args(["--label", "issuer-key", "-o"])
        .arg(&spki)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = Sha256::digest(std::fs::read(&spki).unwrap());
    assert_eq!(blob[..4], id[..4], "key id = SHA-256(SPKI)[:4]");
    std::fs::write(dir.join("body"), &body).unwrap();
    std::fs::write(dir.join("sig.der"), &blob[4..]).unwrap();
    let openssl = |body: &str| {
        std::process::Command::new("openssl")
            .current_dir(dir)
            .args(["dgst", "-sha256", "-keyform", "DER", "-verify", "pub.der"])
            .args(["-signature", "sig.der", body])
            .output()
            .unwrap()
    };
    let ok = openssl("body");
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("Verified OK"),
        "{ok:?}"
    );
    std::fs::write(dir.join("changed"), body.replacen("\n6\n", "\n7\n", 1)).unwrap();
    assert!(!openssl("changed").status.success());

    // The verifier key for C2SP tools: name, key id, 0x02 ‖ SPKI.
    let vkey = logged
        .issuer
        .run(&["audit", "checkpoint", "--vkey"], None)
        .ok()
        .line();
    let mut expect = vec![0x02];
    expect.extend_from_slice(&std::fs::read(&spki).unwrap());
    assert_eq!(
        vkey,
        format!("{ORIGIN}+{}+{}", hex::encode(&id[..4]), b64.encode(expect))
    );
}

/// The service fails closed too: 503 with a problem document while the log does not verify;
/// revocation over HTTP still works and says its audit record is missing.
#[test]
fn the_service_answers_503_while_the_log_does_not_verify() {
    let (logged, _) = Logged::new(1, 2);
    let jti = logged.issuer.audit_lines()[0]["jti"]
        .as_str()
        .unwrap()
        .to_string();
    let server = crate::service::Server::start(&logged.issuer, "");
    let server_token = server.token.clone();
    let body = serde_json::json!({ "request": logged.request }).to_string();
    let (status, _, reply) = server.post("/v1/passes", Some(&server.bearer()), &body);
    assert_eq!(status, 201, "{reply}");

    let text = std::fs::read(logged.log()).unwrap();
    std::fs::write(logged.log(), &text[..text.len() - 1]).unwrap();
    let (status, kind, reply) = server.post("/v1/passes", Some(&server.bearer()), &body);
    assert_eq!(
        (status, kind.as_str()),
        (503, "application/problem+json"),
        "{reply}"
    );
    let problem: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(problem["type"], "urn:hwpass:problem:audit");
    assert!(!reply.contains("eyJ"), "no pass in the answer: {reply}");

    let revoke = serde_json::json!({ "pass": jti }).to_string();
    let (status, _, reply) = server.post("/v1/revocations", Some(&server.bearer()), &revoke);
    assert_eq!(status, 201, "{reply}");
    let out: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(
        out["audit_error"].as_str().unwrap().contains("cut off"),
        "{out}"
    );

    // Repaired: signing goes on without a restart.
    std::fs::write(logged.log(), &text).unwrap();
    let (status, _, reply) = server.post("/v1/passes", Some(&server.bearer()), &body);
    assert_eq!(status, 201, "{reply}");
    drop(server);
    let verify = logged.verify().ok();
    assert!(verify.stdout.contains("4 records"), "{verify:?}");

    // Damage in the middle, where an append does not look: the service verifies the whole log
    // when it starts.
    let mut lines = logged.lines();
    lines.swap(0, 1);
    logged.write_lines(&lines);
    let server = crate::service::Server::spawn_at(&logged.issuer, server_token, NOW);
    let (status, _, reply) = server.post("/v1/passes", Some(&server.bearer()), &body);
    assert_eq!(status, 503, "{reply}");
    // The client is told it is the audit log; what exactly is wrong goes to the issuer's log
    // only (no file contents or parser details in answers).
    assert!(reply.contains("urn:hwpass:problem:audit"), "{reply}");
    let (_, log) = server.stop();
    assert!(log.contains("does not follow"), "{log}");
}

/// A batch never stops or loses output because of one bad line: a request from the year 10000
/// in the middle gets its own refusal; every other line its pass.
#[test]
fn a_batch_with_a_request_from_the_year_10000_signs_every_other_line() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let desk = Desktop::enrolled(&trust);
    let good = desk.request("alice@corp", &[]);
    let claims = hwpass::RequestClaims {
        sub: "future@corp".into(),
        iat: 253_402_300_800,
        kind: hwpass::BindingKind::Software,
        ttl: None,
        dev: None,
        att: None,
        stm: None,
    };
    let future = hwpass::sign_request(&claims, &MemoryKey::generate()).unwrap();
    let input = [good.as_str(), good.as_str(), &future, good.as_str()].join("\n");
    let out = issuer.sign(&input, NOW, &["--batch", "--workers", "1"]);
    assert_eq!(out.code, 9, "a refused line: exit 9 {out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    assert!(lines[2].is_empty());
    assert!(
        [0, 1, 3].iter().all(|&i| lines[i].starts_with("eyJ")),
        "{out:?}"
    );
    assert!(out.stderr.contains("\"line\":3"), "{out:?}");
    assert_eq!(issuer.audit_lines().len(), 3);
}

#[test]
fn a_log_from_before_checkpoints_is_sealed_once_and_then_signing_goes_on() {
    let (logged, _) = Logged::new(1, 2);
    std::fs::remove_file(logged.checkpoint()).unwrap();
    assert_eq!(logged.issuer.sign(&logged.request, NOW, &[]).code, 11);
    let sealed = logged.issuer.run(&["audit", "seal"], None).ok();
    assert!(
        sealed
            .stdout
            .contains("a checkpoint now covers all 2 records"),
        "{sealed:?}"
    );
    logged.issuer.sign(&logged.request, NOW, &[]).ok();
    assert!(logged.verify().ok().stdout.contains("3 records"));
    // Sealing does not cover damage.
    let text = std::fs::read_to_string(logged.log()).unwrap();
    std::fs::write(logged.log(), text.replacen("alice@corp", "mallory@corp", 1)).unwrap();
    assert_eq!(logged.issuer.run(&["audit", "seal"], None).code, 11);
}
