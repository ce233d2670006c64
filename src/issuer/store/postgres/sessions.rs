//! The web page's state in PostgreSQL, shared by the replicas: sessions (by the SHA-256 of
//! their id), used sign-in states, and the key of the CSRF tokens and sign-in cookie (made once
//! by `db migrate`). A replica on a read-only standby reads sessions but cannot sign anybody in
//! (503).
//!
//! Called from the service's async handlers: each call leaves the async worker for the
//! duration (`block_in_place`) and runs on the store's own runtime, and at most a quarter of
//! the store's connections serve session calls at once (a flood of made-up session cookies
//! cannot starve the audit writer).

use super::{DbError, PgStore};
use crate::issuer::store::{SessionStore, StoredSession};

impl PgStore {
    fn blocking<R>(
        &self,
        f: impl std::future::Future<Output = Result<R, DbError>>,
    ) -> Result<R, DbError> {
        tokio::task::block_in_place(|| {
            self.block_on(async {
                let _turn = self.web_turn().await;
                f.await
            })
        })?
    }
}

impl SessionStore for PgStore {
    fn web_key(&self) -> Result<[u8; 32], DbError> {
        self.blocking(async {
            let doing = "reading the web key";
            let client = self.client(doing).await?;
            let row = client
                .query_opt("SELECT key FROM hwpass_web_key", &[])
                .await
                .map_err(self.error(doing))?;
            let key: Vec<u8> = row
                .ok_or_else(|| {
                    self.damaged("hwpass_web_key is empty: run `hwpass-issuer db migrate`")
                })?
                .get(0);
            key.try_into()
                .map_err(|_| self.damaged("hwpass_web_key holds a key that is not 32 bytes"))
        })
    }

    fn session(&self, id_hash: &str, now: i64) -> Result<Option<StoredSession>, DbError> {
        self.blocking(async {
            let doing = "reading a web session";
            let client = self.client(doing).await?;
            let row = client
                .query_opt(
                    "SELECT person, expires, data FROM hwpass_web_sessions \
                     WHERE id_sha256 = $1 AND expires > $2",
                    &[&id_hash, &now],
                )
                .await
                .map_err(self.error(doing))?;
            Ok(row.map(|r| StoredSession {
                user: r.get(0),
                expires: r.get(1),
                data: r.get(2),
            }))
        })
    }

    fn open_session(
        &self,
        id_hash: &str,
        session: StoredSession,
        max_per_user: usize,
        now: i64,
    ) -> Result<(), DbError> {
        let keep = i64::try_from(max_per_user.saturating_sub(1)).unwrap_or(i64::MAX);
        self.blocking(async {
            let doing = "storing a web session";
            let err = self.error(doing);
            let mut client = self.client(doing).await?;
            let tx = client.transaction().await.map_err(&err)?;
            tx.execute(
                "DELETE FROM hwpass_web_sessions WHERE expires <= $1",
                &[&now],
            )
            .await
            .map_err(&err)?;
            // The user's newest `keep` stay; two sign-ins at once through two replicas may
            // each keep one more (the bound is per sign-in, not a lock on the user).
            tx.execute(
                "DELETE FROM hwpass_web_sessions WHERE person = $1 AND id_sha256 NOT IN \
                 (SELECT id_sha256 FROM hwpass_web_sessions WHERE person = $1 \
                  ORDER BY opened DESC, id_sha256 LIMIT $2)",
                &[&session.user, &keep],
            )
            .await
            .map_err(&err)?;
            tx.execute(
                "INSERT INTO hwpass_web_sessions (id_sha256, person, opened, expires, data) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id_hash,
                    &session.user,
                    &now,
                    &session.expires,
                    &session.data,
                ],
            )
            .await
            .map_err(&err)?;
            tx.commit().await.map_err(&err)
        })
    }

    fn end_session(&self, id_hash: &str) -> Result<(), DbError> {
        self.blocking(async {
            let doing = "ending a web session";
            let client = self.client(doing).await?;
            client
                .execute(
                    "DELETE FROM hwpass_web_sessions WHERE id_sha256 = $1",
                    &[&id_hash],
                )
                .await
                .map_err(self.error(doing))?;
            Ok(())
        })
    }

    fn end_sessions_of(&self, users: &[String]) -> Result<u64, DbError> {
        self.blocking(async {
            let doing = "ending web sessions";
            let client = self.client(doing).await?;
            client
                .execute(
                    "DELETE FROM hwpass_web_sessions WHERE person = ANY($1)",
                    &[&users],
                )
                .await
                .map_err(self.error(doing))
        })
    }

    fn use_state(&self, state_hash: [u8; 32], until: i64, now: i64) -> Result<bool, DbError> {
        self.blocking(async {
            let doing = "recording a used sign-in state";
            let err = self.error(doing);
            let mut client = self.client(doing).await?;
            let tx = client.transaction().await.map_err(&err)?;
            tx.execute("DELETE FROM hwpass_used_states WHERE until <= $1", &[&now])
                .await
                .map_err(&err)?;
            let inserted = tx
                .execute(
                    "INSERT INTO hwpass_used_states (state_sha256, until) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                    &[&&state_hash[..], &until],
                )
                .await
                .map_err(&err)?;
            tx.commit().await.map_err(&err)?;
            Ok(inserted == 1)
        })
    }
}
