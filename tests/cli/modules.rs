//! PKCS#11 modules for the HSM conformance suite, each started hermetically in a temp dir of
//! its own and stopped on drop: SoftHSM 2; SoftHSM behind `p11-kit server` and the p11-kit
//! remote client module (the shape of a network HSM client); Kryoptic (built once by
//! `ci/setup-kryoptic`); tpm2-pkcs11 on a swtpm of its own behind tpm2-abrmd on a private
//! D-Bus. A module that is missing fails its test with the package or script that installs it.

use std::ffi::OsString;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::*;

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
pub const TPM2_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";
/// Kept in step with VERSION in ci/setup-kryoptic.
pub const KRYOPTIC_VERSION: &str = "1.5.4";
/// At least 8 characters: Kryoptic's minimum PIN length.
pub const MODULE_PIN: &str = "4711-conformance";
const SO_PIN: &str = "so-4711-conformance";

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SoftHsm,
    P11Kit,
    Kryoptic,
    Tpm2Pkcs11,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::SoftHsm => "softhsm",
            Kind::P11Kit => "p11kit",
            Kind::Kryoptic => "kryoptic",
            Kind::Tpm2Pkcs11 => "tpm2_pkcs11",
        }
    }
}

/// The Kryoptic module `ci/setup-kryoptic` built (or `HWPASS_KRYOPTIC_MODULE`).
pub fn kryoptic_module() -> PathBuf {
    if let Some(p) = std::env::var_os("HWPASS_KRYOPTIC_MODULE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("HWPASS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hwpass")))
        .expect("HOME or HWPASS_CACHE is set");
    cache
        .join(format!("kryoptic-{KRYOPTIC_VERSION}"))
        .join("libkryoptic_pkcs11.so")
}

/// One running module with one initialised token (label `token`, user PIN [`MODULE_PIN`]).
pub struct Module {
    pub kind: Kind,
    pub dir: TempDir,
    pub module_path: PathBuf,
    pub token: String,
    /// What a process using the module needs in its environment.
    pub env: Vec<(String, OsString)>,
    /// Helper processes, stopped in reverse order on drop.
    children: Vec<(&'static str, Child)>,
    softhsm: Option<SoftHsm>,
    swtpm: Option<Swtpm>,
}

impl Module {
    pub fn start(kind: Kind) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = format!("hwpass-{}", kind.name());
        let mut m = Module {
            kind,
            dir,
            module_path: PathBuf::new(),
            token,
            env: Vec::new(),
            children: Vec::new(),
            softhsm: None,
            swtpm: None,
        };
        match kind {
            Kind::SoftHsm => m.start_softhsm(),
            Kind::P11Kit => m.start_p11kit(),
            Kind::Kryoptic => m.start_kryoptic(),
            Kind::Tpm2Pkcs11 => m.start_tpm2(),
        }
        m
    }

    fn set_env(&mut self, name: &str, value: impl Into<OsString>) {
        self.env.push((name.to_string(), value.into()));
    }

    fn softhsm_token(&mut self) -> PathBuf {
        let hsm = SoftHsm::with_pin(&self.token, MODULE_PIN);
        let conf = hsm.conf.clone();
        self.softhsm = Some(hsm);
        conf
    }

    fn start_softhsm(&mut self) {
        let conf = self.softhsm_token();
        self.module_path = SOFTHSM_MODULE.into();
        self.set_env("SOFTHSM2_CONF", conf);
    }

    /// SoftHSM served by `p11-kit server` on a Unix socket in the temp dir; clients load the
    /// p11-kit remote module and never see SoftHSM's configuration.
    fn start_p11kit(&mut self) {
        require("p11-kit", "p11-kit");
        assert!(
            Path::new(P11KIT_CLIENT).exists(),
            "{P11KIT_CLIENT} is missing: install the Debian package p11-kit-modules (run ci/setup)"
        );
        let conf = self.softhsm_token();
        let socket = self.dir.path().join("p11-kit.sock");
        let child = Command::new("p11-kit")
            .args([
                "server",
                "--foreground",
                "--provider",
                SOFTHSM_MODULE,
                "--name",
            ])
            .arg(&socket)
            .arg(format!("pkcs11:token={}", self.token))
            .env("SOFTHSM2_CONF", &conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn p11-kit server");
        self.children.push(("p11-kit server", child));
        let ready = poll(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        assert!(
            ready,
            "p11-kit server did not listen on {}",
            socket.display()
        );
        self.module_path = P11KIT_CLIENT.into();
        self.set_env(
            "P11_KIT_SERVER_ADDRESS",
            format!("unix:path={}", socket.display()),
        );
    }

    /// Kryoptic with a SQLite token store in the temp dir, initialised with pkcs11-tool. Its EC
    /// points stay in Kryoptic's default (raw) encoding: hwpass must handle both.
    fn start_kryoptic(&mut self) {
        require("pkcs11-tool", "opensc");
        let module = kryoptic_module();
        assert!(
            module.exists(),
            "the Kryoptic module {} is missing: run ci/setup (it builds kryoptic {KRYOPTIC_VERSION} once with ci/setup-kryoptic)",
            module.display()
        );
        let conf = self.dir.path().join("kryoptic.conf");
        std::fs::write(
            &conf,
            format!(
                "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                self.dir.path().join("token.sql").display()
            ),
        )
        .unwrap();
        self.module_path = module;
        self.set_env("KRYOPTIC_CONF", conf);
        self.pkcs11_tool(&[
            "--init-token",
            "--label",
            &self.token.clone(),
            "--so-pin",
            SO_PIN,
        ]);
        self.pkcs11_tool(&[
            "--token-label",
            &self.token.clone(),
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--init-pin",
            "--pin",
            MODULE_PIN,
        ]);
    }

    /// tpm2-pkcs11 on a swtpm of its own, through tpm2-abrmd (straight to swtpm, tpm2-pkcs11
    /// fills the TPM's object slots) on a private D-Bus session bus; the token store in the
    /// temp dir.
    fn start_tpm2(&mut self) {
        require("tpm2-abrmd", "tpm2-abrmd");
        require(
            "tpm2_ptool",
            "python3-tpm2-pkcs11-tools (and libtpm2-pkcs11-tools)",
        );
        require("dbus-daemon", "dbus-daemon");
        assert!(
            Path::new(TPM2_MODULE).exists(),
            "{TPM2_MODULE} is missing: install the Debian package libtpm2-pkcs11-1 (run ci/setup)"
        );
        let tpm = Swtpm::start();
        let mut dbus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dbus-daemon");
        let mut address = String::new();
        std::io::BufReader::new(dbus.stdout.take().expect("stdout"))
            .read_line(&mut address)
            .expect("read the D-Bus address");
        let address = address.trim().to_string();
        self.children.push(("dbus-daemon", dbus));
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        let abrmd = Command::new("tpm2-abrmd")
            .args(["--session", "--allow-root"])
            .arg(format!("--tcti={}", tpm.tcti()))
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tpm2-abrmd");
        self.children.push(("tpm2-abrmd", abrmd));
        self.swtpm = Some(tpm);
        let store = self.dir.path().join("tpm2-pkcs11");
        std::fs::create_dir_all(&store).unwrap();
        let tcti = "tabrmd:bus_type=session";
        self.set_env("DBUS_SESSION_BUS_ADDRESS", &address);
        self.set_env("TPM2_PKCS11_TCTI", tcti);
        self.set_env("TPM2TOOLS_TCTI", tcti);
        self.set_env("TPM2_PKCS11_STORE", &store);
        self.set_env("TSS2_LOG", "all+none");
        self.set_env("TPM2_PKCS11_LOG_LEVEL", "0");
        // tpm2-abrmd registers its bus name once it has talked to the TPM.
        let ready = poll(Duration::from_secs(20), || {
            self.tool("tpm2_getcap", &["properties-fixed"]).code == 0
        });
        assert!(ready, "tpm2-abrmd did not come up on {address}");
        let path = store.display().to_string();
        let init = self.tool("tpm2_ptool", &["init", "--path", &path]);
        assert_eq!(init.code, 0, "tpm2_ptool init: {init:?}");
        let add = self.tool(
            "tpm2_ptool",
            &[
                "addtoken",
                "--pid=1",
                &format!("--sopin={SO_PIN}"),
                &format!("--userpin={MODULE_PIN}"),
                &format!("--label={}", self.token),
                "--path",
                &path,
            ],
        );
        assert_eq!(add.code, 0, "tpm2_ptool addtoken: {add:?}");
        self.module_path = TPM2_MODULE.into();
    }

    /// Runs a tool with the module's environment.
    pub fn tool(&self, program: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        run(cmd, None)
    }

    fn pkcs11_tool(&self, args: &[&str]) {
        let mut all = vec!["--module", self.module_path.to_str().unwrap()];
        all.extend_from_slice(args);
        let r = self.tool("pkcs11-tool", &all);
        assert_eq!(r.code, 0, "pkcs11-tool {args:?}: {r:?}");
    }

    /// The key URI of `object` in this module's token.
    /// The process id of a helper (`p11-kit server`, …).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id())
    }

    pub fn uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={object}?module-path={}",
            self.token,
            self.module_path.display()
        )
    }

    /// TPM2_PT_LOCKOUT_COUNTER: the TPM's count of failed authorisations (tpm2-pkcs11 only).
    pub fn tpm_lockout_counter(&self) -> u64 {
        let r = self.tool("tpm2_getcap", &["properties-variable"]);
        assert_eq!(r.code, 0, "{r:?}");
        // "TPM2_PT_LOCKOUT_COUNTER: 0x1"
        let value = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
            .unwrap_or_else(|| panic!("no TPM2_PT_LOCKOUT_COUNTER in {r:?}"));
        u64::from_str_radix(value.trim().trim_start_matches("0x"), 16).unwrap()
    }

    /// Takes the token away the way it goes missing for this module: SoftHSM's token files
    /// removed, the p11-kit server stopped (a network HSM out of reach), Kryoptic's store
    /// removed, the TPM's resource manager stopped.
    pub fn take_token_away(&mut self) {
        match self.kind {
            Kind::SoftHsm => {
                let conf = &self.softhsm.as_ref().unwrap().conf;
                let tokens = conf.parent().unwrap().join("tokens");
                std::fs::remove_dir_all(&tokens).unwrap();
                std::fs::create_dir_all(&tokens).unwrap();
            }
            Kind::P11Kit => self.stop("p11-kit server"),
            Kind::Kryoptic => std::fs::remove_file(self.dir.path().join("token.sql")).unwrap(),
            Kind::Tpm2Pkcs11 => self.stop("tpm2-abrmd"),
        }
    }

    fn stop(&mut self, name: &str) {
        let i = self
            .children
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no {name} running"));
        let (_, mut child) = self.children.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.swtpm.take());
    }
}

/// Calls `ready` until it says yes or `limit` passes (polling a readiness condition, not
/// sleeping in place of one).
pub fn poll(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
