//! What admins expect of a command-line tool: `--version` with the commit it was built from,
//! shell completions and man pages, config errors that point at the line, PIN hygiene, batch
//! semantics, `init` and `config check`.

use std::process::Command;

use crate::common::*;

/// The newest release the changelog names (`- 0.6.0 (unreleased): …` or `- 0.5.0: …`).
fn changelog_version() -> String {
    let text = std::fs::read_to_string(repo().join("CHANGELOG.md")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("- ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .expect("a release entry in CHANGELOG.md");
    line[2..].split([' ', ':']).next().unwrap().to_string()
}

#[test]
fn version_is_the_changelogs_newest_release_and_names_the_commit() {
    assert_eq!(
        env!("CARGO_PKG_VERSION"),
        changelog_version(),
        "Cargo.toml's version and CHANGELOG.md's newest entry differ"
    );
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    for name in ["hwpass", "hwpass-issuer"] {
        let r = run(
            {
                let mut c = bin(name, NOW);
                c.arg("--version");
                c
            },
            None,
        )
        .ok();
        let expected = match &head {
            Some(h) => format!("{name} {} (git {h})", env!("CARGO_PKG_VERSION")),
            None => format!("{name} {}", env!("CARGO_PKG_VERSION")),
        };
        assert_eq!(r.stdout.trim(), expected, "{r:?}");
    }
}

/// Runs bash's completion function for `line` (the word being completed last) and returns the
/// candidates.
fn bash_complete(script: &str, line: &[&str]) -> Vec<String> {
    require("bash", "bash");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("completion.bash");
    std::fs::write(&file, script).unwrap();
    let words: Vec<String> = line.iter().map(|w| format!("{w:?}")).collect();
    let program = format!(
        r#"source {file:?}
f=$(complete -p {cmd} | sed -E 's/.* -F ([^ ]+) .*/\1/')
COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
"$f" {cmd} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        cmd = line[0],
        words = words.join(" "),
        cword = line.len() - 1,
    );
    let r = run(
        {
            let mut c = Command::new("bash");
            c.args(["--norc", "-c", &program]);
            c
        },
        None,
    )
    .ok();
    r.stdout.lines().map(str::to_string).collect()
}

#[test]
fn completions_for_every_shell_and_bash_completes_subcommands_and_flags() {
    for name in ["hwpass", "hwpass-issuer"] {
        for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
            let mut c = bin(name, NOW);
            c.args(["completion", shell]);
            let r = run(c, None).ok();
            assert!(
                r.stdout.contains(name) && r.stdout.len() > 500,
                "{name} completion {shell}: {r:?}"
            );
        }
        let mut c = bin(name, NOW);
        c.args(["completion", "tcsh"]);
        assert_eq!(run(c, None).code, 2, "an unknown shell is a usage error");
    }
    let script = |name: &str| {
        let mut c = bin(name, NOW);
        c.args(["completion", "bash"]);
        run(c, None).ok().stdout
    };
    let issuer = script("hwpass-issuer");
    assert_eq!(bash_complete(&issuer, &["hwpass-issuer", "au"]), ["audit"]);
    assert_eq!(
        bash_complete(&issuer, &["hwpass-issuer", "sign", "--valid"]),
        ["--valid-for"]
    );
    let desktop = script("hwpass");
    let subcommands = bash_complete(&desktop, &["hwpass", "ch"]);
    assert_eq!(subcommands, ["check"]);
}

#[test]
fn man_pages_for_each_command_and_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for (name, sub) in [("hwpass", "check"), ("hwpass-issuer", "sign")] {
        let mut c = bin(name, NOW);
        c.arg("manpages").arg(dir.path());
        run(c, None).ok();
        let main = std::fs::read_to_string(dir.path().join(format!("{name}.1"))).unwrap();
        assert!(main.contains(&format!(".TH {name} 1")), "{main}");
        assert!(
            main.contains(env!("CARGO_PKG_VERSION")),
            "the page names the version"
        );
        let page = std::fs::read_to_string(dir.path().join(format!("{name}-{sub}.1"))).unwrap();
        assert!(page.contains(&format!(".TH {name}-{sub} 1")), "{page}");
    }
    // `man` renders them, when it is installed (ci/setup installs man-db).
    require("man", "man-db");
    let r = run(
        {
            let mut c = Command::new("man");
            c.arg("-l")
                .arg(dir.path().join("hwpass-issuer-sign.1"))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100");
            c
        },
        None,
    )
    .ok();
    assert!(r.stdout.contains("--valid-for"), "{r:?}");
}

/// The report's records (JSON lines) in `text`.
fn report_records(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn batch_gives_one_line_out_per_line_in_with_true_line_numbers_and_exit_9() {
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let req = d.request("alice@corp", &[]);
    // Reported: `x`, blank, request gave two lines out instead of three.
    let input = format!("x\n\n{req}\n   \n{req}\n\n");
    let out = issuer.sign(&input, NOW, &["--batch", "--workers", "2"]);
    assert_eq!(out.code, 9, "a refused request: exit 9 {out:?}");
    let lines: Vec<&str> = out.stdout.split('\n').collect();
    assert_eq!(lines.len(), 7, "six lines in, six lines out: {out:?}");
    assert_eq!(lines[6], "", "the output ends with a newline");
    for (i, line) in lines[..6].iter().enumerate() {
        assert_eq!(
            line.starts_with("eyJ"),
            i == 2 || i == 4,
            "line {}: {out:?}",
            i + 1
        );
        assert!(line.starts_with("eyJ") || line.is_empty());
    }
    let report = report_records(&out.stderr);
    assert_eq!(report.len(), 1, "blank lines are not refusals: {out:?}");
    assert_eq!(report[0]["line"], 1);
    assert_eq!(report[0]["exit_code"], 4);
    assert!(
        out.stderr.contains("1 of 3 requests were refused"),
        "{out:?}"
    );
    assert_eq!(issuer.audit_lines().len(), 2);

    // The same with --report FILE: the refusals go there, the line numbers count blanks.
    let report_file = issuer.dir.path().join("report.jsonl");
    let input = format!("\n\n{req}\nnot a request\n");
    let out = issuer.sign(
        &input,
        NOW,
        &["--batch", "--report", report_file.to_str().unwrap()],
    );
    assert_eq!(out.code, 9, "{out:?}");
    assert_eq!(out.stdout.lines().collect::<Vec<_>>().len(), 4, "{out:?}");
    assert!(report_records(&out.stderr).is_empty(), "{out:?}");
    let report = report_records(&std::fs::read_to_string(&report_file).unwrap());
    assert_eq!(report.len(), 1);
    assert_eq!(report[0]["line"], 4);

    // All signed: exit 0; nothing refused, nothing reported.
    let out = issuer
        .sign(&format!("{req}\n\n{req}\n"), NOW, &["--batch"])
        .ok();
    assert_eq!(
        out.stdout,
        format!(
            "{}\n\n{}\n",
            out.stdout.lines().next().unwrap(),
            out.stdout.lines().nth(2).unwrap()
        )
    );
    assert!(
        !out.stderr.contains("requests signed"),
        "no progress bar into a pipe: {out:?}"
    );
}

#[test]
fn batch_shows_progress_on_a_terminal_only_and_sign_reads_a_file() {
    require("script", "bsdutils");
    let issuer = Issuer::new();
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let req = d.request("alice@corp", &[]);
    // `sign FILE` reads the request from the file (it was taken for the request itself).
    let file = issuer.dir.path().join("req.txt");
    std::fs::write(&file, format!("{req}\n")).unwrap();
    let single = issuer.run(&["sign", file.to_str().unwrap()], None).ok();
    assert!(single.line().starts_with("eyJ"), "{single:?}");

    let batch = issuer.dir.path().join("requests.txt");
    std::fs::write(&batch, format!("{req}\n{req}\n{req}\n")).unwrap();
    let passes = issuer.dir.path().join("passes.txt");
    // stderr on a pseudo-terminal (script(1)); stdout into a file.
    let cmd = issuer.cmd(NOW);
    let program: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let line = format!(
        "{} sign --batch '{}' > '{}'",
        program.join(" "),
        batch.display(),
        passes.display()
    );
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let mut script = Command::new("script");
    // A terminal has a TERM (without one, or with TERM=dumb, indicatif draws nothing).
    script
        .args(["-qec", &line, "/dev/null"])
        .env_clear()
        .envs(envs)
        .env("TERM", "xterm");
    let r = run(script, None).ok();
    assert!(
        r.stdout.contains("requests signed"),
        "a progress bar on the terminal: {r:?}"
    );
    let out = std::fs::read_to_string(&passes).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("eyJ")).count(),
        3,
        "{out}"
    );
    assert!(
        !out.contains("requests signed"),
        "stdout carries passes only"
    );
}

/// Appends `extra` to the issuer's config and runs `args`.
fn with_config(issuer: &Issuer, edit: impl FnOnce(&str) -> String, args: &[&str]) -> Run {
    let text = std::fs::read_to_string(&issuer.config).unwrap();
    std::fs::write(&issuer.config, edit(&text)).unwrap();
    let out = issuer.run(args, None);
    std::fs::write(&issuer.config, text).unwrap();
    out
}

#[test]
fn config_errors_name_file_line_column_and_key() {
    let issuer = Issuer::new();
    issuer.setup();
    let config = issuer.config.display().to_string();
    type Edit = Box<dyn Fn(&str) -> String>;
    let cases: Vec<(Edit, String)> = vec![
        // A TOML syntax error (reported: "config bad.toml: invalid basic string").
        (
            Box::new(|t: &str| t.replacen("issuer = \"test-issuer\"", "issuer = \"test-issuer", 1)),
            format!("config {config}:1:22: issuer: invalid basic string"),
        ),
        // An unknown key, with the known key it resembles.
        (
            Box::new(|t: &str| format!("{t}\n[serve]\nlistn = \"127.0.0.1:9\"\n")),
            format!("config {config}:16:1: unknown key `listn` in [serve] (did you mean `listen`?)"),
        ),
        (
            Box::new(|t: &str| t.replacen("audit_log =", "audit_logs =", 1)),
            format!("config {config}:3:1: unknown key `audit_logs` at the top level (did you mean `audit_log`?)"),
        ),
        // A value of the wrong type.
        (
            Box::new(|t: &str| t.replacen("max_lifetime = \"14d\"", "max_lifetime = 14", 1)),
            format!("config {config}:11:16: policy.max_lifetime: invalid type: integer `14`, expected a string"),
        ),
        // A value hwpass refuses, located by its text.
        (
            Box::new(|t: &str| t.replacen("max_lifetime = \"14d\"", "max_lifetime = \"14x\"", 1)),
            format!("config {config}:11:16: policy.max_lifetime: \"14x\" is not a duration"),
        ),
        // A missing key names its table.
        (
            Box::new(|t: &str| t.replacen("allow_software = true\n", "", 1)),
            format!("config {config}:8:1: [policy] lacks the key `allow_software`"),
        ),
    ];
    for (edit, want) in cases {
        let out = with_config(&issuer, edit, &["jwks"]);
        assert_eq!(out.code, 1, "{out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("hwpass-issuer: error: {want}")),
            "want {want:?}\n got {first:?}"
        );
        assert!(out.stderr.contains("hint: "), "{out:?}");
    }
}

/// Company sign-in for the config tests: `[oidc]` (its secret in a 0600 file beside the config)
/// and two `[[policy.group]]` rules.
fn oidc_config(issuer: &Issuer, secret: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let file = issuer.dir.path().join("oidc-secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    r#"
[oidc]
issuer = "https://login.corp.example"
client_id = "hwpass-web"
client_secret_file = "oidc-secret"
redirect_url = "https://passes.corp.example/oidc/callback"
desktop_client_id = "hwpass-desktop"
admin_groups = ["hwpass-admins"]

[[policy.group]]
name = "hwpass-users"
max_lifetime = "7d"
passes_per_day = 2

[[policy.group]]
name = "engineering"
software = false
"#
    .to_string()
}

#[test]
fn config_check_shows_sign_in_and_groups_in_force_never_the_secret_and_knows_their_keys() {
    let issuer = Issuer::new();
    issuer.setup();
    let secret = "client-secret-4c1b9e0f7d";
    let oidc = oidc_config(&issuer, secret);
    let out = with_config(
        &issuer,
        |t| format!("{t}{oidc}"),
        &["config", "check", "--json"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    let e = &out.json()["effective"];
    let o = &e["oidc"];
    assert_eq!(o["issuer"], "https://login.corp.example");
    assert_eq!(o["client_id"], "hwpass-web");
    assert_eq!(
        o["client_secret_file"],
        issuer.dir.path().join("oidc-secret").display().to_string()
    );
    assert_eq!(o["desktop_client_id"], "hwpass-desktop");
    assert_eq!(o["admin_groups"], serde_json::json!(["hwpass-admins"]));
    // Defaults filled in.
    assert_eq!(o["identity_claim"], "email");
    assert_eq!(o["groups_claim"], "groups");
    assert_eq!(o["timeout"], "10s");
    let groups = e["policy"]["group"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["name"], "hwpass-users");
    assert_eq!(groups[0]["max_lifetime"], "7d");
    assert_eq!(groups[0]["passes_per_day"], 2);
    assert_eq!(groups[1]["software"], false);
    assert_eq!(groups[1]["max_lifetime"], "14d", "the [policy] maximum");
    assert_eq!(groups[1]["passes_per_day"], serde_json::Value::Null);

    let out = with_config(&issuer, |t| format!("{t}{oidc}"), &["config", "check"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    for line in [
        "group         hwpass-users: allowed, max 7d, software allowed, attestation optional, 2 per day",
        "group         engineering: allowed, max 14d, software refused, attestation optional, unlimited per day",
        "oidc          https://login.corp.example as client hwpass-web",
    ] {
        assert!(out.stdout.contains(line), "{line}\n{}", out.stdout);
    }
    // Without sign-in, config check says so.
    let plain = issuer.run(&["config", "check"], None).ok();
    assert!(
        plain
            .stdout
            .contains("oidc          - (no company sign-in)"),
        "{plain:?}"
    );

    // The new keys are known to "did you mean".
    let config = issuer.config.display().to_string();
    for (typo, want) in [
        (
            ("client_secret_file =", "client_secert_file ="),
            "unknown key `client_secert_file` in [oidc] (did you mean `client_secret_file`?)",
        ),
        (
            ("passes_per_day =", "passes_per_dya ="),
            "unknown key `passes_per_dya` in [[policy.group]] (did you mean `passes_per_day`?)",
        ),
    ] {
        let out = with_config(
            &issuer,
            |t| format!("{t}{}", oidc.replacen(typo.0, typo.1, 1)),
            &["config", "check"],
        );
        assert_eq!(out.code, 1, "{out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("hwpass-issuer: error: config {config}:"))
                && first.ends_with(want),
            "want {want:?}\n got {first:?}"
        );
    }
}

#[test]
fn config_check_prints_the_values_in_force_and_finds_what_loading_cannot() {
    let issuer = Issuer::new();
    issuer.setup();
    let out = issuer.run(&["config", "check", "--json"], None).ok();
    let v = out.json();
    assert_eq!(v["ok"], true, "{out:?}");
    let e = &v["effective"];
    assert_eq!(e["issuer"], "test-issuer");
    // Relative paths resolve against the config's folder, defaults are filled in.
    assert_eq!(
        e["audit_log"],
        issuer
            .dir
            .path()
            .join("audit/audit.jsonl")
            .display()
            .to_string()
    );
    assert_eq!(
        e["revocations"],
        issuer
            .dir
            .path()
            .join("audit/revocations.json")
            .display()
            .to_string()
    );
    assert_eq!(e["policy"]["max_request_age"], "7d");
    assert_eq!(e["serve"]["listen"], "127.0.0.1:8080");
    assert_eq!(e["audit"]["origin"], "test-issuer/hwpass-audit");
    assert_eq!(e["key"]["kid"].as_str().unwrap().len(), 43);
    let text = issuer.run(&["config", "check"], None).ok();
    assert!(text.stdout.contains("ok: the config holds"), "{text:?}");

    // Attestation required with nothing to trust; a root that does not exist.
    let out = with_config(
        &issuer,
        |t| format!("{t}\n[attestation]\nrequire = true\n"),
        &["config", "check", "--json"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.json()["problems"][0]["error"]
        .as_str()
        .unwrap()
        .contains("neither ek_roots nor ek_allowlist"));
    let out = with_config(
        &issuer,
        |t| format!("{t}\n[attestation]\nrequire = true\nek_roots = [\"roots/vendor.pem\"]\n"),
        &["config", "check"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}",
            issuer.dir.path().join("roots/vendor.pem").display()
        )),
        "the missing root is named with its resolved path: {out:?}"
    );
    // The key does not open: the HSM's exit code and its sentence.
    let out = with_config(
        &issuer,
        |t| t.replacen("object=issuer-key", "object=no-such-key", 1),
        &["config", "check", "--json"],
    );
    assert_eq!(out.code, 10, "{out:?}");
    assert_eq!(
        out.json()["effective"]["key"]["kid"],
        serde_json::Value::Null
    );
    // The audit log's directory cannot take a file.
    std::fs::create_dir_all(issuer.audit.parent().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let dir = issuer.audit.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    // (As root, permissions do not stop writes; a directory that is a file does.)
    let out = if nix_is_root() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir(dir).unwrap();
        std::fs::write(dir, "not a directory").unwrap();
        let out = issuer.run(&["config", "check"], None);
        std::fs::remove_file(dir).unwrap();
        out
    } else {
        let out = issuer.run(&["config", "check"], None);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        out
    };
    assert_eq!(out.code, 11, "an audit log that cannot be written: {out:?}");
}

/// Whether the tests run as root (as CI does).
pub fn nix_is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

#[test]
fn pins_lose_one_trailing_newline_exposed_pin_files_and_wrong_pins_are_exit_1() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut issuer = Issuer::new();
    let trust = issuer.setup();
    let d = Desktop::enrolled(&trust);
    let req = d.request("alice@corp", &[]);
    // Reported: HWPASS_PIN=$'1234\n' was sent with its newline (and counted towards the
    // token's lock-out).
    issuer.pin = format!("{PIN}\n");
    issuer.sign(&req, NOW, &[]).ok();
    issuer.pin = format!("{PIN}\r\n");
    issuer.sign(&req, NOW, &[]).ok();
    // Only one: a PIN that is really followed by an empty line is not the PIN.
    issuer.pin = format!("{PIN}\n\n");
    let out = issuer.sign(&req, NOW, &[]);
    assert_eq!(
        out.code, 1,
        "a wrong PIN is exit 1, as the README says: {out:?}"
    );
    assert!(out.stderr.contains("refused the PIN"), "{out:?}");

    // A PIN file (pin-source) with a trailing newline, as `echo PIN > file` writes it.
    let pin_file = issuer.dir.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_file = |t: &str| {
        t.replacen(
            "libsofthsm2.so\"",
            &format!("libsofthsm2.so&pin-source=file:{}\"", pin_file.display()),
            1,
        )
    };
    let mut cmd = issuer.cmd(NOW);
    cmd.env_remove("HWPASS_PIN");
    let text = std::fs::read_to_string(&issuer.config).unwrap();
    std::fs::write(&issuer.config, with_file(&text)).unwrap();
    cmd.arg("sign");
    run(cmd, Some(&req)).ok();
    // Readable by the group, or by others: refused, before any PIN is sent.
    for mode in [0o640, 0o604] {
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut cmd = issuer.cmd(NOW);
        cmd.env_remove("HWPASS_PIN").arg("sign");
        let out = run(cmd, Some(&req));
        assert_eq!(out.code, 1, "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("open to group or others (mode {mode:04o})")),
            "{out:?}"
        );
        assert!(out.stderr.contains("chmod 600"), "{out:?}");
    }
    std::fs::write(&issuer.config, text).unwrap();
}

/// `hwpass-issuer --config CONFIG init ARGS…` with nothing from the test's HSM in the
/// environment: init makes its own token.
fn init_cmd(config: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = bin("hwpass-issuer", NOW);
    cmd.arg("--config").arg(config).arg("init").args(args);
    cmd
}

/// Every file under `dir` with its content, for "nothing changed".
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn init_makes_a_working_softhsm_issuer_never_overwrites_and_prints_the_next_commands() {
    require("softhsm2-util", "softhsm2");
    // As root, init hands its files to a `hwpass` account when there is one: not while the
    // package tests have one installed.
    let _machine = machine_lock();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("etc/issuer.toml");
    let state = root.path().join("state");
    let out = run(
        init_cmd(
            &config,
            &[
                "--yes",
                "--issuer",
                "https://passes.corp.example",
                "--audience",
                "analytics-desktop",
                "--state-dir",
                state.to_str().unwrap(),
            ],
        ),
        None,
    )
    .ok();
    let next: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| *l != "next:")
        .skip(1)
        .collect();
    assert_eq!(next.len(), 3, "three next commands: {out:?}");
    assert!(next[0]
        .trim_start()
        .starts_with("hwpass enroll --trust issuer.jwks"));
    assert!(next[1].contains("sign < request.txt"), "{out:?}");
    assert!(next[2].contains("admin-token --name admin"), "{out:?}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.path().join("etc/pin")), 0o600);
    assert_eq!(
        mode(&config),
        0o600,
        "not run for a service account: owner only"
    );
    assert_eq!(mode(&state.join("softhsm/so-pin")), 0o600);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("issuer = \"https://passes.corp.example\""),
        "{text}"
    );
    assert!(!text.contains("pin-value"), "no PIN in the config");
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("issuer.jwks")).unwrap()).unwrap();
    assert_eq!(jwks["hwpass"]["iss"], "https://passes.corp.example");

    // The config works as written: no PIN or SOFTHSM2_CONF in the environment (the config
    // names the PIN file and SoftHSM's config), from another working directory.
    let mut check = bin("hwpass-issuer", NOW);
    check
        .arg("--config")
        .arg(&config)
        .args(["config", "check", "--json"]);
    let v = run(check, None).ok().json();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["effective"]["audit_log"],
        state.join("audit.jsonl").display().to_string()
    );
    let d = Desktop::enrolled(&state.join("issuer.jwks"));
    let req = d.request("alice@corp", &[]);
    let mut sign = bin("hwpass-issuer", NOW);
    sign.arg("--config")
        .arg(&config)
        .arg("sign")
        .current_dir("/");
    let pass = run(sign, Some(&req)).ok().line();
    d.install(&pass, NOW).ok();
    assert_eq!(d.check(NOW).0, 0);

    // Again: refused, and nothing changed.
    let before = snapshot(root.path());
    let again = run(
        init_cmd(&config, &["--yes", "--state-dir", state.to_str().unwrap()]),
        None,
    );
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again
            .stderr
            .contains("exists already; init never overwrites"),
        "{again:?}"
    );
    assert_eq!(
        before,
        snapshot(root.path()),
        "init changed files it must not touch"
    );
    // Another config but the same state directory: the token and log are there, refused.
    let other = root.path().join("other/issuer.toml");
    let again = run(
        init_cmd(&other, &["--yes", "--state-dir", state.to_str().unwrap()]),
        None,
    );
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        !other.exists(),
        "nothing written when anything is in the way"
    );
    assert_eq!(before, snapshot(root.path()));
}

#[test]
fn init_asks_on_a_terminal_and_takes_an_existing_hsm_uri() {
    require("script", "bsdutils");
    let _machine = machine_lock();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("issuer.toml");
    let state = root.path().join("var");
    let uri = "pkcs11:token=issuer;object=hwpass-2027?module-path=/usr/lib/x86_64-linux-gnu/pkcs11/vendor.so&pin-source=file:/etc/hwpass/hsm-pin";
    // Answers typed at the prompts: issuer, audience (Enter: the default), state dir, key.
    let answers = format!("https://typed.example\n\n{}\n{uri}\n", state.display());
    let line = format!(
        "'{}' --config '{}' init",
        bin_path("hwpass-issuer").display(),
        config.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm");
    let out = run(cmd, Some(&answers)).ok();
    assert!(
        out.stdout.contains("issuer name (iss of every pass) ["),
        "{out:?}"
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("issuer = \"https://typed.example\""),
        "{text}"
    );
    assert!(
        text.contains("audience = \"hwpass-desktop\""),
        "the default: {text}"
    );
    assert!(text.contains(&format!("uri = \"{uri}\"")), "{text}");
    assert!(
        text.contains(&format!(
            "audit_log = \"{}\"",
            state.join("audit.jsonl").display()
        )),
        "{text}"
    );
    assert!(
        !state.join("softhsm").exists(),
        "an HSM of its own: no SoftHSM token"
    );
    assert!(
        out.stdout.contains("keygen"),
        "the next command makes the key: {out:?}"
    );
    // The same values from flags, without a terminal: the config init prints is the one it
    // writes.
    let mut printed = bin("hwpass-issuer", NOW);
    printed.arg("--config").arg(&config).args([
        "init",
        "--print-config",
        "--issuer",
        "https://typed.example",
        "--state-dir",
        state.to_str().unwrap(),
        "--key-uri",
        uri,
    ]);
    assert_eq!(run(printed, None).ok().stdout, text);
}
