//! Build script: the version `--version` prints, `0.6.0` plus the git commit when built from a
//! checkout (`0.6.0 (git 1a2b3c4d5e6f)`). Outside git (a source tarball, `cargo package`) it is
//! the crate version alone, or `HWPASS_BUILD_COMMIT` when a packager sets it; this script never
//! fails.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    println!("cargo:rerun-if-env-changed=HWPASS_BUILD_COMMIT");
    // A packager building outside git may name the commit itself.
    let commit = std::env::var("HWPASS_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs (in
            // a worktree, HEAD is in its git dir and refs are in the common dir).
            let dir = git(&["rev-parse", "--git-dir"]).map(PathBuf::from)?;
            let common = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from)?;
            // Only files that exist: cargo treats a missing one as always changed, and would
            // run this script (and rebuild the crate) on every build.
            let watch = |p: PathBuf| {
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            };
            watch(dir.join("HEAD"));
            if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(common.join(head_ref));
            }
            watch(common.join("packed-refs"));
            git(&["rev-parse", "--short=12", "HEAD"])
        });
    let full = match commit {
        Some(c) => format!("{version} (git {c})"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=HWPASS_VERSION={full}");
}
