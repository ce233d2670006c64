//! A fixed pool of signing keys (one PKCS#11 session each) shared by threads: the batch signer's
//! workers and the service's blocking tasks take a key, sign, and put it back.

use std::sync::{Condvar, Mutex};

/// Keys handed out one caller at a time; callers wait while all are in use.
#[derive(Debug)]
pub struct KeyPool<K> {
    idle: Mutex<Vec<K>>,
    returned: Condvar,
    size: usize,
}

impl<K> KeyPool<K> {
    /// A pool of these keys (at least one).
    pub fn new(keys: Vec<K>) -> Self {
        let size = keys.len();
        Self {
            idle: Mutex::new(keys),
            returned: Condvar::new(),
            size,
        }
    }

    /// How many keys the pool holds.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` with a key of its own, waiting for one if all are busy.
    pub fn with<R>(&self, f: impl FnOnce(&K) -> R) -> R {
        let key = {
            // A poisoned lock only means another caller panicked between pop and push; the
            // Vec itself is always consistent, so keep using it.
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(k) = idle.pop() {
                    break k;
                }
                idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
            }
        };
        let guard = Return {
            pool: self,
            key: Some(key),
        };
        // Invariant: `key` is Some until Return::drop.
        f(guard.key.as_ref().unwrap_or_else(|| unreachable!()))
    }
}

/// Puts the key back even if `f` panics.
struct Return<'a, K> {
    pool: &'a KeyPool<K>,
    key: Option<K>,
}

impl<K> Drop for Return<'_, K> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(k);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn never_hands_one_key_to_two_callers() {
        let pool = KeyPool::new((0..3).map(AtomicUsize::new).collect::<Vec<_>>());
        let busy = AtomicUsize::new(0);
        let max_busy = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..200 {
                        pool.with(|k| {
                            // A key in use by two callers would see its own marker changed.
                            let mine = k.fetch_add(1000, Ordering::SeqCst) + 1000;
                            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                            max_busy.fetch_max(now, Ordering::SeqCst);
                            std::hint::spin_loop();
                            assert_eq!(k.load(Ordering::SeqCst), mine);
                            busy.fetch_sub(1, Ordering::SeqCst);
                        })
                    }
                });
            }
        });
        assert!(max_busy.load(Ordering::SeqCst) <= 3);
        assert_eq!(pool.idle.lock().unwrap().len(), 3);
    }
}
