//! The PostgreSQL store: the audit log and its checkpoints, the revocation register, the signed
//! deny lists and the web sessions in one database that any number of issuer replicas share
//! (docs/replicas.md).
//!
//! - **Driver.** `tokio-postgres` through a `deadpool-postgres` pool of at most `[store]
//!   max_connections` connections per process, driven by a small tokio runtime of the store's
//!   own: the store traits are synchronous, and their callers are threads (the CLI, the
//!   service's blocking pool, its audit writer) — never async tasks, which could not block.
//! - **Schema.** Versioned migrations ([`schema`]) applied only by `hwpass-issuer db migrate`.
//!   A replica reads the schema version and never changes the schema, so it starts against a
//!   read-only standby, or with a role that has no DDL rights, and serves what needs no write.
//! - **Audit log** ([`audit`]): appends number their entries from one sequencer row in the same
//!   transaction; one replica at a time signs the checkpoints.
//! - **Register** ([`register`]): revocations raise the deny list's sequence number in the
//!   transaction that records them; a deny list is signed in the transaction that reads the
//!   register snapshot it carries, and kept for every replica to hand out.
//! - **Import** ([`import`]): an existing file store, verified, into an empty database.
//!
//! The password comes from a file named in the config, never from the URL, argv or logs.

pub(crate) mod audit;
pub(crate) mod import;
pub(crate) mod register;
pub(crate) mod schema;
pub(crate) mod sessions;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use self::import::Imported;
pub use self::schema::Migrated;

/// A database failure, as facts: what hwpass was doing, and what PostgreSQL (or the way to it)
/// said.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database could not be reached, or the connection broke (a restart, the network, a
    /// timeout).
    #[error("PostgreSQL {at} is unreachable ({doing}): {detail}")]
    Unavailable {
        /// The database (`user@host:port/dbname`, never a password).
        at: String,
        /// What hwpass was doing.
        doing: &'static str,
        /// The driver's or pool's message.
        detail: String,
    },
    /// The database refused a statement.
    #[error("PostgreSQL {at} refused ({doing}): {message} (SQLSTATE {code})")]
    Refused {
        /// The database.
        at: String,
        /// What hwpass was doing.
        doing: &'static str,
        /// The SQLSTATE code (`25006`: read-only transaction, `42501`: no privilege).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The database has no hwpass schema, or one of another version.
    #[error("PostgreSQL {at} {}", match found { None => format!("has no hwpass schema (this hwpass-issuer needs version {expected})"), Some(v) => format!("has hwpass schema version {v}; this hwpass-issuer needs version {expected}") })]
    Schema {
        /// The database.
        at: String,
        /// The version found, if any.
        found: Option<i32>,
        /// The version this build reads and writes.
        expected: i32,
    },
    /// A row holds what hwpass never writes.
    #[error("PostgreSQL {at}: {what}")]
    Damaged {
        /// The database.
        at: String,
        /// What is wrong.
        what: String,
    },
    /// `db import` needs an empty store.
    #[error("PostgreSQL {at} already holds an audit log or register ({entries} entries, {revocations} revocations): import only into a new database")]
    NotEmpty {
        /// The database.
        at: String,
        /// Entries in its audit log.
        entries: u64,
        /// Revocations in its register.
        revocations: u64,
    },
    /// The store cannot run its client in this process (no thread for its runtime).
    #[error("PostgreSQL client: {0}")]
    Client(String),
}

impl DbError {
    /// Nothing is known to be wrong but the way to the database: the same call may succeed
    /// once it is back (a restart, a failover, a full pool).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            // Class 08: connection exception; 57P01-03: the server is shutting down or
            // starting; 53300: too many connections; 40001/40P01: serialization failure or
            // deadlock (retry).
            Self::Refused { code, .. } => {
                code.starts_with("08")
                    || matches!(
                        code.as_str(),
                        "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                    )
            }
            _ => false,
        }
    }

    /// The database is a read-only standby (or the transaction was read-only): SQLSTATE 25006.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if code == "25006")
    }
}

/// Advisory lock keys (`pg_advisory_lock`), one per role, in a range of their own ("hwpa").
pub(crate) mod locks {
    /// Held (session-level) by the replica that signs checkpoints: the leader.
    pub const CHECKPOINT_LEADER: i64 = 0x6877_7061_0000_0001;
    /// Held (transaction-level) while a checkpoint is signed, by the leader or a one-off
    /// signer (the CLI), so that two never sign over the same entries.
    pub const CHECKPOINT_SIGN: i64 = 0x6877_7061_0000_0002;
    /// Held (transaction-level) while the schema is migrated.
    pub const MIGRATE: i64 = 0x6877_7061_0000_0003;
}

/// How to reach the database, from `[store]`.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq URL (`postgresql://hwpass@db.corp:5432/hwpass`) or key=value string, without a
    /// password.
    pub url: String,
    /// The password (from `[store] password_file`), if the server asks for one.
    pub password: Option<secrecy::SecretString>,
    /// Connections this process keeps at most.
    pub max_connections: usize,
    /// How often the checkpoint leader looks for new entries.
    pub checkpoint_interval: Duration,
    /// TLS, trusting only `[store] ca_file`'s CA certificates; none: plain TCP or a Unix
    /// socket.
    pub tls: Option<rustls::ClientConfig>,
    /// Identifies these settings (the URL, the password, the CA certificates, the limits), to
    /// tell whether a reloaded config changed them.
    pub fingerprint: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("max_connections", &self.max_connections)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The PostgreSQL store. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    /// `user@host:port/dbname`, for messages.
    shown: String,
    max_connections: usize,
    checkpoint_interval: Duration,
    tls: Option<MakeRustlsConnect>,
    fingerprint: String,
    /// Web-session calls in flight at most: a quarter of the connections (at least one), so
    /// that any number of requests with made-up session cookies cannot take every connection
    /// from the audit writer and the checkpoint leader.
    web_gate: tokio::sync::Semaphore,
    /// The runtime and pool, made on first use (commands that never touch the store start no
    /// threads).
    connected: OnceLock<Result<Connected, String>>,
}

struct Connected {
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
}

impl Drop for Connected {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its workers stop, which tokio refuses inside another
        // runtime (the service's): let them stop in the background instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("at", &self.inner.shown)
            .field("max_connections", &self.inner.max_connections)
            .finish_non_exhaustive()
    }
}

/// `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Longest wait for a pooled connection, for a new connection, and for a connection check.
const POOL_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgStore {
    /// A store for the database `options` names; connects on first use. Refuses a URL that
    /// carries a password (it belongs in `password_file`) or asks for TLS (not built in).
    pub fn new(options: PgOptions) -> Result<Self, String> {
        use secrecy::ExposeSecret as _;
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| format!("[store] postgres is not a PostgreSQL URL: {e}"))?;
        if config.get_password().is_some() {
            return Err("[store] postgres: the URL carries a password; put it in the file [store] password_file names (mode 0600), so it stays out of the config and of process listings".into());
        }
        let tls = match options.tls {
            // With a CA, TLS is required (and the server's certificate checked against it
            // and the URL's host name), whatever the URL's sslmode says.
            Some(tls) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(MakeRustlsConnect::new(tls))
            }
            None if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require => {
                return Err("[store] postgres asks for sslmode=require: name the CA that signed the server's certificate in [store] ca_file (docs/replicas.md, \"Reaching PostgreSQL\")".into());
            }
            None => {
                // Without a CA, no TLS: for a Unix socket or this machine; over the network
                // only when the URL says so itself (sslmode=disable), never silently.
                let remote = config.get_hosts().iter().any(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => !is_loopback(name),
                    tokio_postgres::config::Host::Unix(_) => false,
                });
                if remote && config.get_ssl_mode() != tokio_postgres::config::SslMode::Disable {
                    return Err("[store] postgres names a host on the network but no [store] ca_file: name the CA that signed the server's certificate there (TLS), or add sslmode=disable to the URL to accept an unencrypted connection (docs/replicas.md, \"Reaching PostgreSQL\")".into());
                }
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        if let Some(p) = &options.password {
            config.password(p.expose_secret().as_bytes());
        }
        if config.get_application_name().is_none() {
            config.application_name("hwpass-issuer");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A server that vanished (power, network) is noticed within seconds, not the
        // kernel's minutes: its connections fail and the pool makes new ones.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.tcp_user_timeout(Duration::from_secs(15));
        let shown = shown(&config);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                shown,
                max_connections: options.max_connections.max(1),
                checkpoint_interval: options.checkpoint_interval,
                tls,
                fingerprint: options.fingerprint,
                web_gate: tokio::sync::Semaphore::new((options.max_connections / 4).max(1)),
                connected: OnceLock::new(),
            }),
        })
    }

    /// Waits for a turn among the web-session calls ([`Inner::web_gate`]).
    pub(crate) async fn web_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.inner.web_gate.acquire().await.ok()
    }

    /// Identifies the settings this store was made with ([`PgOptions::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Whether connections use TLS, checked against `[store] ca_file`.
    pub fn uses_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The database, for messages: `user@host:port/dbname`.
    pub fn at(&self) -> &str {
        &self.inner.shown
    }

    fn connected(&self) -> Result<&Connected, DbError> {
        let made = self.inner.connected.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("hwpass-postgres")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start its runtime: {e}"))?;
            let manager_config = ManagerConfig {
                // A closed connection is noticed without a round trip; a broken one fails its
                // statement, and the pool drops it.
                recycling_method: RecyclingMethod::Fast,
            };
            let config = self.inner.config.clone();
            let manager = match &self.inner.tls {
                Some(tls) => Manager::from_config(config, tls.clone(), manager_config),
                None => Manager::from_config(config, NoTls, manager_config),
            };
            let pool = Pool::builder(manager)
                .max_size(self.inner.max_connections)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| format!("cannot make its connection pool: {e}"))?;
            Ok(Connected { rt: Some(rt), pool })
        });
        made.as_ref().map_err(|e| DbError::Client(e.clone()))
    }

    /// Runs `f` to completion on the store's runtime, blocking this thread (which must not be
    /// an async task's).
    pub(crate) fn block_on<F: Future>(&self, f: F) -> Result<F::Output, DbError> {
        let c = self.connected()?;
        match &c.rt {
            Some(rt) => Ok(rt.block_on(f)),
            None => Err(DbError::Client("its runtime was stopped".into())),
        }
    }

    /// A pooled connection.
    pub(crate) async fn client(
        &self,
        doing: &'static str,
    ) -> Result<deadpool_postgres::Object, DbError> {
        let pool = &self.connected()?.pool;
        pool.get().await.map_err(|e| {
            use deadpool_postgres::PoolError;
            match e {
                PoolError::Backend(e) => self.error(doing)(e),
                other => DbError::Unavailable {
                    at: self.inner.shown.clone(),
                    doing,
                    detail: other.to_string(),
                },
            }
        })
    }

    /// A connection of its own, outside the pool (one that holds a session-level lock).
    pub(crate) async fn dedicated(
        &self,
        doing: &'static str,
    ) -> Result<tokio_postgres::Client, DbError> {
        let config = &self.inner.config;
        let client = match &self.inner.tls {
            Some(tls) => {
                let (client, connection) = config
                    .connect(tls.clone())
                    .await
                    .map_err(self.error(doing))?;
                // Ends when the client is dropped or the connection breaks; the client then
                // reports it closed.
                tokio::spawn(connection);
                client
            }
            None => {
                let (client, connection) =
                    config.connect(NoTls).await.map_err(self.error(doing))?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(client)
    }

    /// Maps a driver error to a [`DbError`] for `doing`.
    pub(crate) fn error(&self, doing: &'static str) -> impl Fn(tokio_postgres::Error) -> DbError {
        let at = self.inner.shown.clone();
        move |e| db_error(&at, doing, &e)
    }

    /// A [`DbError::Damaged`].
    pub(crate) fn damaged(&self, what: impl Into<String>) -> DbError {
        DbError::Damaged {
            at: self.inner.shown.clone(),
            what: what.into(),
        }
    }

    pub(crate) fn checkpoint_interval(&self) -> Duration {
        self.inner.checkpoint_interval
    }
}

/// `user@host:port/dbname` of a config.
fn shown(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("(login name)"),
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".to_string()
        } else {
            ports.join(",")
        },
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("(login name)")
    )
}

/// The facts of a driver error.
fn db_error(at: &str, doing: &'static str, e: &tokio_postgres::Error) -> DbError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNDEFINED_TABLE {
            return DbError::Schema {
                at: at.to_string(),
                found: None,
                expected: schema::VERSION,
            };
        }
        return DbError::Refused {
            at: at.to_string(),
            doing,
            code: db.code().code().to_string(),
            message: db.message().to_string(),
        };
    }
    // Not the server's answer: the connection (refused, closed, timed out) or the protocol.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    DbError::Unavailable {
        at: at.to_string(),
        doing,
        detail,
    }
}

/// A count from the database as the `u64` hwpass uses; a negative one is damage.
pub(crate) fn unsigned(store: &PgStore, what: &str, n: i64) -> Result<u64, DbError> {
    u64::try_from(n).map_err(|_| store.damaged(format!("{what} is negative ({n})")))
}

/// A `u64` as PostgreSQL's `bigint`.
pub(crate) fn signed(store: &PgStore, what: &str, n: u64) -> Result<i64, DbError> {
    i64::try_from(n).map_err(|_| store.damaged(format!("{what} {n} does not fit a bigint")))
}
