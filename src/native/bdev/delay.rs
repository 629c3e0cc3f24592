//! `bdev_delay_create`: SPDK's delay bdev. Reads take the read latency, writes the write
//! latency (one request in a hundred the p99 one); other requests pass straight through,
//! as in SPDK. Latencies change at runtime with `bdev_delay_update_latency`.

use super::{Dev, IoType};
use crate::engine::IoError;
use crate::native::reactor::sleep;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// SPDK's params, latencies in microseconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelayParams {
    pub base_bdev_name: String,
    pub name: String,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

pub struct Delay {
    inner: Dev,
    base_name: String,
    /// avg_read, p99_read, avg_write, p99_write.
    lat: [AtomicU64; 4],
    count: AtomicU64,
}

impl Delay {
    pub fn new(inner: Dev, p: &DelayParams) -> Self {
        Self {
            inner,
            base_name: p.base_bdev_name.clone(),
            lat: [
                AtomicU64::new(p.avg_read_latency),
                AtomicU64::new(p.p99_read_latency),
                AtomicU64::new(p.avg_write_latency),
                AtomicU64::new(p.p99_write_latency),
            ],
            count: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &Dev {
        &self.inner
    }

    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    /// The current params, for save_config.
    pub fn params(&self, name: &str) -> DelayParams {
        let l = |i: usize| self.lat[i].load(Ordering::Relaxed);
        DelayParams {
            base_bdev_name: self.base_name.clone(),
            name: name.to_owned(),
            avg_read_latency: l(0),
            p99_read_latency: l(1),
            avg_write_latency: l(2),
            p99_write_latency: l(3),
            uuid: None,
        }
    }

    /// `bdev_delay_update_latency`'s `latency_type`.
    pub fn update(&self, latency_type: &str, us: u64) -> Result<(), String> {
        let i = match latency_type {
            "avg_read" => 0,
            "p99_read" => 1,
            "avg_write" => 2,
            "p99_write" => 3,
            other => {
                return Err(format!(
                    "latency_type: {other} is not one of avg_read, p99_read, avg_write, p99_write"
                ));
            }
        };
        self.lat[i].store(us, Ordering::Relaxed);
        Ok(())
    }

    pub async fn op<'a>(
        &'a self,
        kind: IoType,
        f: impl FnOnce(&'a Dev) -> Pin<Box<dyn Future<Output = Result<(), IoError>> + 'a>>,
    ) -> Result<(), IoError> {
        let base = match kind {
            IoType::Read => 0,
            IoType::Write => 2,
            _ => return f(&self.inner).await,
        };
        let tail = self.count.fetch_add(1, Ordering::Relaxed) % 100 == 99;
        let us = self.lat[base + usize::from(tail)].load(Ordering::Relaxed);
        let r = f(&self.inner).await;
        if us > 0 {
            sleep(Duration::from_micros(us)).await;
        }
        r
    }
}
