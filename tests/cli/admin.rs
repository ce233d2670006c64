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
