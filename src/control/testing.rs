//! A [`Host`] over RAM disks with SPDK's claim rules: what the control plane's own tests,
//! its fuzzer and benches run on, without SPDK.

use super::error::{EBUSY, ENODEV, RpcError};
use super::host::Host;
use super::replica::Replica;
use crate::engine::testing::{TestDisk, test_disk};
use futures::executor::{LocalPool, LocalSpawner};
use futures::future::LocalBoxFuture;
use futures::task::LocalSpawnExt;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

struct Bdev {
    disk: TestDisk,
    claimed: bool,
}

pub struct RamHost {
    bdevs: RefCell<BTreeMap<String, Bdev>>,
    nodes: RefCell<Vec<Arc<Replica<TestDisk>>>>,
    pool: RefCell<LocalPool>,
    spawner: LocalSpawner,
    /// Nodes whose merge task finished at `done`: their overlays are released on the next
    /// [`RamHost::run_background`] (the task cannot borrow the host).
    released: std::rc::Rc<RefCell<Vec<Arc<Replica<TestDisk>>>>>,
}

impl Default for RamHost {
    fn default() -> Self {
        let pool = LocalPool::new();
        let spawner = pool.spawner();
        RamHost {
            bdevs: RefCell::default(),
            nodes: RefCell::default(),
            pool: RefCell::new(pool),
            spawner,
            released: Default::default(),
        }
    }
}

impl RamHost {
    /// Like `bdev_malloc_create`.
    pub fn add_malloc(&self, name: &str, block_size: u32, num_blocks: u64) -> TestDisk {
        let disk = test_disk(block_size, num_blocks);
        self.bdevs.borrow_mut().insert(
            name.to_owned(),
            Bdev {
                disk: disk.clone(),
                claimed: false,
            },
        );
        disk
    }

    pub fn disk(&self, name: &str) -> Option<TestDisk> {
        self.bdevs.borrow().get(name).map(|b| b.disk.clone())
    }

    /// Names of the claimed bdevs.
    pub fn claimed(&self) -> Vec<String> {
        let b = self.bdevs.borrow();
        b.iter()
            .filter(|(_, b)| b.claimed)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Runs `fut` (an RPC, say) and the host's background tasks until `fut` completes.
    pub fn run<F: Future>(&self, fut: F) -> F::Output {
        self.pool.borrow_mut().run_until(fut)
    }

    /// Runs background tasks (a merge) until none can make progress.
    pub fn run_background(&self) {
        self.pool.borrow_mut().run_until_stalled();
        let done = std::mem::take(&mut *self.released.borrow_mut());
        for node in done {
            self.release_overlays(&node);
        }
    }

    /// Calls a method as a JSON-RPC client would, and runs it to its end.
    pub fn call(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, RpcError> {
        self.run(super::handle(self, method, Some(params)))
    }
}

/// A turn of the pool.
fn yield_once() -> impl Future<Output = ()> {
    crate::engine::yield_with(std::task::Waker::wake_by_ref)
}

/// The RAM host's runtime: it has no clock, so a millisecond is one turn of its pool (a
/// remote leg held by a test times out after `remote_timeout_ms` turns).
pub struct RamRuntime(LocalSpawner);

impl crate::engine::Runtime for RamRuntime {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        let turns = d.as_millis().max(1);
        async move {
            for _ in 0..turns {
                yield_once().await;
            }
        }
    }
    fn yield_now(&self) -> impl Future<Output = ()> {
        yield_once()
    }
    fn spawn(&self, task: std::pin::Pin<Box<dyn Future<Output = ()>>>) {
        let _ = self.0.spawn_local(task);
    }
}

impl Host for RamHost {
    type Dev = TestDisk;
    type Node = Replica<TestDisk>;

    fn nodes(&self) -> Vec<Arc<Replica<TestDisk>>> {
        self.nodes.borrow().iter().rev().cloned().collect()
    }

    fn bdev_exists(&self, name: &str) -> bool {
        self.bdevs.borrow().contains_key(name)
            || self
                .nodes
                .borrow()
                .iter()
                .any(|n| n.params().bdev_names().contains(&name))
    }

    fn open_claim(&self, param: &'static str, bdev: &str) -> Result<TestDisk, RpcError> {
        let mut all = self.bdevs.borrow_mut();
        let Some(b) = all.get_mut(bdev) else {
            return Err(RpcError::new(
                ENODEV,
                format!("{param}: cannot open bdev {bdev} (no such device)"),
            ));
        };
        if b.claimed {
            return Err(RpcError::new(
                EBUSY,
                format!("{param}: bdev {bdev} is already claimed"),
            ));
        }
        b.claimed = true;
        Ok(b.disk.clone())
    }

    fn release(&self, legs: Vec<TestDisk>) {
        for b in self.bdevs.borrow_mut().values_mut() {
            if legs.iter().any(|l| Arc::ptr_eq(l, &b.disk)) {
                b.claimed = false;
            }
        }
    }

    fn register(&self, replica: Replica<TestDisk>) -> Result<Arc<Replica<TestDisk>>, RpcError> {
        let node = Arc::new(replica);
        self.nodes.borrow_mut().push(node.clone());
        Ok(node)
    }

    fn unregister(&self, node: Arc<Replica<TestDisk>>) -> LocalBoxFuture<'static, ()> {
        self.nodes.borrow_mut().retain(|n| !Arc::ptr_eq(n, &node));
        // Overlays released at done are no longer ours to release.
        let done = node.secondary().is_some() && node.stage() == crate::engine::Stage::Done;
        let legs = if node.is_reprotected() {
            node.current_legs()
        } else if done {
            &node.legs[..1]
        } else {
            &node.legs[..]
        };
        self.release(legs.to_vec());
        Box::pin(std::future::ready(()))
    }

    fn spawn_merge(&self, node: Arc<Replica<TestDisk>>) {
        let released = self.released.clone();
        let rt = RamRuntime(self.spawner.clone());
        // Only fails once the pool is gone, i.e. with the host.
        let _ = self.spawner.spawn_local(async move {
            node.run_merge(&rt).await;
            if node.stage() == crate::engine::Stage::Done {
                released.borrow_mut().push(node);
            }
        });
    }

    fn spawn_sync(&self, node: Arc<Replica<TestDisk>>) {
        let rt = RamRuntime(self.spawner.clone());
        let _ = self.spawner.spawn_local(async move {
            node.run_job(&rt).await;
        });
    }

    fn release_overlays(&self, node: &Arc<Replica<TestDisk>>) {
        if matches!(node.role, super::replica::Role::Secondary(_)) {
            self.release(node.legs[1..].to_vec());
        }
    }

    fn reprotect_supported(&self, _name: &str) -> Result<(), RpcError> {
        Ok(())
    }

    fn sleep(&self, _d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(yield_once())
    }
}
