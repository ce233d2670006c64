//! The database schema: versioned migrations, applied only by `hwpass-issuer db migrate`
//! ([`PgStore::migrate`]); replicas only read the version ([`PgStore::check_schema`]).
//!
//! Tables (all named `hwpass_…`, in the connection's schema search path):
//!
//! | table | holds |
//! |---|---|
//! | `hwpass_schema` | one row: the schema version |
//! | `hwpass_audit_head` | one row, the sequencer: entries in the log, hash of the last, the Merkle tree's right edge, and a fault that stops appends |
//! | `hwpass_audit_entries` | each entry: its position (0, 1, …), canonical JSON line, pass id and subject (the issuance index) and time |
//! | `hwpass_audit_checkpoints` | each signed checkpoint note, with the tree's right edge and last hash at its size |
//! | `hwpass_register` | one row: the deny list sequence number and the key ids of the last list |
//! | `hwpass_revoked_passes`, `hwpass_revoked_devices` | the revocations |
//! | `hwpass_deny_lists` | signed deny lists, for every replica to hand out |
//! | `hwpass_web_sessions` | signed-in web sessions, by the SHA-256 of their id |
//! | `hwpass_used_states` | sign-in `state`s already used (by hash), until they expire |
//! | `hwpass_web_key` | one row: the key of the web page's CSRF tokens and sign-in cookie, made by `db migrate` |

use super::{locks, DbError, PgStore};

/// The schema version this build reads and writes.
pub const VERSION: i32 = 1;

/// Each migration: the version it makes, and its SQL (run in one transaction).
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE hwpass_schema (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    version integer NOT NULL
);
INSERT INTO hwpass_schema (version) VALUES (0);

CREATE TABLE hwpass_audit_head (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    size bigint NOT NULL CHECK (size >= 0),
    head text NOT NULL,
    frontier bytea NOT NULL,
    fault text
);
INSERT INTO hwpass_audit_head (size, head, frontier)
    VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000', '');

CREATE TABLE hwpass_audit_entries (
    position bigint PRIMARY KEY CHECK (position >= 0),
    line text NOT NULL,
    jti text UNIQUE,
    sub text,
    time bigint NOT NULL
);
CREATE INDEX hwpass_audit_entries_sub ON hwpass_audit_entries (sub, position)
    WHERE sub IS NOT NULL;

CREATE TABLE hwpass_audit_checkpoints (
    size bigint PRIMARY KEY CHECK (size > 0),
    note text NOT NULL,
    head text NOT NULL,
    frontier bytea NOT NULL
);

CREATE TABLE hwpass_register (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq bigint NOT NULL CHECK (seq >= 0),
    kids text[] NOT NULL
);
INSERT INTO hwpass_register (seq, kids) VALUES (0, '{}');

CREATE TABLE hwpass_revoked_passes (
    jti text PRIMARY KEY,
    exp bigint NOT NULL,
    sub text NOT NULL,
    time bigint NOT NULL,
    revoked_by text NOT NULL,
    reason text,
    seq bigint NOT NULL
);

CREATE TABLE hwpass_revoked_devices (
    jkt text PRIMARY KEY,
    time bigint NOT NULL,
    revoked_by text NOT NULL,
    reason text,
    seq bigint NOT NULL
);

CREATE TABLE hwpass_deny_lists (
    seq bigint NOT NULL,
    iat bigint NOT NULL,
    list text NOT NULL,
    PRIMARY KEY (seq, iat)
);

CREATE TABLE hwpass_web_sessions (
    id_sha256 text PRIMARY KEY,
    person text NOT NULL,
    opened bigint NOT NULL,
    expires bigint NOT NULL,
    data text NOT NULL
);
CREATE INDEX hwpass_web_sessions_person ON hwpass_web_sessions (person, opened);
CREATE INDEX hwpass_web_sessions_expires ON hwpass_web_sessions (expires);

CREATE TABLE hwpass_used_states (
    state_sha256 bytea PRIMARY KEY,
    until bigint NOT NULL
);

CREATE TABLE hwpass_web_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    key bytea NOT NULL CHECK (length(key) = 32)
);
"#,
)];

/// What `db migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Migrated {
    /// The version before (0: no schema).
    pub from: i32,
    /// The version now.
    pub to: i32,
}

impl PgStore {
    /// Brings the schema to this build's version, in one transaction under an advisory lock
    /// (two `db migrate` at once wait for each other). Needs a role that may create tables;
    /// refuses a schema newer than this build.
    pub fn migrate(&self) -> Result<Migrated, DbError> {
        self.block_on(async {
            let doing = "migrating the schema";
            let err = self.error(doing);
            let mut client = self.client(doing).await?;
            let tx = client.transaction().await.map_err(&err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::MIGRATE])
                .await
                .map_err(&err)?;
            let exists: bool = tx
                .query_one("SELECT to_regclass('hwpass_schema') IS NOT NULL", &[])
                .await
                .map_err(&err)?
                .get(0);
            let from: i32 = if exists {
                tx.query_one("SELECT version FROM hwpass_schema", &[])
                    .await
                    .map_err(&err)?
                    .get(0)
            } else {
                0
            };
            if from > VERSION {
                return Err(DbError::Schema {
                    at: self.at().to_string(),
                    found: Some(from),
                    expected: VERSION,
                });
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
                tx.batch_execute(sql).await.map_err(&err)?;
                tx.execute("UPDATE hwpass_schema SET version = $1", &[version])
                    .await
                    .map_err(&err)?;
            }
            // The replicas' shared key for the web page's CSRF tokens and sign-in cookie.
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| DbError::Client(format!("random: {e}")))?;
            tx.execute(
                "INSERT INTO hwpass_web_key (key) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&&key[..]],
            )
            .await
            .map_err(&err)?;
            tx.commit().await.map_err(&err)?;
            Ok(Migrated { from, to: VERSION })
        })?
    }

    /// Checks that the schema is this build's version, changing nothing.
    pub fn check_schema(&self) -> Result<(), DbError> {
        self.block_on(async {
            let doing = "reading the schema version";
            let client = self.client(doing).await?;
            let found: i32 = client
                .query_one("SELECT version FROM hwpass_schema", &[])
                .await
                .map_err(self.error(doing))?
                .get(0);
            if found == VERSION {
                Ok(())
            } else {
                Err(DbError::Schema {
                    at: self.at().to_string(),
                    found: Some(found),
                    expected: VERSION,
                })
            }
        })?
    }
}
