//! Per-process async locks by key: the Task lock of `PUT /fhir/Task/{id}`
//! and the Patient locks of demographic merges. Entries are weak, so a lock
//! nobody holds is dropped at the next clean-up (past 1,024 entries).
//! Instances sharing a PostgreSQL store do not share these locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::OwnedMutexGuard;

/// Locks by key; see the module docs.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Wait for and take the lock of `key`.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() > 1024 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_waits_other_keys_do_not() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        let _b = locks.lock("b").await;
        let again = Arc::clone(&locks);
        let waiting = tokio::spawn(async move { again.lock("a").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a second holder of one key waits");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("taken once released")
            .expect("task");
    }

    #[tokio::test]
    async fn unheld_locks_are_dropped_at_clean_up() {
        let locks = KeyedLocks::default();
        for i in 0..1100 {
            drop(locks.lock(&format!("k{i}")).await);
        }
        let n = locks
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(n <= 1025, "{n} entries kept");
    }
}
