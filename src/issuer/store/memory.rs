//! The web page's state in this process ([`MemorySessions`]): the embedded default for one
//! machine. A restart signs everybody out.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{DbError, SessionStore, StoredSession};

/// Sign-in states remembered at most (the oldest forgotten first; the provider's codes are
/// single-use besides).
const MAX_USED_STATES: usize = 10_000;

/// Sessions, used sign-in states and a per-process web key, in memory.
#[derive(Debug)]
pub struct MemorySessions {
    key: [u8; 32],
    sessions: Mutex<HashMap<String, (u64, StoredSession)>>,
    used_states: Mutex<HashMap<[u8; 32], i64>>,
}

impl MemorySessions {
    /// An empty store with a fresh random key.
    pub fn new() -> Result<Self, String> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| format!("random: {e}"))?;
        Ok(Self {
            key,
            sessions: Mutex::new(HashMap::new()),
            used_states: Mutex::new(HashMap::new()),
        })
    }
}

impl SessionStore for MemorySessions {
    fn web_key(&self) -> Result<[u8; 32], DbError> {
        Ok(self.key)
    }

    fn session(&self, id_hash: &str, now: i64) -> Result<Option<StoredSession>, DbError> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        Ok(sessions
            .get(id_hash)
            .filter(|(_, s)| s.expires > now)
            .map(|(_, s)| s.clone()))
    }

    fn open_session(
        &self,
        id_hash: &str,
        session: StoredSession,
        max_per_user: usize,
        now: i64,
    ) -> Result<(), DbError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, (_, s)| s.expires > now);
        let mut mine: Vec<(u64, String)> = sessions
            .iter()
            .filter(|(_, (_, s))| s.user == session.user)
            .map(|(k, (serial, _))| (*serial, k.clone()))
            .collect();
        mine.sort_unstable();
        let keep = max_per_user.saturating_sub(1);
        for (_, key) in mine.iter().take(mine.len().saturating_sub(keep)) {
            sessions.remove(key);
        }
        let serial = sessions.values().map(|(n, _)| *n).max().unwrap_or(0) + 1;
        sessions.insert(id_hash.to_string(), (serial, session));
        Ok(())
    }

    fn end_session(&self, id_hash: &str) -> Result<(), DbError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(id_hash);
        Ok(())
    }

    fn end_sessions_of(&self, users: &[String]) -> Result<u64, DbError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.len();
        sessions.retain(|_, (_, s)| !users.contains(&s.user));
        Ok((before - sessions.len()) as u64)
    }

    fn use_state(&self, state_hash: [u8; 32], until: i64, now: i64) -> Result<bool, DbError> {
        let mut used = self.used_states.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, u| *u > now);
        if used.contains_key(&state_hash) {
            return Ok(false);
        }
        if used.len() >= MAX_USED_STATES {
            if let Some(oldest) = used.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) {
                used.remove(&oldest);
            }
        }
        used.insert(state_hash, until);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(user: &str, expires: i64) -> StoredSession {
        StoredSession {
            user: user.into(),
            expires,
            data: "{}".into(),
        }
    }

    #[test]
    fn sessions_expire_and_the_oldest_of_a_user_ends_first() {
        let m = MemorySessions::new().unwrap();
        m.open_session("a1", s("alice", 100), 2, 0).unwrap();
        m.open_session("a2", s("alice", 100), 2, 0).unwrap();
        m.open_session("b1", s("bob", 50), 2, 0).unwrap();
        m.open_session("a3", s("alice", 100), 2, 0).unwrap();
        assert_eq!(m.session("a1", 0).unwrap(), None);
        assert!(m.session("a2", 0).unwrap().is_some());
        assert!(m.session("a3", 0).unwrap().is_some());
        assert!(m.session("b1", 49).unwrap().is_some());
        assert_eq!(m.session("b1", 50).unwrap(), None);
        assert_eq!(m.end_sessions_of(&["alice".into()]).unwrap(), 2);
        assert_eq!(m.session("a3", 0).unwrap(), None);
    }

    #[test]
    fn a_state_is_used_once_until_it_expires() {
        let m = MemorySessions::new().unwrap();
        assert!(m.use_state([1; 32], 10, 0).unwrap());
        assert!(!m.use_state([1; 32], 10, 5).unwrap());
        assert!(m.use_state([1; 32], 20, 10).unwrap());
    }
}
