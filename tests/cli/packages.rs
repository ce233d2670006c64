//! The Debian packages, installed for real on this machine: `dpkg -i`, `systemd-analyze verify`
//! and `security` on the installed unit, `init`, the installed issuer started as the unit starts
//! it, a pass signed and checked with the installed binaries, `dpkg --purge`, nothing left. And
//! the README's admin quick start, run as written.
//!
//! These tests change the machine, so they need root (CI runs as root) and fail without it,
//! never skip. They hold [`machine_lock`] (one package test at a time, also across test
//! processes), refuse to touch an installation they did not make, and a guard purges the
//! packages and removes the account and directories they made on the way out, also when a step
//! fails. The packages are the ones `ci/test` built before the tests (`HWPASS_TEST_DEBS`, the
//! directory `ci/package` wrote them to), or else `ci/package` builds them here (a release build).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use crate::service::{sign_body, Server};

const UNIT: &str = "/usr/lib/systemd/system/hwpass-issuer.service";
const CONFIG: &str = "/etc/hwpass/issuer.toml";
const TRUST: &str = "/var/lib/hwpass/issuer.jwks";
/// What `init` and the service make and a purge leaves in place on purpose (config, PIN, audit
/// log, token: records and keys, not package files); the guard removes them.
const KEPT_ON_PURGE: [&str; 2] = ["/etc/hwpass", "/var/lib/hwpass"];
/// What the packages install; a purge removes it.
const PACKAGE_FILES: [&str; 5] = [
    "/usr/bin/hwpass-issuer",
    "/usr/bin/hwpass",
    UNIT,
    "/etc/hwpass/issuer.toml.example",
    "/usr/share/doc/hwpass-issuer/operations.md",
];
/// The PATH of a root shell (dpkg and its maintainer scripts need sbin).
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A root command with a clean environment, bounded by `timeout` (coreutils).
fn root_cmd(secs: u32, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=10")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", ROOT_PATH)
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .current_dir("/");
    cmd
}

/// Fails unless the tests run as root, naming why.
fn require_root(what: &str) {
    assert!(
        crate::admin::nix_is_root(),
        "{what} installs Debian packages with dpkg and starts the issuer as the hwpass account: \
         run the tests as root (CI does; `sudo -E cargo test`)"
    );
}

/// The two packages: `(hwpass-issuer, hwpass)`.
fn debs() -> &'static (PathBuf, PathBuf) {
    static DEBS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DEBS.get_or_init(|| {
        let dir = match std::env::var_os("HWPASS_TEST_DEBS") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let started = std::time::Instant::now();
                let mut cmd = Command::new("timeout");
                cmd.args(["1800", "bash"])
                    .arg(repo().join("ci/package"))
                    .current_dir(repo());
                let out = run(cmd, None);
                assert_eq!(out.code, 0, "ci/package failed: {out:?}");
                eprintln!("ci/package: {:.0?}", started.elapsed());
                let first = out.stdout.lines().next().expect("ci/package prints paths");
                Path::new(first).parent().unwrap().to_path_buf()
            }
        };
        let arch = run(root_cmd(30, "dpkg", &["--print-architecture"]), None)
            .ok()
            .line();
        let version = env!("CARGO_PKG_VERSION");
        let deb = |name: &str| {
            let path = dir.join(format!("{name}_{version}-1_{arch}.deb"));
            assert!(
                path.is_file(),
                "{} is missing: run `bash ci/package` (HWPASS_TEST_DEBS names its output directory)",
                path.display()
            );
            path
        };
        (deb("hwpass-issuer"), deb("hwpass"))
    })
}

/// `dpkg ARGS`, waiting while another dpkg or apt (not one of these tests: they hold the
/// machine lock) has dpkg's lock: dpkg itself does not wait.
fn dpkg(args: &[&str]) -> Run {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let out = run(root_cmd(300, "dpkg", args), None);
        let locked = out.code != 0 && out.stderr.contains("lock");
        if !locked || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// dpkg's status of `package` (`install ok installed`), or empty when dpkg does not know it.
fn status(package: &str) -> String {
    run(
        root_cmd(30, "dpkg-query", &["-W", "-f=${Status}", package]),
        None,
    )
    .stdout
}

/// Every package dpkg has installed, with its version.
fn installed_packages() -> Vec<String> {
    let out = run(
        root_cmd(
            60,
            "dpkg-query",
            &["-W", "-f=${db:Status-Abbrev} ${Package} ${Version}\n"],
        ),
        None,
    )
    .ok();
    out.stdout
        .lines()
        .filter(|l| l.starts_with("ii"))
        .map(str::to_string)
        .collect()
}

/// The `hwpass` account's uid, if there is one.
fn hwpass_uid() -> Option<u32> {
    let out = run(root_cmd(30, "id", &["-u", "hwpass"]), None);
    (out.code == 0).then(|| out.stdout.trim().parse().unwrap())
}

/// An installation made by this test: on the way out (also a failing one) it stops whatever
/// runs as `hwpass`, purges both packages, and removes what a purge leaves on purpose and the
/// account.
struct Installation {
    done: bool,
}

impl Installation {
    /// Refuses to start on a machine where the packages, their directories or the account
    /// are there already: the test would remove them afterwards.
    fn begin() -> Self {
        let mut there: Vec<String> = ["hwpass-issuer", "hwpass"]
            .into_iter()
            .filter(|p| !status(p).is_empty() && !status(p).contains("not-installed"))
            .map(|p| format!("the package {p} ({})", status(p)))
            .collect();
        there.extend(
            KEPT_ON_PURGE
                .iter()
                .chain(PACKAGE_FILES.iter())
                .filter(|p| Path::new(p).exists())
                .map(|p| p.to_string()),
        );
        if hwpass_uid().is_some() {
            there.push("the account hwpass".into());
        }
        assert!(
            there.is_empty(),
            "this machine has hwpass installed already ({}); the package tests install and purge \
             it, so they do not touch an installation they did not make. If it is a leftover: \
             dpkg --purge hwpass-issuer hwpass; rm -r /etc/hwpass /var/lib/hwpass; \
             deluser --system hwpass",
            there.join(", ")
        );
        Self { done: false }
    }

    /// Removes everything; returns what is still there.
    fn clean(&mut self) -> Vec<String> {
        self.done = true;
        if let Some(uid) = hwpass_uid() {
            for pid in processes_of(uid) {
                let _ = run(root_cmd(10, "kill", &["-KILL", &pid.to_string()]), None);
            }
        }
        let _ = dpkg(&["--purge", "hwpass-issuer", "hwpass"]);
        for dir in KEPT_ON_PURGE {
            let _ = std::fs::remove_dir_all(dir);
        }
        if hwpass_uid().is_some() {
            let _ = run(root_cmd(30, "userdel", &["hwpass"]), None);
        }
        let group = run(root_cmd(30, "getent", &["group", "hwpass"]), None);
        if group.code == 0 {
            let _ = run(root_cmd(30, "groupdel", &["hwpass"]), None);
        }
        let mut left: Vec<String> = KEPT_ON_PURGE
            .iter()
            .chain(PACKAGE_FILES.iter())
            .filter(|p| Path::new(p).exists())
            .map(|p| p.to_string())
            .collect();
        for p in ["hwpass-issuer", "hwpass"] {
            let s = status(p);
            if !s.is_empty() && !s.contains("not-installed") {
                left.push(format!("the package {p} ({s})"));
            }
        }
        if hwpass_uid().is_some() {
            left.push("the account hwpass".into());
        }
        if run(root_cmd(30, "getent", &["group", "hwpass"]), None).code == 0 {
            left.push("the group hwpass".into());
        }
        left
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        if !self.done {
            let left = self.clean();
            if !left.is_empty() {
                eprintln!("package test: could not remove {}", left.join(", "));
            }
        }
    }
}

/// The processes running as `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        if real == Some(uid) {
            pids.push(pid);
        }
    }
    pids
}

/// The child processes of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The value of `key=` in the unit's `[Service]` section (the last one, as systemd reads it).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .next_back()
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

/// `owner:group mode` of a path, as `stat` prints them.
fn owner_mode(path: &str) -> String {
    run(root_cmd(30, "stat", &["-c", "%U:%G %a", path]), None)
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// A desktop state directory driven through `hwpass` at `bin`, on the real clock (the
/// installed issuer signs on the real clock too).
fn desktop_cmd(d: &Desktop, bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", ROOT_PATH)
        .env("HWPASS_MACHINE_ID_FILE", &d.machine_id)
        .arg("--state-dir")
        .arg(&d.state)
        .args(args);
    cmd
}

/// The figure `systemd-analyze security --offline=yes` gives the installed unit.
fn measured_exposure() -> String {
    let out = run(
        root_cmd(60, "systemd-analyze", &["security", "--offline=yes", UNIT]),
        None,
    );
    assert_eq!(out.code, 0, "systemd-analyze security: {out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for hwpass-issuer.service:"))
        .unwrap_or_else(|| panic!("no overall exposure: {out:?}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn packages_install_run_as_the_unit_runs_sign_and_purge_without_a_trace() {
    require_root("this test");
    for (tool, package) in [
        ("dpkg", "dpkg"),
        ("systemd-analyze", "systemd"),
        ("runuser", "util-linux"),
        ("prlimit", "util-linux"),
        ("readelf", "binutils"),
        ("man", "man-db"),
        ("softhsm2-util", "softhsm2"),
    ] {
        require(tool, package);
    }
    let _machine = machine_lock();
    let (issuer_deb, desktop_deb) = debs();
    let mut installation = Installation::begin();

    let out = dpkg(&[
        "-i",
        issuer_deb.to_str().unwrap(),
        desktop_deb.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "dpkg -i: {out:?}");
    for p in ["hwpass-issuer", "hwpass"] {
        assert_eq!(status(p), "install ok installed", "{p}");
    }
    for p in PACKAGE_FILES {
        assert!(Path::new(p).exists(), "{p} is not installed");
    }
    for p in [
        "/usr/share/bash-completion/completions/hwpass-issuer",
        "/usr/share/zsh/vendor-completions/_hwpass",
        "/usr/share/fish/vendor_completions.d/hwpass.fish",
    ] {
        assert!(Path::new(p).is_file(), "{p} is not installed");
    }
    // Stripped: no debug info (it is in the -dbgsym packages; .debug_gdb_scripts is not).
    for bin in ["/usr/bin/hwpass-issuer", "/usr/bin/hwpass"] {
        let sections = run(root_cmd(30, "readelf", &["-S", "-W", bin]), None).ok();
        for debug in [".debug_info", ".debug_line"] {
            assert!(
                !sections.stdout.contains(debug),
                "{bin} carries debug info ({debug})"
            );
        }
    }
    // The account, its state directory and the config folder (postinst).
    assert!(hwpass_uid().is_some_and(|u| u < 1000), "a system account");
    assert_eq!(owner_mode("/var/lib/hwpass"), "hwpass:hwpass 750");
    assert_eq!(owner_mode("/etc/hwpass"), "root:hwpass 750");

    // The unit as installed: verified (its binary, man pages, directives), and sandboxed as
    // docs/operations.md and the README say.
    let out = run(root_cmd(60, "systemd-analyze", &["verify", UNIT]), None);
    assert_eq!(out.code, 0, "systemd-analyze verify: {out:?}");
    assert!(
        !out.stderr.contains("hwpass-issuer"),
        "systemd-analyze verify complains: {out:?}"
    );
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for doc in unit_value(&unit, "Documentation").split_whitespace() {
        if let Some(path) = doc.strip_prefix("file://") {
            assert!(
                Path::new(path).is_file(),
                "the unit documents {doc}: missing"
            );
        }
    }
    let exposure = measured_exposure();
    let operations = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    assert!(
        operations.contains(&format!("**Exposure: {exposure} ")),
        "docs/operations.md states another exposure than the measured {exposure}"
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure {exposure} ")),
        "README.md states another exposure than the measured {exposure}"
    );

    // init as the package says (run as root: the files go to the hwpass account).
    let out = run(
        root_cmd(
            120,
            "/usr/bin/hwpass-issuer",
            &[
                "init",
                "--yes",
                "--issuer",
                "https://passes.example.test",
                "--audience",
                "analytics-desktop",
            ],
        ),
        None,
    );
    assert_eq!(out.code, 0, "init: {out:?}");
    assert!(
        out.stdout.contains("sudo -u hwpass hwpass-issuer sign"),
        "{out:?}"
    );
    assert_eq!(owner_mode(CONFIG), "root:hwpass 640");
    assert_eq!(owner_mode("/etc/hwpass/pin"), "hwpass:hwpass 600");
    assert!(Path::new(TRUST).is_file());
    // Port 0 instead of 8080: other tests and services on this machine may use that port.
    let config = std::fs::read_to_string(CONFIG).unwrap();
    let listen = "listen = \"127.0.0.1:8080\"";
    assert!(config.contains(listen), "{config}");
    let made = run(
        root_cmd(
            60,
            "/usr/bin/hwpass-issuer",
            &["admin-token", "--name", "alice"],
        ),
        None,
    )
    .ok();
    let token = made.line();
    let admins: Vec<&str> = made
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("[[serve.admins]]"))
        .collect();
    assert!(!admins.is_empty(), "{made:?}");
    std::fs::write(
        CONFIG,
        format!(
            "{}\n{}\n",
            config.replace(listen, "listen = \"127.0.0.1:0\""),
            admins.join("\n")
        ),
    )
    .unwrap();
    let check = run(
        root_cmd(
            60,
            "runuser",
            &[
                "-u",
                "hwpass",
                "--",
                "/usr/bin/hwpass-issuer",
                "config",
                "check",
            ],
        ),
        None,
    );
    assert_eq!(
        check.code, 0,
        "config check as the service's account: {check:?}"
    );

    // The installed issuer, started as the unit starts it: its account, umask and command line,
    // nothing else in the environment (systemd is not PID 1 here, so no systemctl).
    let user = unit_value(&unit, "User");
    let umask = unit_value(&unit, "UMask");
    let exec = unit_value(&unit, "ExecStart");
    // (Not under `timeout`: it would signal runuser and the service both on SIGTERM.)
    let mut serve = Command::new("prlimit");
    serve
        .env_clear()
        .env("PATH", ROOT_PATH)
        .current_dir("/")
        .arg(format!("--nofile={}", unit_value(&unit, "LimitNOFILE")))
        .arg(format!("--core={}", unit_value(&unit, "LimitCORE")))
        .args(["--", "runuser", "-u", &user, "--", "sh", "-c"])
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .args(exec.split_whitespace());
    let server = Server::spawn_cmd(serve, token);
    let (code, _, body) = server.get("/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // A desktop with the installed hwpass: enrol, request, the pass from the service, check.
    let d = Desktop::new();
    let desktop = Path::new("/usr/bin/hwpass");
    let enroll = run(
        desktop_cmd(
            &d,
            desktop,
            &["enroll", "--backend", "software", "--trust", TRUST],
        ),
        None,
    );
    assert_eq!(enroll.code, 0, "{enroll:?}");
    let request = run(
        desktop_cmd(&d, desktop, &["request", "--subject", "alice@corp"]),
        None,
    )
    .ok()
    .line();
    let (code, _, body) = server.post(
        "/v1/passes",
        Some(&server.bearer()),
        &sign_body(&request, None),
    );
    assert_eq!(code, 201, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pass = reply["pass"].as_str().unwrap();
    run(desktop_cmd(&d, desktop, &["install", "-"]), Some(pass)).ok();
    let check = run(desktop_cmd(&d, desktop, &["check", "--json"]), None);
    assert_eq!(check.code, 0, "{check:?}");
    assert_eq!(check.json()["subject"], "alice@corp");
    let (_, _, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("hwpass_passes_issued_total{kind=\"software\"} 1"),
        "{metrics}"
    );
    // SIGTERM to the service, as systemd sends it (runuser, its parent here, would report a
    // signal of its own as a failure).
    let service = children(server.pid())
        .into_iter()
        .find(|&pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == Path::new("/usr/bin/hwpass-issuer"))
        })
        .expect("the service runs under runuser");
    run(root_cmd(10, "kill", &["-TERM", &service.to_string()]), None).ok();
    let (code, log) = server.wait();
    assert_eq!(code, 0, "the service stops cleanly on SIGTERM: {log}");
    assert!(log.contains("stopped"), "{log}");
    // What the service wrote is its account's, and its alone (UMask=0077).
    let audit = owner_mode("/var/lib/hwpass/audit.jsonl");
    assert!(audit.starts_with("hwpass:hwpass "), "{audit}");
    assert!(audit.ends_with(" 600"), "{audit}");

    // Purged: the package files are gone; config, state and account stay, as documented.
    let out = dpkg(&["--purge", "hwpass-issuer", "hwpass"]);
    assert_eq!(out.code, 0, "dpkg --purge: {out:?}");
    assert!(
        out.stderr.contains("left /etc/hwpass and /var/lib/hwpass"),
        "{out:?}"
    );
    for p in ["hwpass-issuer", "hwpass"] {
        let s = status(p);
        assert!(s.is_empty() || s.contains("not-installed"), "{p}: {s}");
    }
    for p in PACKAGE_FILES {
        assert!(!Path::new(p).exists(), "{p} survived the purge");
    }
    for p in KEPT_ON_PURGE {
        assert!(Path::new(p).is_dir(), "{p} is the admin's: kept");
    }
    let left = installation.clean();
    assert!(left.is_empty(), "left behind: {}", left.join(", "));
}

/// The fenced block under `<!-- admin-quick-start -->` in README.md, as command lines.
fn readme_quick_start() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let marker = "<!-- admin-quick-start";
    assert_eq!(
        readme.matches(marker).count(),
        1,
        "one quick start in README.md"
    );
    let after = &readme[readme.find(marker).unwrap()..];
    let mut lines = after.lines().skip(1);
    assert_eq!(
        lines.next(),
        Some("```sh"),
        "the marker is right above a sh block"
    );
    lines
        .take_while(|l| *l != "```")
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The README's admin quick start, executed as written, one line after the other in one
/// directory, as root (sudo then does what it does for an admin). Honest about two things: the
/// package file comes from `ci/package` (copied into the directory the commands run in), and
/// `request.txt` is made by a desktop (the built `hwpass`, software key, enrolled with the trust
/// bundle `init` wrote) just before the command that reads it, as it would reach an admin
/// between those steps. `init` runs without a terminal, so it takes its defaults.
#[test]
fn readme_admin_quick_start_runs_as_written() {
    require_root("the README's quick start");
    for (tool, package) in [
        ("sudo", "sudo"),
        ("apt", "apt"),
        ("softhsm2-util", "softhsm2"),
    ] {
        require(tool, package);
    }
    let commands = readme_quick_start();
    assert_eq!(commands.len(), 3, "install, init, sign: {commands:#?}");
    assert!(
        commands[0].contains("apt install ./hwpass-issuer_"),
        "{commands:#?}"
    );
    assert!(commands[1].contains("hwpass-issuer init"), "{commands:#?}");
    assert!(commands[2].contains("hwpass-issuer sign"), "{commands:#?}");

    let _machine = machine_lock();
    let (issuer_deb, _) = debs();
    let before = installed_packages();
    let mut installation = Installation::begin();
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(
        issuer_deb,
        work.path().join(issuer_deb.file_name().unwrap()),
    )
    .unwrap();
    let d = Desktop::new();
    let mut last = None;
    for line in &commands {
        if line.contains("request.txt") {
            let enroll = run(
                desktop_cmd(
                    &d,
                    &bin_path("hwpass"),
                    &["enroll", "--backend", "software", "--trust", TRUST],
                ),
                None,
            );
            assert_eq!(enroll.code, 0, "{enroll:?}");
            let request = run(
                desktop_cmd(
                    &d,
                    &bin_path("hwpass"),
                    &["request", "--subject", "alice@corp"],
                ),
                None,
            )
            .ok();
            std::fs::write(work.path().join("request.txt"), &request.stdout).unwrap();
        }
        let mut cmd = root_cmd(300, "bash", &["-euo", "pipefail", "-c", line]);
        cmd.current_dir(work.path());
        let out = run(cmd, None);
        assert_eq!(out.code, 0, "README: {line}\n{out:?}");
        last = Some(out);
    }
    let pass = last.unwrap().line();
    run(
        desktop_cmd(&d, &bin_path("hwpass"), &["install", "-"]),
        Some(&pass),
    )
    .ok();
    let check = run(
        desktop_cmd(&d, &bin_path("hwpass"), &["check", "--json"]),
        None,
    );
    assert_eq!(check.code, 0, "the README's pass checks: {check:?}");
    assert_eq!(check.json()["subject"], "alice@corp");

    let left = installation.clean();
    assert!(left.is_empty(), "left behind: {}", left.join(", "));
    assert_eq!(
        before,
        installed_packages(),
        "the quick start installed or removed other packages"
    );
}
