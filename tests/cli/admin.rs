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
