//! The revocation register and the signed deny lists in PostgreSQL.
//!
//! One row (`hwpass_register`) holds the deny list sequence number and the key ids of the last
//! list; every change locks it (`FOR UPDATE`), so revocations through different replicas are
//! ordered, and each raises the number in the transaction that records it. A deny list is
//! signed inside the transaction that holds the row and reads the snapshot it carries, and is
//! stored (`hwpass_deny_lists`): the number a list carries is exactly the register it shows,
//! and lists are stored in the order of their numbers, whichever replica signs — the number
//! only rises (the two overlapping updaters of Let's Encrypt's boulder #6897 cannot happen).
//! Replicas hand out the newest stored list while it carries the current number and is fresh,
//! so they all serve the same bytes (one `ETag`).

use std::collections::HashMap;
use std::path::PathBuf;

use tracing::warn;

use super::{signed, unsigned, DbError, PgStore};
use crate::core::denylist;
use crate::core::jwk::Jwks;
use crate::core::signer::Signer;
use crate::issuer::store::{
    bundle_kids, denylist_of, DeviceEntry, PassEntry, Register, RevocationError, RevocationStore,
    Revoked, Target,
};

/// Signed lists older than this are deleted (the newest is always kept).
const KEEP_LISTS_SECS: i64 = 86_400;

/// The newest stored list.
#[derive(Debug)]
struct Stored {
    seq: u64,
    iat: i64,
    list: String,
}

impl PgStore {
    /// Reads the register in `tx` (locking its row when `lock`).
    async fn register_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        lock: bool,
    ) -> Result<Register, DbError> {
        let doing = "reading the revocation register";
        let err = self.error(doing);
        let sql = if lock {
            "SELECT seq, kids FROM hwpass_register FOR UPDATE"
        } else {
            "SELECT seq, kids FROM hwpass_register"
        };
        let row = tx.query_one(sql, &[]).await.map_err(&err)?;
        let seq = unsigned(self, "the deny list sequence number", row.get(0))?;
        let kids: Vec<String> = row.get(1);
        let passes = tx
            .query(
                "SELECT jti, exp, sub, time, revoked_by, reason FROM hwpass_revoked_passes \
                 ORDER BY seq, time, jti",
                &[],
            )
            .await
            .map_err(&err)?
            .iter()
            .map(|r| PassEntry {
                jti: r.get(0),
                exp: r.get(1),
                sub: r.get(2),
                time: r.get(3),
                by: r.get(4),
                reason: r.get(5),
            })
            .collect();
        let devices = tx
            .query(
                "SELECT jkt, time, revoked_by, reason FROM hwpass_revoked_devices \
                 ORDER BY seq, time, jkt",
                &[],
            )
            .await
            .map_err(&err)?
            .iter()
            .map(|r| DeviceEntry {
                jkt: r.get(0),
                time: r.get(1),
                by: r.get(2),
                reason: r.get(3),
            })
            .collect();
        Ok(Register {
            v: 1,
            seq,
            kids,
            passes,
            devices,
        })
    }

    /// Writes what changed from `before` to `after` in `tx`.
    async fn store_register(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        before: &Register,
        after: &Register,
    ) -> Result<(), DbError> {
        let doing = "changing the revocation register";
        let err = self.error(doing);
        let seq = signed(self, "the deny list sequence number", after.seq)?;
        tx.execute(
            "UPDATE hwpass_register SET seq = $1, kids = $2",
            &[&seq, &after.kids],
        )
        .await
        .map_err(&err)?;
        let old: HashMap<&str, &PassEntry> =
            before.passes.iter().map(|p| (p.jti.as_str(), p)).collect();
        let new: HashMap<&str, &PassEntry> =
            after.passes.iter().map(|p| (p.jti.as_str(), p)).collect();
        for gone in old.keys().filter(|k| !new.contains_key(*k)) {
            tx.execute("DELETE FROM hwpass_revoked_passes WHERE jti = $1", &[gone])
                .await
                .map_err(&err)?;
        }
        for p in after
            .passes
            .iter()
            .filter(|p| old.get(p.jti.as_str()) != Some(p))
        {
            tx.execute(
                "INSERT INTO hwpass_revoked_passes (jti, exp, sub, time, revoked_by, reason, seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (jti) DO UPDATE SET \
                 exp = $2, sub = $3, time = $4, revoked_by = $5, reason = $6",
                &[&p.jti, &p.exp, &p.sub, &p.time, &p.by, &p.reason, &seq],
            )
            .await
            .map_err(&err)?;
        }
        let old: HashMap<&str, &DeviceEntry> =
            before.devices.iter().map(|d| (d.jkt.as_str(), d)).collect();
        let new: HashMap<&str, &DeviceEntry> =
            after.devices.iter().map(|d| (d.jkt.as_str(), d)).collect();
        for gone in old.keys().filter(|k| !new.contains_key(*k)) {
            tx.execute("DELETE FROM hwpass_revoked_devices WHERE jkt = $1", &[gone])
                .await
                .map_err(&err)?;
        }
        for d in after
            .devices
            .iter()
            .filter(|d| old.get(d.jkt.as_str()) != Some(d))
        {
            tx.execute(
                "INSERT INTO hwpass_revoked_devices (jkt, time, revoked_by, reason, seq) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (jkt) DO UPDATE SET \
                 time = $2, revoked_by = $3, reason = $4",
                &[&d.jkt, &d.time, &d.by, &d.reason, &seq],
            )
            .await
            .map_err(&err)?;
        }
        Ok(())
    }

    /// The newest stored deny list.
    async fn newest_list<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
    ) -> Result<Option<Stored>, DbError> {
        let doing = "reading the newest deny list";
        let row = client
            .query_opt(
                "SELECT seq, iat, list FROM hwpass_deny_lists ORDER BY seq DESC, iat DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(self.error(doing))?;
        row.map(|r| {
            Ok(Stored {
                seq: unsigned(self, "a deny list's sequence number", r.get(0))?,
                iat: r.get(1),
                list: r.get(2),
            })
        })
        .transpose()
    }

    /// Signs the register's list in one transaction with the row locked, raising the number
    /// first when the bundle's keys changed, and stores it. With `reuse`, a stored list that
    /// carries the (unchanged) number and is younger than that is returned instead.
    async fn publish_tx(
        &self,
        bundle: &Jwks,
        signer: &dyn Signer,
        now: i64,
        reuse: Option<i64>,
    ) -> Result<(u64, String), RevocationError> {
        let doing = "publishing the deny list";
        let err = self.error(doing);
        let mut client = self.client(doing).await?;
        let tx = client.transaction().await.map_err(&err)?;
        let before = self.register_in(&tx, true).await?;
        let mut reg = before.clone();
        let kids = bundle_kids(bundle);
        if reg.kids != kids {
            reg.seq = reg
                .seq
                .checked_add(1)
                .filter(|s| i64::try_from(*s).is_ok())
                .ok_or(RevocationError::SequenceExhausted {
                    path: self.location(),
                    seq: reg.seq,
                })?;
            reg.kids = kids;
            self.store_register(&tx, &before, &reg).await?;
        } else if let Some(reuse) = reuse {
            if let Some(s) = self.newest_list(&*tx).await? {
                if s.seq == reg.seq && (0..reuse).contains(&now.saturating_sub(s.iat)) {
                    tx.commit().await.map_err(&err)?;
                    return Ok((s.seq, s.list));
                }
            }
        }
        let list = denylist_of(&reg, bundle, now);
        let text = denylist::sign(&list, signer)?;
        let seq = signed(self, "the deny list sequence number", list.seq)?;
        tx.execute(
            "INSERT INTO hwpass_deny_lists (seq, iat, list) VALUES ($1, $2, $3) \
             ON CONFLICT (seq, iat) DO UPDATE SET list = $3",
            &[&seq, &now, &text],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            "DELETE FROM hwpass_deny_lists WHERE iat < $1 AND (seq, iat) <> ($2, $3)",
            &[&now.saturating_sub(KEEP_LISTS_SECS), &seq, &now],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok((list.seq, text))
    }
}

impl RevocationStore for PgStore {
    fn location(&self) -> PathBuf {
        PathBuf::from(format!("PostgreSQL {}", self.at()))
    }

    fn load(&self) -> Result<Register, RevocationError> {
        Ok(self.block_on(async {
            let doing = "reading the revocation register";
            let err = self.error(doing);
            let mut client = self.client(doing).await?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(&err)?;
            let reg = self.register_in(&tx, false).await?;
            tx.commit().await.map_err(&err)?;
            Ok::<_, DbError>(reg)
        })??)
    }

    fn seq(&self) -> Result<u64, RevocationError> {
        Ok(self.block_on(async {
            let doing = "reading the deny list sequence number";
            let client = self.client(doing).await?;
            let seq: i64 = client
                .query_one("SELECT seq FROM hwpass_register", &[])
                .await
                .map_err(self.error(doing))?
                .get(0);
            unsigned(self, "the deny list sequence number", seq)
        })??)
    }

    fn update(
        &self,
        change: &mut dyn FnMut(&mut Register) -> bool,
    ) -> Result<Register, RevocationError> {
        Ok(self.block_on(async {
            let doing = "changing the revocation register";
            let err = self.error(doing);
            let mut client = self.client(doing).await?;
            let tx = client.transaction().await.map_err(&err)?;
            let before = self.register_in(&tx, true).await?;
            let mut reg = before.clone();
            if change(&mut reg) {
                self.store_register(&tx, &before, &reg).await?;
            }
            tx.commit().await.map_err(&err)?;
            Ok::<_, DbError>(reg)
        })??)
    }

    /// One insert and one increment in one transaction (not a rewrite of the register).
    fn revoke(
        &self,
        target: Target,
        by: &str,
        reason: Option<String>,
        now: i64,
    ) -> Result<Revoked, RevocationError> {
        self.block_on(async {
            let doing = "revoking";
            let err = self.error(doing);
            let mut client = self.client(doing).await?;
            // Revoked before: answered from a read (no lock, no write; a standby can).
            let (table, key, id) = match &target {
                Target::Pass { jti, .. } => ("hwpass_revoked_passes", "jti", jti),
                Target::Device { jkt } => ("hwpass_revoked_devices", "jkt", jkt),
            };
            let known = client
                .query_opt(
                    &format!(
                        "SELECT (SELECT seq FROM hwpass_register) FROM {table} WHERE {key} = $1"
                    ),
                    &[id],
                )
                .await
                .map_err(&err)?;
            if let Some(row) = known {
                return Ok(Revoked {
                    seq: unsigned(self, "the deny list sequence number", row.get(0))?,
                    already: true,
                    audit_error: None,
                });
            }
            let tx = client.transaction().await.map_err(&err)?;
            let current: i64 = tx
                .query_one("SELECT seq FROM hwpass_register FOR UPDATE", &[])
                .await
                .map_err(&err)?
                .get(0);
            let Some(next) = current.checked_add(1) else {
                return Err(RevocationError::SequenceExhausted {
                    path: self.location(),
                    seq: unsigned(self, "the deny list sequence number", current)?,
                });
            };
            let inserted = match &target {
                Target::Pass { jti, exp, sub } => tx
                    .execute(
                        "INSERT INTO hwpass_revoked_passes \
                         (jti, exp, sub, time, revoked_by, reason, seq) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (jti) DO NOTHING",
                        &[jti, exp, sub, &now, &by, &reason, &next],
                    )
                    .await
                    .map_err(&err)?,
                Target::Device { jkt } => tx
                    .execute(
                        "INSERT INTO hwpass_revoked_devices (jkt, time, revoked_by, reason, seq) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (jkt) DO NOTHING",
                        &[jkt, &now, &by, &reason, &next],
                    )
                    .await
                    .map_err(&err)?,
            };
            let already = inserted == 0;
            let seq = if already {
                current
            } else {
                tx.execute("UPDATE hwpass_register SET seq = $1", &[&next])
                    .await
                    .map_err(&err)?;
                next
            };
            tx.commit().await.map_err(&err)?;
            Ok(Revoked {
                seq: unsigned(self, "the deny list sequence number", seq)?,
                already,
                audit_error: None,
            })
        })?
    }

    fn publish_seq(
        &self,
        bundle: &Jwks,
        signer: &dyn Signer,
        now: i64,
    ) -> Result<(u64, String), RevocationError> {
        self.block_on(self.publish_tx(bundle, signer, now, None))?
    }

    /// The newest stored list when it carries the current number and keys and is younger than
    /// `reuse` seconds (read without a lock or a write); else a new one signed and stored
    /// under the register's lock. A read-only standby hands out the newest stored list even
    /// when it is older: it is signed, and nothing newer can be made there.
    fn current_denylist(
        &self,
        bundle: &Jwks,
        signer: &dyn Signer,
        now: i64,
        reuse: i64,
    ) -> Result<(u64, String), RevocationError> {
        self.block_on(async {
            let doing = "reading the deny list";
            let err = self.error(doing);
            let newest = {
                let client = self.client(doing).await?;
                let row = client
                    .query_one("SELECT seq, kids FROM hwpass_register", &[])
                    .await
                    .map_err(&err)?;
                let seq = unsigned(self, "the deny list sequence number", row.get(0))?;
                let kids: Vec<String> = row.get(1);
                let newest = self.newest_list(&**client).await?;
                if let Some(s) = &newest {
                    let fresh = (0..reuse).contains(&now.saturating_sub(s.iat));
                    if s.seq == seq && kids == bundle_kids(bundle) && fresh {
                        return Ok((s.seq, s.list.clone()));
                    }
                }
                newest
            };
            match self.publish_tx(bundle, signer, now, Some(reuse)).await {
                Err(RevocationError::Database(e)) if e.is_read_only() => match newest {
                    Some(s) => {
                        warn!(
                            seq = s.seq,
                            iat = s.iat,
                            "read-only database: handing out the newest stored deny list"
                        );
                        Ok((s.seq, s.list))
                    }
                    None => Err(RevocationError::Database(e)),
                },
                other => other,
            }
        })?
    }
}
