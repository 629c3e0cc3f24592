//! Per-cluster serialisation of slow-path work (a COW copy, a merge of one cluster).
//! Only slow paths take it, so a plain mutex over a map is enough.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct ClusterLocks {
    table: Mutex<HashMap<u64, Vec<Waker>>>,
}

pub struct ClusterGuard<'a> {
    locks: &'a ClusterLocks,
    cluster: u64,
}

impl Drop for ClusterGuard<'_> {
    fn drop(&mut self) {
        let waiters = self.locks.table.lock().unwrap().remove(&self.cluster);
        for w in waiters.into_iter().flatten() {
            w.wake();
        }
    }
}

impl ClusterLocks {
    /// Waits until no other task works on `cluster`, then owns it.
    pub async fn lock(&self, cluster: u64) -> ClusterGuard<'_> {
        poll_fn(|cx| {
            let mut t = self.table.lock().unwrap();
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
