//! Per-cluster serialisation of slow-path work (a COW copy, a merge of one cluster).
//! Only slow paths take it, so a plain mutex over a map is enough. The map is keyed by
//! cluster number with FxHash: SipHash was a visible share of a copy's fixed cost, and the
//! map holds at most the clusters in flight, so crafted collisions cannot grow it.

use rustc_hash::FxHashMap;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct ClusterLocks {
    table: Mutex<FxHashMap<u64, Vec<Waker>>>,
}

pub struct ClusterGuard<'a> {
    locks: &'a ClusterLocks,
    cluster: u64,
}

impl Drop for ClusterGuard<'_> {
    fn drop(&mut self) {
        let waiters = self.locks.table().remove(&self.cluster);
        for w in waiters.into_iter().flatten() {
            w.wake();
        }
    }
}

impl ClusterLocks {
    /// The map, even after a panic elsewhere poisoned the mutex: the map itself is never
    /// left half-updated (each access is one insert or remove), and a poisoned lock must
    /// not turn into a panic on every later copy.
    fn table(&self) -> MutexGuard<'_, FxHashMap<u64, Vec<Waker>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until no other task works on `cluster`, then owns it.
    pub async fn lock(&self, cluster: u64) -> ClusterGuard<'_> {
        poll_fn(|cx| {
            let mut t = self.table();
            match t.get_mut(&cluster) {
                Some(waiters) => {
                    if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        waiters.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
                None => {
                    t.insert(cluster, Vec::new());
                    Poll::Ready(ClusterGuard {
                        locks: self,
                        cluster,
                    })
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_table_still_locks_and_unlocks() {
        let locks = ClusterLocks::default();
        // A panic while the mutex is held (anywhere) poisons it.
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let _t = locks.table.lock();
                panic!("poison the cluster table");
            })
            .join()
        });
        assert!(r.is_err() && locks.table.is_poisoned());
        futures::executor::block_on(async {
            let g = locks.lock(7).await;
            assert!(locks.table().contains_key(&7));
            drop(g);
            assert!(locks.table().is_empty());
        });
    }
}
