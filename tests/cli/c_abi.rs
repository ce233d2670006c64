//! The C ABI (`capi/`, `libhwpass_c`, header `capi/include/hwpass.h`) driven by a C program
//! compiled with gcc, on the software backend and on swtpm: valid, expired, revoked, another
//! device — the same verdicts as `hwpass check --json`.
//!
//! `ci/test` builds the library first (`cargo build -p hwpass-capi`); without it this test
//! fails, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// The directory cargo put the binaries (and the C library) in.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_hwpass"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The C test program, compiled against the library and header.
struct AbiTest {
    _dir: tempfile::TempDir,
    exe: PathBuf,
}

impl AbiTest {
    fn build() -> Self {
        require("gcc", "gcc");
        let lib = target_dir().join("libhwpass_c.so");
        assert!(
            lib.is_file(),
            "{} is missing: build the C library first with `cargo build -p hwpass-capi` (ci/test does)",
            lib.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let compile = |source: &str, exe: &Path| {
            let out = Command::new("gcc")
                .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(exe)
                .arg(repo().join(source))
                .arg("-I")
                .arg(repo().join("capi/include"))
                .arg("-L")
                .arg(target_dir())
                .arg("-lhwpass_c")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "gcc {source}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // The README's example compiles against the header as it is.
        compile("capi/examples/check.c", &dir.path().join("check"));
        let exe = dir.path().join("abi_test");
        compile("capi/tests/abi_test.c", &exe);
        Self { _dir: dir, exe }
    }

    fn run(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let out = Command::new(&self.exe)
            .args(args)
            .env_clear()
            .env("LD_LIBRARY_PATH", target_dir())
            .env("TSS2_LOG", "all+none")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {stdout} / {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), json)
    }
}

/// Runs every verdict through the C ABI for a desktop `desk` (and `other`, another machine).
fn scenarios(abi: &AbiTest, issuer: &Issuer, desk: &Desktop, other: &Desktop) {
    let dir = desk.state.to_str().unwrap();
    let tcti = desk.tcti.clone().unwrap_or_default();
    let mid = desk.machine_id.to_str().unwrap();
    let t = |now: i64| now.to_string();
    let pass = issuer
        .sign(&desk.request("ann@corp", &[]), NOW, &["--valid-for", "2d"])
        .ok()
        .line();
    // Install through the ABI, wrapped as a mail client would.
    let wrapped: String = pass
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let (code, v) = abi.run(&["install", dir, &t(NOW), &wrapped, &tcti, mid]);
    assert_eq!(code, 0, "{v}");
    // Valid: the same verdict as the binary prints.
    let (code, v) = abi.run(&["check", dir, &t(NOW + 60), &tcti, mid]);
    assert_eq!((code, v["status"].as_str()), (0, Some("valid")), "{v}");
    let (_, cli) = desk.check(NOW + 60);
    assert_eq!(v["subject"], cli["subject"]);
    assert_eq!(v["expires_at"], cli["expires_at"]);
    // Status as JSON.
    let (code, v) = abi.run(&["status", dir, &t(NOW + 60), &tcti, mid]);
    assert_eq!(
        (code, v["pass"]["state"].as_str()),
        (0, Some("valid")),
        "{v}"
    );
    // Revoked, through a deny list from a file.
    let jti = hwpass::decode(&pass).unwrap().payload().unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string();
    issuer.run(&["revoke", "--pass", &jti], None).ok();
    let list = issuer.denylist(&format!("list-{}.jwt", desk.tcti.is_some()), NOW + 120);
    let (code, v) = abi.run(&[
        "refresh",
        dir,
        &t(NOW + 120),
        list.to_str().unwrap(),
        &tcti,
        mid,
    ]);
    assert_eq!(
        (code, v["installed_pass_revoked"].as_bool()),
        (0, Some(true)),
        "{v}"
    );
    let (code, v) = abi.run(&["check", dir, &t(NOW + 180), &tcti, mid]);
    assert_eq!((code, v["status"].as_str()), (8, Some("revoked")), "{v}");
    assert!(
        v["hint"].as_str().unwrap().contains("ask your admin"),
        "{v}"
    );
    // Expired (a fresh pass, then the clock past its expiry).
    let pass = issuer
        .sign(
            &desk.request("ann@corp", &[]),
            NOW + 180,
            &["--valid-for", "1h"],
        )
        .ok()
        .line();
    let (code, v) = abi.run(&["install", dir, &t(NOW + 240), &pass, &tcti, mid]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = abi.run(&["check", dir, &t(NOW + 3 * 3600), &tcti, mid]);
    assert_eq!((code, v["status"].as_str()), (5, Some("expired")), "{v}");
    // Another device: the pass installed elsewhere.
    let odir = other.state.to_str().unwrap();
    let otcti = other.tcti.clone().unwrap_or_default();
    let omid = other.machine_id.to_str().unwrap();
    let (code, v) = abi.run(&["install", odir, &t(NOW + 240), &pass, &otcti, omid]);
    assert_eq!(
        (code, v["status"].as_str()),
        (6, Some("wrong-device")),
        "{v}"
    );
}

#[test]
fn the_c_abi_gives_the_same_verdicts_on_software_and_tpm() {
    let abi = AbiTest::build();
    // A null where a pass is required: a usage error (2), no crash, no verdict.
    let (code, v) = abi.run(&["null"]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["verdict"], false);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    let issuer = Issuer::new();
    let trust = issuer.setup();
    scenarios(
        &abi,
        &issuer,
        &Desktop::enrolled(&trust),
        &Desktop::enrolled(&trust),
    );
    let (tpm_a, tpm_b) = (Swtpm::start(), Swtpm::start());
    scenarios(
        &abi,
        &issuer,
        &Desktop::with_tpm(&trust, &tpm_a),
        &Desktop::with_tpm(&trust, &tpm_b),
    );
}
