//! The audit log in PostgreSQL.
//!
//! **Appends** (any replica, one transaction each, a whole group commit at a time): lock the
//! sequencer row `hwpass_audit_head` (`FOR UPDATE`), number the entries from its size, chain
//! them from its last hash, extend its Merkle tree edge, insert them and update the row,
//! commit. The row lock orders the appends of every replica, and the positions come from the
//! row inside the transaction: an append that fails or is rolled back leaves no gap, and two
//! replicas never take one position. The caller hands a pass out only after the commit.
//!
//! **Checkpoints** (one replica at a time, [`Leader`]): the leader holds a session advisory
//! lock on a connection of its own. Each round, under a transaction advisory lock it shares
//! with one-off signers (the CLI's [`AuditStore::append`]), it reads the last checkpoint and
//! checks its signature and its stored tree edge, reads the entries after it and checks their
//! positions, canonical form and chain, checks that they end at the sequencer row's hash and
//! tree, then signs and stores a checkpoint over them. When the leader's process or connection
//! dies, PostgreSQL drops its lock and another replica's next round takes over. A check that
//! fails writes a fault into the sequencer row: every replica's appends then refuse
//! ([`AuditError::Stopped`]) until a person has checked the log and run `audit seal`.
//!
//! What the database must be trusted with: entries after the last checkpoint are covered only
//! by the next one; someone who can write to the database could add entries there before the
//! leader signs (docs/replicas.md, "What is trusted").

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{locks, signed, unsigned, DbError, PgStore};
use crate::issuer::store::checkpoint::{leaf_hash, Frontier, Hash};
use crate::issuer::store::{
    verify_log, AuditEntry, AuditError, AuditRecord, AuditStore, AuditTrust, Checkpoint,
    Checkpointer, LogContents, Notary, Round, Verified, GENESIS,
};

/// Most entries one checkpoint round reads (a larger backlog takes several rounds).
const MAX_ROUND: i64 = 100_000;

/// The sequencer row.
#[derive(Debug)]
struct Head {
    size: u64,
    head: String,
    frontier: Frontier,
    fault: Option<String>,
}

/// A tree edge as stored: the audit path of the next leaf (smallest subtree first), 32 bytes
/// each.
pub(crate) fn encode_frontier(f: &Frontier) -> Vec<u8> {
    f.next_leaf_path().concat()
}

fn decode_frontier(store: &PgStore, size: u64, bytes: &[u8]) -> Result<Frontier, DbError> {
    let damaged = || {
        store.damaged(format!(
            "the stored Merkle tree edge at size {size} is damaged"
        ))
    };
    if !bytes.len().is_multiple_of(32) {
        return Err(damaged());
    }
    let path: Vec<Hash> = bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Frontier::from_next_leaf_path(size, &path).ok_or_else(damaged)
}

impl PgStore {
    async fn head(
        &self,
        client: &tokio_postgres::Transaction<'_>,
        lock: bool,
    ) -> Result<Head, DbError> {
        let doing = "reading the audit sequencer";
        let sql = if lock {
            "SELECT size, head, frontier, fault FROM hwpass_audit_head FOR UPDATE"
        } else {
            "SELECT size, head, frontier, fault FROM hwpass_audit_head"
        };
        let row = client
            .query_one(sql, &[])
            .await
            .map_err(self.error(doing))?;
        let size = unsigned(self, "the audit log size", row.get(0))?;
        let bytes: Vec<u8> = row.get(2);
        Ok(Head {
            size,
            head: row.get(1),
            frontier: decode_frontier(self, size, &bytes)?,
            fault: row.get(3),
        })
    }

    /// Appends in one transaction: see the module documentation.
    async fn append_tx(&self, entries: &mut [AuditEntry]) -> Result<(), AuditError> {
        let doing = "appending to the audit log";
        let err = self.error(doing);
        let mut client = self.client(doing).await?;
        let tx = client.transaction().await.map_err(&err)?;
        let head = self.head(&tx, true).await?;
        if let Some(fault) = head.fault {
            return Err(AuditError::Stopped(fault));
        }
        let (mut frontier, mut last) = (head.frontier, head.head);
        let first = signed(self, "the audit log size", head.size)?;
        let mut positions = Vec::with_capacity(entries.len());
        let mut lines = Vec::with_capacity(entries.len());
        let mut jtis = Vec::with_capacity(entries.len());
        let mut subs = Vec::with_capacity(entries.len());
        let mut times = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter_mut().enumerate() {
            e.set_prev(last);
            let line = e.canonical();
            last = hex::encode(Sha256::digest(&line));
            frontier.push(&leaf_hash(&line));
            // Invariant: a batch is far shorter than i64::MAX entries.
            positions.push(first + i as i64);
            // Canonical JSON is UTF-8 (serde_json writes nothing else).
            lines.push(String::from_utf8_lossy(&line).into_owned());
            jtis.push(e.issued().map(|r| r.jti.clone()));
            subs.push(e.issued().map(|r| r.sub.clone()));
            times.push(e.time());
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO hwpass_audit_entries (position, line, jti, sub, time) SELECT * \
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])",
            )
            .await
            .map_err(&err)?;
        tx.execute(&insert, &[&positions, &lines, &jtis, &subs, &times])
            .await
            .map_err(&err)?;
        let size = signed(self, "the audit log size", frontier.size())?;
        let update = tx
            .prepare_cached("UPDATE hwpass_audit_head SET size = $1, head = $2, frontier = $3")
            .await
            .map_err(&err)?;
        tx.execute(&update, &[&size, &last, &encode_frontier(&frontier)])
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(())
    }

    /// Every entry in order with the chain and positions checked, the last checkpoint, and the
    /// sequencer row, read in one snapshot.
    async fn load_all(&self) -> Result<(LogContents, Head), AuditError> {
        let doing = "reading the audit log";
        let err = self.error(doing);
        let mut client = self.client(doing).await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(&err)?;
        let head = self.head(&tx, false).await?;
        let rows = tx
            .query(
                "SELECT position, line FROM hwpass_audit_entries ORDER BY position",
                &[],
            )
            .await
            .map_err(&err)?;
        let checkpoint: Option<String> = tx
            .query_opt(
                "SELECT note FROM hwpass_audit_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(&err)?
            .map(|r| r.get(0));
        tx.commit().await.map_err(&err)?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut leaves = Vec::with_capacity(rows.len());
        let mut last = GENESIS.to_string();
        for (i, row) in rows.iter().enumerate() {
            let position: i64 = row.get(0);
            if position != i as i64 {
                return Err(AuditError::Position {
                    expected: i as u64,
                    found: unsigned(self, "an entry position", position)?,
                });
            }
            let line: &str = row.get(1);
            let line_no = i as u64 + 1;
            let entry =
                AuditEntry::parse(line.as_bytes()).map_err(|detail| AuditError::Malformed {
                    line: line_no,
                    detail,
                })?;
            if entry.prev() != last {
                return Err(AuditError::Broken { line: line_no });
            }
            last = hex::encode(Sha256::digest(line.as_bytes()));
            leaves.push(leaf_hash(line.as_bytes()));
            entries.push(entry);
        }
        let log = LogContents {
            entries,
            leaves,
            head: last,
            fragment: None,
            checkpoint,
            pending: None,
        };
        Ok((log, head))
    }

    /// Checks the log ([`verify_log`], entries after the last checkpoint allowed: the leader
    /// covers them next) and that the sequencer row ends where the entries do.
    fn verify_all(
        &self,
        trust: &AuditTrust,
        saved: &[String],
    ) -> Result<(Verified, Option<String>), AuditError> {
        let (log, head) = self.block_on(self.load_all())??;
        let verified = verify_log(&log, trust, saved, true)?;
        let n = log.entries.len() as u64;
        if head.size > n {
            return Err(AuditError::Cut {
                covered: head.size,
                present: Some(n),
            });
        }
        if head.size < n {
            return Err(AuditError::Uncovered {
                count: n - head.size,
                after: head.size,
            });
        }
        let mut tree = Frontier::new();
        for leaf in &log.leaves {
            tree.push(leaf);
        }
        if head.head != log.head || head.frontier != tree {
            return Err(AuditError::Mismatch { size: n });
        }
        Ok((verified, head.fault))
    }

    /// Signs a checkpoint over the entries after the last one, after checking them (see the
    /// module documentation); `None` when there is nothing new, or `wait` is false and another
    /// signer is at work. A check that fails stops the log for every replica.
    async fn sign_round(
        &self,
        client: &mut Client,
        notary: &Notary<'_>,
        wait: bool,
    ) -> Result<Option<Checkpoint>, AuditError> {
        match self.sign_round_tx(client, notary, wait).await {
            Err(e) if is_damage(&e) => {
                let fault = format!("a checkpoint signer found the log inconsistent: {e}");
                warn!(error = %e, "the audit log does not check: appends stop on every replica until `hwpass-issuer audit verify` and `audit seal`");
                let stop = client
                    .execute(
                        "UPDATE hwpass_audit_head SET fault = $1 WHERE fault IS NULL",
                        &[&fault],
                    )
                    .await;
                if let Err(s) = stop {
                    warn!(error = %s, "could not record the fault in the audit sequencer");
                }
                Err(e)
            }
            other => other,
        }
    }

    async fn sign_round_tx(
        &self,
        client: &mut Client,
        notary: &Notary<'_>,
        wait: bool,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let doing = "signing an audit checkpoint";
        let err = self.error(doing);
        // Read committed: after waiting for the lock, each statement sees what the signer
        // before committed.
        let tx = client.transaction().await.map_err(&err)?;
        if wait {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&locks::CHECKPOINT_SIGN],
            )
            .await
            .map_err(&err)?;
        } else {
            let got: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock($1)",
                    &[&locks::CHECKPOINT_SIGN],
                )
                .await
                .map_err(&err)?
                .get(0);
            if !got {
                return Ok(None);
            }
        }
        let last = tx
            .query_opt(
                "SELECT size, note, head, frontier FROM hwpass_audit_checkpoints \
                 ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(&err)?;
        let (mut tree, mut prev, mut time) = match &last {
            None => (Frontier::new(), GENESIS.to_string(), i64::MIN),
            Some(row) => {
                let note: &str = row.get(1);
                let cp = notary.trust().open(note)?;
                let size = unsigned(self, "a checkpoint size", row.get(0))?;
                let bytes: Vec<u8> = row.get(3);
                let tree = decode_frontier(self, cp.size, &bytes)?;
                if size != cp.size || tree.root() != cp.root {
                    return Err(AuditError::Mismatch { size: cp.size });
                }
                (tree, row.get::<_, String>(2), cp.time)
            }
        };
        let head = self.head(&tx, false).await?;
        if let Some(fault) = head.fault {
            return Err(AuditError::Stopped(fault));
        }
        let from = tree.size();
        if head.size < from {
            return Err(AuditError::Cut {
                covered: from,
                present: Some(head.size),
            });
        }
        if head.size == from {
            if head.head != prev || head.frontier != tree {
                return Err(AuditError::Mismatch { size: from });
            }
            return Ok(None);
        }
        let start = signed(self, "a checkpoint size", from)?;
        let end = signed(self, "the audit log size", head.size)?.min(start + MAX_ROUND);
        let rows = tx
            .query(
                "SELECT position, line FROM hwpass_audit_entries \
                 WHERE position >= $1 AND position < $2 ORDER BY position",
                &[&start, &end],
            )
            .await
            .map_err(&err)?;
        for (i, row) in rows.iter().enumerate() {
            let expected = start + i as i64;
            let position: i64 = row.get(0);
            if position != expected {
                return Err(AuditError::Position {
                    expected: unsigned(self, "a position", expected)?,
                    found: unsigned(self, "an entry position", position)?,
                });
            }
            let line: &str = row.get(1);
            let line_no = unsigned(self, "a position", expected)? + 1;
            let entry =
                AuditEntry::parse(line.as_bytes()).map_err(|detail| AuditError::Malformed {
                    line: line_no,
                    detail,
                })?;
            if entry.prev() != prev {
                return Err(AuditError::Broken { line: line_no });
            }
            prev = hex::encode(Sha256::digest(line.as_bytes()));
            tree.push(&leaf_hash(line.as_bytes()));
            time = time.max(entry.time());
        }
        if tree.size() != unsigned(self, "the audit log size", end)? {
            return Err(AuditError::Position {
                expected: tree.size(),
                found: unsigned(self, "the audit log size", end)?,
            });
        }
        if tree.size() == head.size && (head.head != prev || head.frontier != tree) {
            return Err(AuditError::Mismatch { size: head.size });
        }
        let (checkpoint, note) = notary.sign(tree.size(), tree.root(), time)?;
        tx.execute(
            "INSERT INTO hwpass_audit_checkpoints (size, note, head, frontier) \
             VALUES ($1, $2, $3, $4)",
            &[&end, &note, &prev, &encode_frontier(&tree)],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(Some(checkpoint))
    }

    /// The newest checkpoint, verified.
    fn last_checkpoint(&self, trust: &AuditTrust) -> Result<Option<Checkpoint>, AuditError> {
        let note = self.block_on(async {
            let doing = "reading the last audit checkpoint";
            let client = self.client(doing).await?;
            let row = client
                .query_opt(
                    "SELECT note FROM hwpass_audit_checkpoints ORDER BY size DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(self.error(doing))?;
            Ok::<_, DbError>(row.map(|r| r.get::<_, String>(0)))
        })??;
        Ok(note.map(|n| trust.open(&n)).transpose()?)
    }
}

/// A failure that means the log is not what hwpass wrote (as opposed to the database being
/// out of reach, or the key failing).
fn is_damage(e: &AuditError) -> bool {
    matches!(
        e,
        AuditError::Malformed { .. }
            | AuditError::Broken { .. }
            | AuditError::Cut { .. }
            | AuditError::Mismatch { .. }
            | AuditError::Position { .. }
            | AuditError::Checkpoint(_)
            | AuditError::Database(DbError::Damaged { .. })
    )
}

impl AuditStore for PgStore {
    fn describe(&self) -> String {
        format!("audit log in PostgreSQL {}", self.at())
    }

    fn check_ready(&self) -> Result<(), AuditError> {
        Ok(self.check_schema()?)
    }

    /// The schema is this build's, the database is not a standby in recovery, and this role
    /// may add entries: what an append needs, found out without one.
    fn writable(&self) -> Result<(), AuditError> {
        self.check_schema()?;
        let doing = "checking that the audit log can be written";
        let refused = |code: &str, message: &str| DbError::Refused {
            at: self.at().to_string(),
            doing,
            code: code.into(),
            message: message.into(),
        };
        self.block_on(async {
            let client = self.client(doing).await?;
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), \
                     has_table_privilege('hwpass_audit_entries', 'INSERT') \
                     AND has_table_privilege('hwpass_audit_head', 'UPDATE')",
                    &[],
                )
                .await
                .map_err(self.error(doing))?;
            let (standby, may): (bool, bool) = (row.get(0), row.get(1));
            if standby {
                return Err(refused(
                    "25006",
                    "a standby in recovery: it cannot take audit entries",
                ));
            }
            if !may {
                return Err(refused(
                    "42501",
                    "this role may not add audit entries (INSERT on hwpass_audit_entries, UPDATE on hwpass_audit_head)",
                ));
            }
            Ok(())
        })??;
        Ok(())
    }

    /// Appends, then signs a checkpoint covering the log (waiting for a leader's round in
    /// progress), as a one-off signer: for the CLI.
    fn append(
        &self,
        entries: &mut [AuditEntry],
        notary: &Notary<'_>,
    ) -> Result<Checkpoint, AuditError> {
        self.append_entries(entries, notary)?;
        let signed = self.block_on(async {
            let mut client = self.client("signing an audit checkpoint").await?;
            self.sign_round(&mut client, notary, true).await
        })??;
        match signed {
            Some(c) => Ok(c),
            // A leader covered them already.
            None => self
                .last_checkpoint(notary.trust())?
                .ok_or(AuditError::NoCheckpoint { records: 0 }),
        }
    }

    fn append_entries(
        &self,
        entries: &mut [AuditEntry],
        _notary: &Notary<'_>,
    ) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.block_on(self.append_tx(entries))?
    }

    fn checkpointer(&self) -> Option<Box<dyn Checkpointer>> {
        Some(Box::new(Leader {
            store: self.clone(),
            conn: None,
            leading: false,
        }))
    }

    fn load(&self) -> Result<LogContents, AuditError> {
        Ok(self.block_on(self.load_all())??.0)
    }

    fn verify(&self, trust: &AuditTrust, saved: &[String]) -> Result<Verified, AuditError> {
        let (verified, fault) = self.verify_all(trust, saved)?;
        match fault {
            Some(f) => Err(AuditError::Stopped(f)),
            None => Ok(verified),
        }
    }

    /// Checks the whole log, clears a fault a checkpoint signer recorded, and signs a
    /// checkpoint covering every entry.
    fn seal(&self, notary: &Notary<'_>) -> Result<Verified, AuditError> {
        self.verify_all(notary.trust(), &[])?;
        self.block_on(async {
            let doing = "sealing the audit log";
            let mut client = self.client(doing).await?;
            client
                .execute("UPDATE hwpass_audit_head SET fault = NULL", &[])
                .await
                .map_err(self.error(doing))?;
            self.sign_round(&mut client, notary, true).await
        })??;
        self.verify(notary.trust(), &[])
    }

    /// Looks the pass up in the issuance index (the `jti` column), leniently: the line is only
    /// parsed.
    fn find_issued(&self, jti: &str) -> Result<Option<AuditRecord>, AuditError> {
        let line = self.block_on(async {
            let doing = "looking a pass up in the audit log";
            let client = self.client(doing).await?;
            let row = client
                .query_opt(
                    "SELECT line FROM hwpass_audit_entries WHERE jti = $1",
                    &[&jti],
                )
                .await
                .map_err(self.error(doing))?;
            Ok::<_, DbError>(row.map(|r| r.get::<_, String>(0)))
        })??;
        Ok(line.and_then(|l| serde_json::from_str::<AuditRecord>(&l).ok()))
    }

    /// From the issuance index: by subject through the `sub` column's index.
    fn recent_issued(
        &self,
        limit: usize,
        sub: Option<&str>,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.block_on(async {
            let doing = "reading recent issuances";
            let client = self.client(doing).await?;
            client
                .query(
                    "SELECT position, line FROM hwpass_audit_entries WHERE jti IS NOT NULL \
                     AND ($2::text IS NULL OR sub = $2) ORDER BY position DESC LIMIT $1",
                    &[&limit, &sub],
                )
                .await
                .map_err(self.error(doing))
        })??;
        rows.iter()
            .map(|r| {
                let line: &str = r.get(1);
                let position: i64 = r.get(0);
                serde_json::from_str::<AuditRecord>(line).map_err(|e| AuditError::Malformed {
                    line: position.unsigned_abs().saturating_add(1),
                    detail: e.to_string(),
                })
            })
            .collect()
    }
}

/// The checkpoint leader of one replica: a connection of its own that holds the leader lock.
pub(crate) struct Leader {
    store: PgStore,
    conn: Option<Client>,
    leading: bool,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("store", &self.store)
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

impl Leader {
    async fn turn(&mut self, notary: &Notary<'_>) -> Result<Round, AuditError> {
        let store = self.store.clone();
        let err = store.error("taking the checkpoint leader's lock");
        if self.conn.as_ref().is_none_or(Client::is_closed) {
            if self.leading {
                warn!("lost the connection that held the checkpoint leader's lock: another replica may lead now");
            }
            self.leading = false;
            self.conn = None;
            self.conn = Some(store.dedicated("connecting the checkpoint leader").await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Round::Follower);
        };
        if !self.leading {
            // A standby in recovery cannot take part: it writes nothing.
            let got: bool = conn
                .query_one(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN false \
                     ELSE pg_try_advisory_lock($1) END",
                    &[&locks::CHECKPOINT_LEADER],
                )
                .await
                .map_err(&err)?
                .get(0);
            if !got {
                return Ok(Round::Follower);
            }
            self.leading = true;
            info!("this replica signs the audit checkpoints now (checkpoint leader)");
        }
        let signed = store.sign_round(conn, notary, true).await?;
        Ok(Round::Leader(signed))
    }
}

impl Checkpointer for Leader {
    fn round(&mut self, notary: &Notary<'_>) -> Result<Round, AuditError> {
        let store = self.store.clone();
        let result = store.block_on(self.turn(notary))?;
        if result.as_ref().is_err_and(AuditError::is_transient) {
            // Start again on a new connection: the old one may be dead, and with it the lock.
            self.conn = None;
            self.leading = false;
        }
        result
    }

    fn interval(&self) -> Duration {
        self.store.checkpoint_interval()
    }
}
