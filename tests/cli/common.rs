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

/// Runs `openssl` with `args` in `dir`; fails the test when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    require("openssl", "openssl");
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let r = run(cmd, None);
    assert_eq!(r.code, 0, "openssl {args:?}: {r:?}");
}

/// A new P-256 CA in `dir` (`NAME.key`, `NAME.pem`, valid 2 days) with subject CN `cn`; its
/// certificate's path.
pub fn test_ca(dir: &Path, name: &str, cn: &str) -> PathBuf {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subj,
        ],
    );
    dir.join(pem)
}

/// A CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 and `localhost`
/// (`server.pem`, key `server.key`, not a CA, for server authentication), all in `dir`
/// (webpki refuses a self-signed CA certificate used as the server's own).
pub fn test_server_pki(dir: &Path) {
    test_ca(dir, "ca", "hwpass test CA");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

/// Held by every test that changes what is machine-wide (dpkg, the `hwpass` account,
/// `/etc/hwpass`, `/var/lib/hwpass`: tests/cli/packages.rs) or depends on it (`init` as root
/// looks for the `hwpass` account): one such test at a time, also across test processes (other
/// checkouts' runs on the same machine). An advisory lock on a file in the temp dir, released
/// when the returned file is dropped, also when the test panics.
pub fn machine_lock() -> std::fs::File {
    let path = std::env::temp_dir().join("hwpass-tests-machine.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .or_else(|_| std::fs::File::open(&path))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
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

/// Where a binary is: where cargo built it for this test run, or in `HWPASS_TEST_BIN_DIR` when
/// that is set (to run the tests against other builds: an installed package, an older commit).
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("HWPASS_TEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    PathBuf::from(match name {
        "hwpass" => env!("CARGO_BIN_EXE_hwpass"),
        "hwpass-issuer" => env!("CARGO_BIN_EXE_hwpass-issuer"),
        other => panic!("unknown binary {other}"),
    })
}

/// A command with a clean environment: nothing from the developer's shell leaks in.
pub fn bin(name: &str, now: i64) -> Command {
    let mut cmd = Command::new(bin_path(name));
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
        Self::with_pin(label, PIN)
    }

    /// A token with another user PIN.
    pub fn with_pin(label: &str, pin: &str) -> Self {
        require("softhsm2-util", "softhsm2");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(repo().join("softhsm/setup-token"))
            .arg(dir.path())
            .arg(label)
            .env("HWPASS_PIN", pin)
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
        self.write_config_with(uri_path, module, "", policy);
    }

    /// [`Self::write_config`] with more lines in `[key]`.
    fn write_config_with(&self, uri_path: &str, module: &str, hsm_extra: &str, policy: &str) {
        let text = format!(
            "issuer = \"test-issuer\"\naudience = \"analytics-desktop\"\naudit_log = \"audit/audit.jsonl\"\n\n[key]\nuri = \"pkcs11:{uri_path}?module-path={module}\"\n{hsm_extra}\n[policy]\n{policy}"
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Rewrites the config for key rotation: the signing key's label and the other trusted
    /// labels.
    pub fn write_rotation_config(&self, object: &str, also_trusted: &[&str]) {
        let also: Vec<String> = also_trusted.iter().map(|l| format!("{l:?}")).collect();
        self.write_config_with(
            &format!("token=hwpass-test;object={object}"),
            MODULE,
            &format!("also_trusted = [{}]\n", also.join(", ")),
            DEFAULT_POLICY,
        );
    }

    /// `hwpass-issuer denylist -o FILE` at `now`; returns the file.
    pub fn denylist(&self, name: &str, now: i64) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut cmd = self.cmd(now);
        cmd.args(["denylist", "-o"]).arg(&path);
        run(cmd, None).ok();
        path
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
    /// Passed as HWPASS_TCTI (so the environment path is exercised); `--tcti` wins over it.
    pub tcti: Option<String>,
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
            tcti: None,
        }
    }

    pub fn enrolled(trust: &Path) -> Self {
        Self::enrolled_at(trust, NOW)
    }

    /// A desktop enrolled with the software backend at `now`.
    pub fn enrolled_at(trust: &Path, now: i64) -> Self {
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
            now,
        )
        .ok();
        d
    }

    pub fn cmd(&self, now: i64) -> Command {
        let mut cmd = bin("hwpass", now);
        cmd.env("HWPASS_MACHINE_ID_FILE", &self.machine_id)
            .arg("--state-dir")
            .arg(&self.state);
        if let Some(t) = &self.tcti {
            cmd.env("HWPASS_TCTI", t);
        }
        cmd
    }

    /// The TPM key blobs recorded in this desktop's `device.json`.
    pub fn tpm_key_file(&self) -> hwpass::desktop::internal::TpmKeyFile {
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.state.join("device.json")).unwrap())
                .unwrap();
        serde_json::from_value(record["tpm"].clone()).unwrap()
    }

    /// Another state directory (and machine identity) on the same TPM as `other`.
    pub fn clone_with_tcti(&self, other: &Desktop) -> Desktop {
        let mut d = Desktop::new();
        d.tcti = other.tcti.clone();
        d
    }

    /// A desktop enrolled with the TPM backend on `tpm`.
    pub fn with_tpm(trust: &Path, tpm: &Swtpm) -> Self {
        let mut d = Self::new();
        d.tcti = Some(tpm.tcti());
        let r = d
            .run(
                &[
                    "enroll",
                    "--backend",
                    "tpm",
                    "--trust",
                    trust.to_str().unwrap(),
                ],
                None,
                NOW,
            )
            .ok();
        assert!(r.stdout.contains("tpm device key"), "{r:?}");
        d
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

/// A swtpm TPM 2.0 simulator of its own: temp state dir, free loopback ports, killed on drop.
pub struct Swtpm {
    pub state: TempDir,
    child: Option<std::process::Child>,
    pub port: u16,
}

/// A free loopback port, never handed to another test of this process.
pub fn free_port() -> u16 {
    free_port_pair()
}

fn free_port_pair() -> u16 {
    // Ports handed out from one counter per test process (starting at a random even port), so
    // parallel tests never pick the same pair; each pair is checked free before use. (Asking
    // the OS for port 0 and releasing it let two swtpm instances race for one port.) The
    // counter stays below the kernel's ephemeral range: there, an outgoing connection of any
    // test (or a port-0 listener) could take a chosen port before its server binds it.
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 2_000, 65_000);
    let pairs = (ephemeral - LOW) / 2;
    if NEXT.load(Ordering::SeqCst) == 0 {
        let mut r = [0u8; 2];
        getrandom::getrandom(&mut r).expect("random");
        let start = 1 + u32::from(u16::from_be_bytes(r)) % pairs;
        let _ = NEXT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    }
    for _ in 0..pairs {
        let port = (LOW + (NEXT.fetch_add(1, Ordering::SeqCst) % pairs) * 2) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no free pair of test ports below {ephemeral}");
}

impl Swtpm {
    pub fn start() -> Self {
        require("swtpm", "swtpm");
        Self::launched(tempfile::tempdir().expect("tempdir"))
    }

    fn launched(state: TempDir) -> Self {
        let mut tpm = Self {
            state,
            child: None,
            port: 0,
        };
        tpm.launch();
        tpm
    }

    /// A TPM provisioned like a manufactured one by `swtpm_setup --create-ek-cert`: an RSA EK
    /// at 0x81010001 with its certificate (signed by `ca`) in NV index 0x01c00002.
    pub fn provisioned(ca: &LocalCa) -> Self {
        require("swtpm_setup", "swtpm-tools");
        let state = tempfile::tempdir().expect("tempdir");
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(state.path())
            .arg("--config")
            .arg(ca.dir.path().join("swtpm_setup.conf"))
            .output()
            .expect("run swtpm_setup");
        assert!(
            out.status.success(),
            "swtpm_setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::launched(state)
    }

    fn launch(&mut self) {
        for _ in 0..10 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", self.state.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn swtpm");
            // Wait until it listens (or exits because a port was taken), polling readiness.
            for _ in 0..500 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.child = Some(child);
                    self.port = port;
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Stops the simulator (the TPM "stops answering").
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts the simulator on the same state (a reboot of the machine).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs a tpm2-tools command against this TPM.
    pub fn tool(&self, args: &[&str]) -> Run {
        require("tpm2_getcap", "tpm2-tools");
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+none");
        run(cmd, None)
    }

    /// Loads a key from tpm2-tools blob files under the SRK at 0x81000001 into context `ctx`.
    pub fn load_under_srk(&self, public: &str, private: &str, ctx: &str) -> Run {
        self.tool(&[
            "tpm2_load",
            "-C",
            "0x81000001",
            "-u",
            public,
            "-r",
            private,
            "-c",
            ctx,
        ])
    }

    /// Transient object handles currently loaded.
    pub fn transient_handles(&self) -> Vec<String> {
        let r = self.tool(&["tpm2_getcap", "handles-transient"]).ok();
        r.stdout
            .lines()
            .map(|l| l.trim_start_matches("- ").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP proxy in front of a TPM that forwards `commands` whole TPM commands and
/// their responses, then cuts the connection: a TPM that stops answering mid-operation.
pub struct CuttingProxy {
    pub port: u16,
}

impl CuttingProxy {
    pub fn start(target: u16, commands: usize) -> Self {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let port = free_port_pair();
        let data = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
        let ctrl = TcpListener::bind(("127.0.0.1", port + 1)).expect("bind proxy ctrl");
        // The control channel is passed through untouched. swtpm serves one control
        // connection at a time, so each end is shut down as soon as the other closes.
        std::thread::spawn(move || {
            for client in ctrl.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target + 1)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        // The swtpm TCTI opens a connection per command (and one idle one at start-up), so each
        // connection gets its own thread; the command count is shared.
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::spawn(move || {
            for client in data.incoming().flatten() {
                let forwarded = forwarded.clone();
                std::thread::spawn(move || {
                    let mut client = client;
                    // TPM command/response: a 10-byte header whose bytes 2..6 are the size.
                    let read_message = |from: &mut TcpStream| -> Option<Vec<u8>> {
                        let mut message = vec![0u8; 10];
                        from.read_exact(&mut message).ok()?;
                        let size =
                            u32::from_be_bytes([message[2], message[3], message[4], message[5]])
                                as usize;
                        message.resize(size.max(10), 0);
                        from.read_exact(&mut message[10..]).ok()?;
                        Some(message)
                    };
                    while let Some(command) = read_message(&mut client) {
                        let n = forwarded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if n >= commands {
                            // Hang up without an answer.
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        // One connection per command, as the TCTI does; one write, since swtpm
                        // takes each read as a whole command.
                        let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                            return;
                        };
                        if server.write_all(&command).is_err() {
                            return;
                        }
                        let Some(response) = read_message(&mut server) else {
                            return;
                        };
                        if client.write_all(&response).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

/// Copies a flat directory (a desktop state dir), as a person copying it to another machine.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A TPM manufacturer's CA of its own (swtpm-localca state in a temp dir).
pub struct LocalCa {
    pub dir: TempDir,
}

impl LocalCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = d.join("ca");
        std::fs::create_dir_all(&ca).unwrap();
        std::fs::write(
            d.join("swtpm-localca.conf"),
            format!(
                "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
                ca.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("swtpm-localca.options"),
            "--platform-manufacturer hwpass-test\n--platform-version 2.1\n--platform-model swtpm\n",
        )
        .unwrap();
        std::fs::write(
            d.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {0}/swtpm-localca.conf\ncreate_certs_tool_options = {0}/swtpm-localca.options\n",
                d.display()
            ),
        )
        .unwrap();
        Self { dir }
    }

    /// The root CA certificate (self-signed); it exists once a TPM was provisioned.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("ca/swtpm-localca-rootca-cert.pem")
    }

    /// The intermediate CA certificate that signs the EK certificates.
    pub fn intermediate(&self) -> PathBuf {
        self.dir.path().join("ca/issuercert.pem")
    }

    /// The CA certificates (root and intermediate); they exist once a TPM was provisioned.
    pub fn roots(&self) -> Vec<PathBuf> {
        let ca = self.dir.path().join("ca");
        vec![
            ca.join("swtpm-localca-rootca-cert.pem"),
            ca.join("issuercert.pem"),
        ]
    }
}

impl Issuer {
    /// An issuer that verifies attestation evidence.
    pub fn with_attestation(roots: &[PathBuf], allowlist: Option<&Path>, require: bool) -> Self {
        let issuer = Self::new();
        let roots: Vec<String> = roots
            .iter()
            .map(|r| format!("{:?}", r.display().to_string()))
            .collect();
        let mut section = format!(
            "\n[attestation]\nrequire = {require}\nek_roots = [{}]\n",
            roots.join(", ")
        );
        if let Some(list) = allowlist {
            section.push_str(&format!(
                "ek_allowlist = {:?}\n",
                list.display().to_string()
            ));
        }
        let mut text = std::fs::read_to_string(&issuer.config).unwrap();
        text.push_str(&section);
        std::fs::write(&issuer.config, text).unwrap();
        issuer
    }
}

impl Issuer {
    /// Replaces the config's `[attestation]` section (it must be the last one) with `section`
    /// (the lines after the header).
    pub fn set_attestation(&self, section: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let base = text.split("\n[attestation]\n").next().unwrap().to_string();
        std::fs::write(&self.config, format!("{base}\n[attestation]\n{section}")).unwrap();
    }

    /// An issuer whose EK trust anchors are `roots`, with `intermediates` to build paths
    /// (`ek_roots` and `ek_intermediates`).
    pub fn with_ek_chain(roots: &[PathBuf], intermediates: &[PathBuf], extra: &str) -> Self {
        let issuer = Self::new();
        let list = |paths: &[PathBuf]| {
            paths
                .iter()
                .map(|p| format!("{:?}", p.display().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        issuer.set_attestation(&format!(
            "require = true\nek_roots = [{}]\nek_intermediates = [{}]\n{extra}",
            list(roots),
            list(intermediates)
        ));
        issuer
    }
}

/// Writes a TPM2B file (a 16-bit size, then the contents), the format tpm2-tools reads for
/// public and private blobs.
pub fn write_tpm2b(path: &Path, body: &[u8]) {
    let mut bytes = (body.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    std::fs::write(path, bytes).unwrap();
}

/// A person at the test OpenID Provider (tests/oidc/provider.mjs): `id` is the `sub`.
#[derive(Debug, Clone)]
pub struct IdpUser {
    pub id: String,
    pub email: String,
    pub preferred_username: String,
    pub groups: Vec<String>,
    pub password: String,
}

impl IdpUser {
    /// `id` with email `id@corp.example`, preferred_username `id` and a random password.
    pub fn new(id: &str, groups: &[&str]) -> Self {
        let mut pw = [0u8; 12];
        getrandom::getrandom(&mut pw).expect("random");
        Self {
            id: id.into(),
            email: format!("{id}@corp.example"),
            preferred_username: id.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            password: format!("pw-{}", hex::encode(pw)),
        }
    }
}

/// What an ID token from the provider is made to be wrong in (all of them, from both clients,
/// until switched off). All but `BadSignature` and `UnknownKey` carry a valid signature by a
/// key in the provider's JWKS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// `aud` is `hostile-other-client`.
    WrongAudience,
    /// `exp` 5 minutes in the past (`iat` 10 minutes).
    Expired,
    /// `iss` is the issuer with `/hostile` appended.
    WrongIssuer,
    /// `nonce` is `hostile-nonce` (present even when none was sent).
    WrongNonce,
    /// One bit of the signature flipped.
    BadSignature,
    /// Signed by a key the JWKS never publishes (kid `hostile-unpublished-key`).
    UnknownKey,
}

impl Hostile {
    pub const ALL: [Hostile; 6] = [
        Hostile::WrongAudience,
        Hostile::Expired,
        Hostile::WrongIssuer,
        Hostile::WrongNonce,
        Hostile::BadSignature,
        Hostile::UnknownKey,
    ];
    /// What hwpass's refusal of such an ID token says it is (the service's sign-in callback
    /// and `/v1/self/passes` alike).
    pub fn refusal(self) -> &'static str {
        match self {
            Hostile::WrongAudience => "made for another application",
            Hostile::Expired => "expired",
            Hostile::WrongIssuer => "issued by another provider",
            Hostile::WrongNonce => "nonce does not match",
            Hostile::BadSignature => "signature does not verify",
            Hostile::UnknownKey => "key the provider does not publish",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hostile::WrongAudience => "wrong_audience",
            Hostile::Expired => "expired",
            Hostile::WrongIssuer => "wrong_issuer",
            Hostile::WrongNonce => "wrong_nonce",
            Hostile::BadSignature => "bad_signature",
            Hostile::UnknownKey => "unknown_key",
        }
    }
}

/// How to start an [`Idp`] besides its users.
#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// Redirect URIs of the confidential web client (the issuing service's callback).
    pub web_redirect_uris: Vec<String>,
    /// oidc-provider `ttl` entries in seconds (`IdToken`, `AccessToken`, `AuthorizationCode`,
    /// `DeviceCode`, `Interaction`, `Session`, `Grant`, `RefreshToken`); the script's defaults
    /// are 300 s (60 s for codes).
    pub ttl: Vec<(&'static str, u64)>,
    /// Hostile ID tokens from the start (see also [`Idp::set_hostile`]).
    pub hostile: Option<Hostile>,
    /// Show a consent page (buttons `#approve`, `#deny`); by default the apps are
    /// admin-consented, as corporate apps are.
    pub consent: bool,
    /// The RFC 8628 `interval` the device authorization response announces, in seconds.
    pub device_poll_interval: u64,
    /// The provider's clock starts at this time (epoch seconds, e.g. [`NOW`]) and runs forward,
    /// so its tokens live on the timeline of binaries run with `HWPASS_FAKE_NOW`; `None`: the
    /// real clock.
    pub now: Option<i64>,
}

impl Default for IdpOptions {
    fn default() -> Self {
        Self {
            web_redirect_uris: Vec::new(),
            ttl: Vec::new(),
            hostile: None,
            consent: false,
            device_poll_interval: 1,
            now: None,
        }
    }
}

/// A real OpenID Provider (node-oidc-provider, tests/oidc/) of its own on a free loopback port,
/// killed on drop. Two clients: the confidential web client [`Idp::WEB_CLIENT_ID`]
/// (authorization code + PKCE, `client_secret_basic` or `_post`) and the public native desktop
/// client [`Idp::DESKTOP_CLIENT_ID`] (device authorization grant, refresh tokens). ID tokens
/// carry `email`, `preferred_username` (scopes `email`, `profile`) and `groups` (scope
/// `groups`); PKCE S256 is required. tests/oidc/README.md documents the pages' element ids.
pub struct Idp {
    child: Option<std::process::Child>,
    dir: TempDir,
    config: PathBuf,
    issuer: String,
    port: u16,
    control_token: String,
    web_secret: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    pub users: Vec<IdpUser>,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp").field("issuer", &self.issuer).finish()
    }
}

impl Idp {
    pub const WEB_CLIENT_ID: &'static str = "hwpass-web";
    pub const DESKTOP_CLIENT_ID: &'static str = "hwpass-desktop";
    /// How long start-up may take (node, key generation) before the test fails.
    const START_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

    /// An IdP with `users` whose web client accepts `web_redirect_uris`.
    pub fn start(users: &[IdpUser], web_redirect_uris: &[&str]) -> Self {
        Self::start_with(
            users,
            IdpOptions {
                web_redirect_uris: web_redirect_uris.iter().map(|u| u.to_string()).collect(),
                ..IdpOptions::default()
            },
        )
    }

    pub fn start_with(users: &[IdpUser], options: IdpOptions) -> Self {
        assert!(
            Self::node().exists(),
            "tests/oidc/node is missing: run ci/setup-oidc (ci/setup runs it)"
        );
        let oidc = repo().join("tests/oidc");
        let wanted: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(oidc.join("package.json")).unwrap())
                .unwrap();
        let wanted = wanted["dependencies"]["oidc-provider"].as_str().unwrap();
        let installed =
            std::fs::read_to_string(oidc.join("node_modules/oidc-provider/package.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let installed = installed.as_ref().and_then(|v| v["version"].as_str());
        assert_eq!(
            installed,
            Some(wanted),
            "oidc-provider {wanted} is not installed in tests/oidc/node_modules: run ci/setup \
             (it runs `npm ci` there; needs the Debian packages nodejs and npm)"
        );
        let random = |n: usize| {
            let mut b = vec![0u8; n];
            getrandom::getrandom(&mut b).expect("random");
            hex::encode(b)
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let web_secret = random(32);
        let control_token = random(16);
        let user_json: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "id": u.id, "email": u.email, "preferred_username": u.preferred_username,
                    "groups": u.groups, "password": u.password,
                })
            })
            .collect();
        let ttl: serde_json::Map<String, serde_json::Value> = options
            .ttl
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let config = serde_json::json!({
            "users": user_json,
            "clients": [
                {
                    "client_id": Self::WEB_CLIENT_ID,
                    "client_name": "hwpass issuing service",
                    "client_secret": web_secret,
                    "redirect_uris": options.web_redirect_uris,
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                },
                {
                    "client_id": Self::DESKTOP_CLIENT_ID,
                    "client_name": "hwpass desktop",
                    "application_type": "native",
                    "token_endpoint_auth_method": "none",
                    "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
                    "response_types": [],
                    "redirect_uris": [],
                },
            ],
            "ttl": ttl,
            "hostile": options.hostile.map(Hostile::as_str),
            "consent": options.consent,
            "device_poll_interval": options.device_poll_interval,
            "now": options.now,
            "control_token": control_token,
        });
        let path = dir.path().join("idp.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).expect("write config");
        let mut idp = Self {
            child: None,
            dir,
            config: path,
            issuer: String::new(),
            port: 0,
            control_token,
            web_secret,
            log: Default::default(),
            users: users.to_vec(),
        };
        idp.launch(0);
        idp
    }

    /// The Node.js that ci/setup-oidc chose for the provider (the system's, or a pinned one
    /// when the system's is older than oidc-provider needs).
    fn node() -> PathBuf {
        repo().join("tests/oidc/node")
    }

    fn launch(&mut self, port: u16) {
        use std::io::BufRead as _;
        let mut child = Command::new(Self::node())
            .arg(repo().join("tests/oidc/provider.mjs"))
            .arg(port.to_string())
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let mut log = log.lock().unwrap();
                log.push_str(&line.unwrap_or_default());
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let first = rx.recv_timeout(Self::START_DEADLINE).unwrap_or_default();
        let Some(issuer) = first.trim().strip_prefix("ready ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the OpenID Provider did not start: {first:?}\n{}",
                self.log()
            );
        };
        self.port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the issuer URL");
        self.issuer = issuer.to_string();
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT`, exactly as the provider writes `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn web_client_secret(&self) -> &str {
        &self.web_secret
    }

    /// The web client's secret in a file of its own (mode 0600), as a service config names it.
    pub fn web_client_secret_file(&self) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.dir.path().join("web-client-secret");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("write secret file");
        f.write_all(self.web_secret.as_bytes()).unwrap();
        path
    }

    /// The user with this id.
    pub fn user(&self, id: &str) -> &IdpUser {
        self.users
            .iter()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("no IdP user {id}"))
    }

    /// An agent for the provider's endpoints (no redirects followed, bounded time).
    pub fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(std::time::Duration::from_secs(10))
            .build()
    }

    /// The discovery document.
    pub fn discovery(&self) -> serde_json::Value {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let body = Self::agent()
            .get(&url)
            .call()
            .expect("discovery")
            .into_string()
            .unwrap();
        serde_json::from_str(&body).expect("discovery is JSON")
    }

    /// Makes every ID token from now on hostile in this way (`None`: genuine again).
    pub fn set_hostile(&self, mode: Option<Hostile>) {
        let resp = Self::agent()
            .post(&format!("{}/__control/hostile", self.issuer))
            .set("Authorization", &format!("Bearer {}", self.control_token))
            .set("Content-Type", "application/json")
            .send_string(&serde_json::json!({ "mode": mode.map(Hostile::as_str) }).to_string())
            .expect("set hostile mode");
        assert_eq!(resp.status(), 204);
    }

    /// Registers one more confidential web client through dynamic client registration (RFC
    /// 7591), for a redirect URI known only once the service listens; returns its id and
    /// secret.
    pub fn register_web_client(&self, redirect_uri: &str) -> (String, String) {
        let resp = Self::agent()
            .post(&format!("{}/reg", self.issuer))
            .set("Authorization", &format!("Bearer {}", self.control_token))
            .set("Content-Type", "application/json")
            .send_string(
                &serde_json::json!({
                    "redirect_uris": [redirect_uri],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "client_name": "hwpass issuing service (registered)",
                })
                .to_string(),
            )
            .expect("register client");
        let v: serde_json::Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
        (
            v["client_id"].as_str().unwrap().to_string(),
            v["client_secret"].as_str().unwrap().to_string(),
        )
    }

    /// Stops the provider (the IdP is down); [`Self::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the provider again on the same port and issuer, with the same users and clients
    /// but new signing keys (new `kid`s: a key rotation) and no sessions or codes.
    pub fn restart(&mut self) {
        self.stop();
        let issuer = std::mem::take(&mut self.issuer);
        self.launch(self.port);
        assert_eq!(self.issuer, issuer, "same issuer after restart");
    }

    /// What the provider logged: warnings, and method and path of each request (never a query
    /// string, a body or a secret).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- OpenID Provider log ({}):\n{}", self.issuer, self.log());
        }
    }
}

/// Runs tests/browser/idp_flow.py; returns its JSON summary.
pub fn idp_browser(
    mode: &str,
    url: &str,
    user: &IdpUser,
    files: &[(&str, &str)],
) -> serde_json::Value {
    require_browser();
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("username.txt"), &user.preferred_username).unwrap();
    std::fs::write(work.path().join("password.txt"), &user.password).unwrap();
    for (name, text) in files {
        std::fs::write(work.path().join(name), text).unwrap();
    }
    // Debian's interpreter, where python3-selenium is installed (not a pyenv or venv one).
    let out = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/browser/idp_flow.py"))
        .args([mode, url])
        .arg(work.path())
        .arg(&artifacts)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser flow failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary ({e}):\n{stdout}\n{stderr}"))
}

/// Fails (never skips) unless headless Chromium, chromedriver and Selenium are installed.
pub fn require_browser() {
    require("chromium", "chromium");
    require("chromedriver", "chromium-driver");
    assert!(
        Path::new("/usr/lib/python3/dist-packages/selenium").is_dir(),
        "selenium is not installed: install the Debian package python3-selenium (run ci/setup)"
    );
}
