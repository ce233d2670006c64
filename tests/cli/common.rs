//! Test fixtures: a SoftHSM token per test in a temp dir, an issuer config around it, and
//! desktop state directories, all driven through the real binaries with an injected clock.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// The fixed "now" of tests (2027-01-15T08:00:00Z); tests move it explicitly.
pub const NOW: i64 = 1_800_000_000;
pub const PIN: &str = "4711-test";
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when a system tool is missing, naming the package.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: install the Debian package {package} (run ci/setup)"
    );
}

/// Output of one binary run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
    pub fn line(&self) -> String {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line of output: {self:?}");
        lines[0].to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

pub fn run(mut cmd: Command, stdin: Option<&str>) -> Run {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A command with a clean environment: nothing from the developer's shell leaks in.
pub fn bin(name: &str, now: i64) -> Command {
    let path = match name {
        "hwpass" => env!("CARGO_BIN_EXE_hwpass"),
        "hwpass-issuer" => env!("CARGO_BIN_EXE_hwpass-issuer"),
        other => panic!("unknown binary {other}"),
    };
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HWPASS_FAKE_NOW", now.to_string());
    cmd
}

/// A SoftHSM2 token store of its own, created by the project's softhsm/setup-token script.
pub struct SoftHsm {
    /// Kept so the token store lives as long as the fixture.
    _dir: TempDir,
    pub conf: PathBuf,
}

impl SoftHsm {
    pub fn new(label: &str) -> Self {
        require("softhsm2-util", "softhsm2");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(repo().join("softhsm/setup-token"))
            .arg(dir.path())
            .arg(label)
            .env("HWPASS_PIN", PIN)
            .output()
            .expect("run setup-token");
        assert!(
            out.status.success(),
            "setup-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("softhsm2.conf");
        Self { _dir: dir, conf }
    }
}

/// An issuer: a SoftHSM token, a config file and an audit log in a temp dir.
pub struct Issuer {
    pub hsm: SoftHsm,
    pub dir: TempDir,
    pub config: PathBuf,
    pub audit: PathBuf,
    pub pin: String,
}

pub const DEFAULT_POLICY: &str = r#"
default_lifetime = "7d"
max_lifetime = "14d"
allow_software = true
software_max_lifetime = "3d"
"#;

impl Issuer {
    pub fn new() -> Self {
        Self::with_policy(DEFAULT_POLICY)
    }

    pub fn with_policy(policy: &str) -> Self {
        let hsm = SoftHsm::new("hwpass-test");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("issuer.toml");
        let audit = dir.path().join("audit/audit.jsonl");
        let issuer = Self {
            hsm,
            dir,
            config,
            audit,
            pin: PIN.into(),
        };
        issuer.write_config("token=hwpass-test;object=issuer-key", MODULE, policy);
        issuer
    }

    pub fn write_config(&self, uri_path: &str, module: &str, policy: &str) {
        let text = format!(
            "issuer = \"test-issuer\"\naudience = \"analytics-desktop\"\naudit_log = \"audit/audit.jsonl\"\n\n[hsm]\nuri = \"pkcs11:{uri_path}?module-path={module}\"\n\n[policy]\n{policy}"
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn cmd(&self, now: i64) -> Command {
        let mut cmd = bin("hwpass-issuer", now);
        cmd.env("SOFTHSM2_CONF", &self.hsm.conf)
            .env("HWPASS_PIN", &self.pin)
            .arg("--config")
            .arg(&self.config);
        cmd
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = self.cmd(NOW);
        cmd.args(args);
        run(cmd, stdin)
    }

    /// keygen + jwks; returns the trust bundle path.
    pub fn setup(&self) -> PathBuf {
        self.run(&["keygen"], None).ok();
        let jwks = self.run(&["jwks"], None).ok();
        let path = self.dir.path().join("issuer.jwks");
        std::fs::write(&path, &jwks.stdout).expect("write jwks");
        path
    }

    pub fn sign(&self, request: &str, now: i64, extra: &[&str]) -> Run {
        let mut cmd = self.cmd(now);
        cmd.arg("sign").args(extra);
        run(cmd, Some(request))
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(&self.audit) {
            Ok(t) => t
                .lines()
                .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A desktop state directory, with its own machine identity file (so "another machine" can be
/// modelled for the software backend).
pub struct Desktop {
    pub dir: TempDir,
    pub state: PathBuf,
    pub machine_id: PathBuf,
}

impl Desktop {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let machine_id = dir.path().join("machine-id");
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).expect("random");
        std::fs::write(&machine_id, format!("{}\n", hex::encode(id))).expect("write machine-id");
        Self {
            dir,
            state,
            machine_id,
        }
    }

    pub fn enrolled(trust: &Path) -> Self {
        let d = Self::new();
        d.run(
            &[
                "enroll",
                "--backend",
                "software",
                "--trust",
                trust.to_str().unwrap(),
            ],
            None,
            NOW,
        )
        .ok();
        d
    }

    pub fn cmd(&self, now: i64) -> Command {
        let mut cmd = bin("hwpass", now);
        cmd.env("HWPASS_MACHINE_ID_FILE", &self.machine_id)
            .arg("--state-dir")
            .arg(&self.state);
        cmd
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>, now: i64) -> Run {
        let mut cmd = self.cmd(now);
        cmd.args(args);
        run(cmd, stdin)
    }

    pub fn request(&self, subject: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "request",
            "--subject",
            subject,
            "--device-name",
            "test-laptop",
        ];
        args.extend_from_slice(extra);
        self.run(&args, None, NOW).ok().line()
    }

    pub fn install(&self, pass: &str, now: i64) -> Run {
        self.run(&["install", "-"], Some(pass), now)
    }

    pub fn check(&self, now: i64) -> (i32, serde_json::Value) {
        let r = self.run(&["check", "--json"], None, now);
        let v = r.json();
        assert_eq!(
            v["exit_code"].as_i64(),
            Some(r.code as i64),
            "verdict and exit code agree: {r:?}"
        );
        (r.code, v)
    }
}

/// Replaces the payload of a signed token, keeping header and signature.
pub fn with_payload(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut payload);
    let p = URL_SAFE_NO_PAD.encode(payload.to_string());
    format!("{}.{}.{}", parts[0], p, parts[2])
}
