//! Fixtures for the PostgreSQL store: a real PostgreSQL per test (initdb as the `postgres`
//! user in a temp dir, `pg_ctl` on a free loopback port, stopped on drop), a read-only standby
//! made from it with `pg_basebackup`, and an issuer whose config names the database, with its
//! key in a token reached directly (SoftHSM) or through `p11-kit server` (shared by replicas).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::common::*;
use crate::modules::{Kind, Module, MODULE_PIN};
use crate::service::{admin_block, Server};

/// The newest PostgreSQL server programs installed (`/usr/lib/postgresql/<major>/bin`).
fn pg_bin() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok().map(|d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
    });
    let bin = versions
        .flatten()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file());
    bin.unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/initdb): install the Debian package postgresql (run ci/setup)")
    })
}

/// A port nobody listens on now (the kernel's choice, released at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One PostgreSQL server of its own: a data directory in a temp dir owned by `postgres`,
/// listening on 127.0.0.1 and on a Unix socket in that dir. The role `hwpass` (password
/// [`Postgres::password`]) owns the database `hwpass`.
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    running: bool,
}

impl Postgres {
    pub fn start() -> Self {
        let bin = pg_bin();
        require("runuser", "util-linux");
        let dir = Self::postgres_dir();
        let mut pw = [0u8; 12];
        getrandom::getrandom(&mut pw).unwrap();
        let mut pg = Self {
            dir,
            bin,
            port: 0,
            password: hex::encode(pw),
            running: false,
        };
        let data = pg.data();
        pg.as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                // A cluster made for one test: its files need not survive an OS crash (the
                // server itself keeps fsync on).
                "--no-sync",
            ],
        );
        pg.launch();
        pg.sql(
            "postgres",
            &format!("CREATE ROLE hwpass LOGIN PASSWORD '{}'", pg.password),
        );
        pg.sql("postgres", "CREATE DATABASE hwpass OWNER hwpass");
        pg
    }

    /// A hot standby of `primary` (`pg_basebackup -R`, streaming): read-only, on its own port.
    pub fn standby_of(primary: &Postgres) -> Self {
        let dir = Self::postgres_dir();
        let mut pg = Self {
            dir,
            bin: primary.bin.clone(),
            port: 0,
            password: primary.password.clone(),
            running: false,
        };
        let data = pg.data();
        pg.as_postgres(
            "pg_basebackup",
            &[
                "-h",
                primary.socket_dir().to_str().unwrap(),
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        pg.launch();
        let r = pg.sql("hwpass", "SELECT pg_is_in_recovery()");
        assert_eq!(r.stdout.trim(), "t", "a standby: {r:?}");
        pg
    }

    /// A temp dir the `postgres` user owns (initdb refuses to run as root).
    fn postgres_dir() -> TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .output()
            .expect("chown");
        assert!(out.status.success(), "chown: {out:?}");
        dir
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn as_postgres(&self, program: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args);
        let r = run(cmd, None);
        assert_eq!(r.code, 0, "{program} {args:?}: {r:?}");
        r
    }

    /// Starts the server on a free port (another if that one was taken meanwhile).
    fn launch(&mut self) {
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                self.socket_dir().display()
            );
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]);
            let r = run(cmd, None);
            if r.code == 0 {
                self.port = port;
                self.running = true;
                return;
            }
            self.port = 0;
        }
        panic!("PostgreSQL did not start: {}", self.log());
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no checkpoint,
    /// recovery from the WAL at the next start).
    pub fn crash(&mut self) {
        if self.running {
            let data = self.data();
            self.as_postgres(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
            self.running = false;
        }
    }

    /// Crashes and starts again on the same port.
    pub fn restart(&mut self) {
        self.crash();
        self.launch();
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> Run {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]);
        let r = run(cmd, None);
        assert_eq!(r.code, 0, "psql {sql:?}: {r:?}");
        r
    }

    /// One number from a query on the `hwpass` database.
    pub fn count(&self, sql: &str) -> i64 {
        let r = self.sql("hwpass", sql);
        r.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: {r:?}"))
    }

    /// Turns TLS on with a new CA and a server certificate for 127.0.0.1 and `localhost`, and
    /// refuses TCP connections without it (`hostnossl … reject`); returns the CA's PEM file
    /// (outside the data directory).
    pub fn require_tls(&self) -> PathBuf {
        let dir = self.dir.path();
        test_server_pki(dir);
        let mut cmd = Command::new("chown");
        cmd.arg("postgres:postgres")
            .arg(dir.join("server.key"))
            .arg(dir.join("server.pem"));
        assert_eq!(run(cmd, None).code, 0);
        std::fs::set_permissions(
            dir.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let hba = self.data().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!(
                "hostnossl all all 127.0.0.1/32 reject\nhostnossl all all ::1/128 reject\n{rules}"
            ),
        )
        .unwrap();
        self.sql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET ssl_cert_file = '{}'",
                dir.join("server.pem").display()
            ),
        );
        self.sql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET ssl_key_file = '{}'",
                dir.join("server.key").display()
            ),
        );
        self.sql("postgres", "ALTER SYSTEM SET ssl = on");
        self.sql("postgres", "SELECT pg_reload_conf()");
        dir.join("ca.pem")
    }

    /// The URL of the `hwpass` database for `role` over TCP (no password in it).
    pub fn url(&self, role: &str) -> String {
        format!("postgresql://{role}@127.0.0.1:{}/hwpass", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = run(cmd, None);
        }
    }
}

/// An issuer whose config names a PostgreSQL database: its key in `module`'s token (SoftHSM,
/// or SoftHSM behind `p11-kit server` for replicas sharing it), the password in a 0600 file.
pub struct PgIssuer {
    pub dir: TempDir,
    pub config: PathBuf,
    pub module: Module,
    pub pg: Postgres,
    pub token: Option<String>,
}

impl PgIssuer {
    pub fn new(kind: Kind) -> Self {
        Self::with_store(kind, "", "hwpass")
    }

    /// With more lines in `[store]`, connecting as `role` (whose password is the `hwpass`
    /// role's).
    pub fn with_store(kind: Kind, store_extra: &str, role: &str) -> Self {
        let pg = Postgres::start();
        let module = Module::start(kind);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("issuer.toml");
        let issuer = Self {
            dir,
            config,
            module,
            pg,
            token: None,
        };
        issuer.write_password(&issuer.pg.password.clone());
        issuer.write_config(&issuer.pg.url(role), store_extra);
        issuer
    }

    pub fn write_password(&self, password: &str) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.dir.path().join("pg-password");
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{password}\n").as_bytes()).unwrap();
    }

    /// Writes the config for the database at `url` (keeping a `[serve]` section added by
    /// [`Self::serve_config`]).
    pub fn write_config(&self, url: &str, store_extra: &str) {
        let serve = std::fs::read_to_string(&self.config)
            .ok()
            .and_then(|t| t.find("\n[serve]\n").map(|i| t[i..].to_string()))
            .unwrap_or_default();
        let text = format!(
            "issuer = \"test-issuer\"\naudience = \"analytics-desktop\"\n\n[key]\nuri = \"{}\"\nmax_sessions = 4\n\n[policy]\n{DEFAULT_POLICY}\n[store]\npostgres = \"{url}\"\npassword_file = \"pg-password\"\nmax_connections = 8\n{store_extra}\n",
            self.module.uri("issuer-key")
        ) + &serve;
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn env(&self) -> Vec<(String, OsString)> {
        self.module.env.clone()
    }

    pub fn cmd(&self, now: i64) -> Command {
        let mut cmd = bin("hwpass-issuer", now);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd.env("HWPASS_PIN", MODULE_PIN)
            .arg("--config")
            .arg(&self.config);
        cmd
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = self.cmd(NOW);
        cmd.args(args);
        run(cmd, stdin)
    }

    /// keygen, jwks, db migrate; returns the trust bundle path.
    pub fn setup(&self) -> PathBuf {
        self.run(&["keygen"], None).ok();
        let jwks = self.run(&["jwks"], None).ok();
        let path = self.dir.path().join("issuer.jwks");
        std::fs::write(&path, &jwks.stdout).expect("write jwks");
        self.run(&["db", "migrate"], None).ok();
        path
    }

    /// Adds `[serve]` (with `extra`) and an admin to the config, once; returns the admin's
    /// token.
    pub fn serve_config(&mut self, extra: &str) -> String {
        if let Some(t) = &self.token {
            return t.clone();
        }
        let made = self.run(&["admin-token", "--name", "alice"], None).ok();
        let token = made.line();
        let snippet = admin_block(&made);
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(&format!(
            "\n[serve]\nhsm_sessions = 2\n{extra}\n{snippet}\n"
        ));
        std::fs::write(&self.config, config).unwrap();
        self.token = Some(token.clone());
        token
    }

    /// A replica: `serve` on a free loopback port.
    pub fn replica(&mut self, extra: &str) -> Server {
        let token = self.serve_config(extra);
        let mut cmd = self.cmd(NOW);
        cmd.env("HWPASS_LOG", "info")
            .args(["serve", "--listen", "127.0.0.1:0"]);
        Server::spawn_cmd(cmd, token)
    }

    /// `hwpass-issuer audit verify --json`.
    pub fn verify(&self) -> serde_json::Value {
        self.run(&["audit", "verify", "--json"], None).ok().json()
    }
}
