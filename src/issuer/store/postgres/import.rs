//! `hwpass-issuer db import`: a file store — its audit log with the checkpoint, and its
//! revocation register — into an empty PostgreSQL store, after verifying the log, in one
//! transaction (all of it, or nothing).

use super::audit::encode_frontier;
use super::{signed, DbError, PgStore};
use crate::issuer::store::checkpoint::Frontier;
use crate::issuer::store::{verify_log, AuditError, AuditTrust, LogContents, Register};

/// Entries per insert statement.
const CHUNK: usize = 1000;

/// What `db import` brought in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    /// Audit log entries (issuances and revocations).
    pub records: u64,
    /// Entries the imported checkpoint covers (all of them).
    pub checkpoint: u64,
    /// Revoked passes.
    pub passes: usize,
    /// Revoked device keys.
    pub devices: usize,
    /// The deny list sequence number.
    pub seq: u64,
}

impl PgStore {
    /// Verifies `log` (chain, checkpoint signature and root; every entry covered — an append a
    /// crash interrupted must be finished first) and imports it with `reg` into this store,
    /// which must hold no entry, checkpoint or revocation yet.
    pub fn import(
        &self,
        log: &LogContents,
        reg: &Register,
        trust: &AuditTrust,
    ) -> Result<Imported, AuditError> {
        let verified = verify_log(log, trust, &[], false)?;
        let covered = verified.checkpoint.as_ref().map_or(0, |c| c.size);
        if verified.pending > 0 || verified.torn_tail || covered != verified.records {
            return Err(AuditError::Uncovered {
                count: verified.records - covered + u64::from(verified.torn_tail),
                after: covered,
            });
        }
        let mut tree = Frontier::new();
        for leaf in &log.leaves {
            tree.push(leaf);
        }
        self.block_on(self.import_tx(log, reg, &tree))??;
        Ok(Imported {
            records: verified.records,
            checkpoint: covered,
            passes: reg.passes.len(),
            devices: reg.devices.len(),
            seq: reg.seq,
        })
    }

    async fn import_tx(
        &self,
        log: &LogContents,
        reg: &Register,
        tree: &Frontier,
    ) -> Result<(), DbError> {
        let doing = "importing the file store";
        let err = self.error(doing);
        let mut client = self.client(doing).await?;
        let tx = client.transaction().await.map_err(&err)?;
        tx.execute(
            "SELECT 1 FROM hwpass_audit_head h, hwpass_register r FOR UPDATE",
            &[],
        )
        .await
        .map_err(&err)?;
        let row = tx
            .query_one(
                "SELECT (SELECT size FROM hwpass_audit_head), \
                 (SELECT count(*) FROM hwpass_audit_checkpoints), \
                 (SELECT seq FROM hwpass_register), \
                 (SELECT count(*) FROM hwpass_revoked_passes) \
                 + (SELECT count(*) FROM hwpass_revoked_devices)",
                &[],
            )
            .await
            .map_err(&err)?;
        let (size, checkpoints, seq, revocations): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if size != 0 || checkpoints != 0 || seq != 0 || revocations != 0 {
            return Err(DbError::NotEmpty {
                at: self.at().to_string(),
                entries: size.unsigned_abs(),
                revocations: revocations.unsigned_abs(),
            });
        }
        let insert = tx
            .prepare(
                "INSERT INTO hwpass_audit_entries (position, line, jti, sub, time) SELECT * \
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])",
            )
            .await
            .map_err(&err)?;
        for (c, chunk) in log.entries.chunks(CHUNK).enumerate() {
            let first = c * CHUNK;
            let positions: Vec<i64> = (0..chunk.len())
                .map(|i| signed(self, "a position", (first + i) as u64))
                .collect::<Result<_, _>>()?;
            let lines: Vec<String> = chunk
                .iter()
                .map(|e| String::from_utf8_lossy(&e.canonical()).into_owned())
                .collect();
            let jtis: Vec<Option<String>> = chunk
                .iter()
                .map(|e| e.issued().map(|r| r.jti.clone()))
                .collect();
            let subs: Vec<Option<String>> = chunk
                .iter()
                .map(|e| e.issued().map(|r| r.sub.clone()))
                .collect();
            let times: Vec<i64> = chunk.iter().map(|e| e.time()).collect();
            tx.execute(&insert, &[&positions, &lines, &jtis, &subs, &times])
                .await
                .map_err(&err)?;
        }
        let n = signed(self, "the audit log size", tree.size())?;
        let frontier = encode_frontier(tree);
        tx.execute(
            "UPDATE hwpass_audit_head SET size = $1, head = $2, frontier = $3, fault = NULL",
            &[&n, &log.head, &frontier],
        )
        .await
        .map_err(&err)?;
        if let Some(note) = &log.checkpoint {
            tx.execute(
                "INSERT INTO hwpass_audit_checkpoints (size, note, head, frontier) \
                 VALUES ($1, $2, $3, $4)",
                &[&n, note, &log.head, &frontier],
            )
            .await
            .map_err(&err)?;
        }
        let seq = signed(self, "the deny list sequence number", reg.seq)?;
        tx.execute(
            "UPDATE hwpass_register SET seq = $1, kids = $2",
            &[&seq, &reg.kids],
        )
        .await
        .map_err(&err)?;
        for p in &reg.passes {
            tx.execute(
                "INSERT INTO hwpass_revoked_passes (jti, exp, sub, time, revoked_by, reason, seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&p.jti, &p.exp, &p.sub, &p.time, &p.by, &p.reason, &seq],
            )
            .await
            .map_err(&err)?;
        }
        for d in &reg.devices {
            tx.execute(
                "INSERT INTO hwpass_revoked_devices (jkt, time, revoked_by, reason, seq) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&d.jkt, &d.time, &d.by, &d.reason, &seq],
            )
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }
}
