//! A load generator on the project's NVMe/TCP initiator, to compare it with SPDK's
//! (`spdk_nvme_perf`, `bdevperf`) against the same target:
//!
//! ```text
//! cargo run --release -p nvmf --example perf -- --addr 127.0.0.1:4420 \
//!     --nqn nqn.2016-06.io.spdk:cnode1 --rw randread --qd 32 --secs 5
//! ```
//! Prints one JSON line: `{"iops":…,"mean_lat_us":…}`. 4 KiB (or `--io-size`) random I/O
//! over the namespace's first `--span-mib`, all on one thread (pin it with `taskset`).
//! `--poll`: that thread also reads the sockets, polling them as SPDK's initiators do
//! (an [`RxDriver`]); without it, each queue has the driver's reader thread.

use nvmf::driver::{ConnectOptions, Controller, PollState, Poller, RxDriver, block_on};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: perf --addr ADDR:PORT --nqn NQN [--rw randread|randwrite] [--qd N] [--secs S] \
         [--io-size BYTES] [--span-mib N] [--io-queues N]"
    );
    std::process::exit(2);
}

type Job<'a> = Pin<Box<dyn Future<Output = u64> + 'a>>;

/// Polls every job until all are done; the jobs' I/O futures wake this thread.
fn join_all(mut jobs: Vec<Job<'_>>) -> u64 {
    let mut done = vec![None; jobs.len()];
    block_on(std::future::poll_fn(move |cx: &mut Context<'_>| {
        for (j, d) in jobs.iter_mut().zip(done.iter_mut()) {
            if d.is_none()
                && let Poll::Ready(n) = j.as_mut().poll(cx)
            {
                *d = Some(n);
            }
        }
        if done.iter().all(Option::is_some) {
            Poll::Ready(done.iter().flatten().sum())
        } else {
            Poll::Pending
        }
    }))
}

/// Polls every job and every queue in a loop until all jobs are done.
fn spin_all(mut jobs: Vec<Job<'_>>, poller: &Poller, st: &mut PollState) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    while !jobs.is_empty() {
        jobs.retain_mut(|j| match j.as_mut().poll(&mut cx) {
            Poll::Ready(n) => {
                total += n;
                false
            }
            Poll::Pending => true,
        });
        poller.poll(st);
    }
    total
}

fn main() {
    let (mut addr, mut nqn) = (None, None);
    let (mut write, mut qd, mut secs, mut io_size, mut span_mib, mut queues) =
        (false, 32usize, 5.0f64, 4096u32, 64u64, 1u16);
    let mut poll = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        let num = |s: String| s.parse::<f64>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--addr" => addr = Some(val()),
            "--nqn" => nqn = Some(val()),
            "--rw" => {
                write = match val().as_str() {
                    "randread" => false,
                    "randwrite" => true,
                    _ => usage(),
                }
            }
            "--qd" => qd = num(val()) as usize,
            "--secs" => secs = num(val()),
            "--io-size" => io_size = num(val()) as u32,
            "--span-mib" => span_mib = num(val()) as u64,
            "--io-queues" => queues = num(val()) as u16,
            "--poll" => poll = true,
            _ => usage(),
        }
    }
    let (Some(addr), Some(nqn)) = (addr, nqn) else {
        usage()
    };
    let addr = addr.parse().unwrap_or_else(|_| usage());
    let poller = Arc::new(Poller::default());
    let opts = ConnectOptions {
        io_queues: queues.max(1),
        queue_size: (qd as u16).saturating_add(1).max(32),
        rx: poll.then(|| poller.clone() as Arc<dyn RxDriver>),
        ..ConnectOptions::default()
    };
    let mut st = PollState::default();
    // The connect blocks on completions that this thread reads when polling.
    let connecting = std::thread::spawn({
        let nqn = nqn.clone();
        move || Controller::connect(addr, &nqn, "nqn.2014-08.org.nvmexpress:uuid:perf", opts)
    });
    while poll && !connecting.is_finished() {
        poller.poll(&mut st);
    }
    let c = match connecting.join() {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("perf: connect {addr} {nqn}: {e}");
            std::process::exit(1);
        }
        Err(_) => std::process::exit(1),
    };
    let Some(ns) = c.info().namespace(1).cloned() else {
        eprintln!("perf: {nqn} has no namespace 1");
        std::process::exit(1);
    };
    let bs = ns.block_size;
    let nblocks = (io_size / bs).max(1);
    let slots = ((span_mib << 20) / u64::from(io_size)).min(ns.num_blocks / u64::from(nblocks));
    let d = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let (c, lat_sum) = (&c, std::cell::Cell::new(0u128));
    let lat_sum = &lat_sum;
    let jobs: Vec<Job<'_>> = (0..qd)
        .map(|q| {
            Box::pin(async move {
                // xorshift64: cheap, deterministic, different per job.
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (q as u64 + 1);
                let data = bytes::Bytes::from(vec![0xA5u8; (nblocks * bs) as usize]);
                let mut n = 0u64;
                while start.elapsed() < d {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let lba = (x % slots.max(1)) * u64::from(nblocks);
                    let t = Instant::now();
                    let r = if write {
                        c.write(1, lba, data.clone()).await
                    } else {
                        c.read(1, lba, nblocks).await.map(drop)
                    };
                    if let Err(e) = r {
                        eprintln!("perf: I/O at lba {lba}: {e}");
                        std::process::exit(1);
                    }
                    lat_sum.set(lat_sum.get() + t.elapsed().as_nanos());
                    n += 1;
                }
                n
            }) as Job<'_>
        })
        .collect();
    let ios = if poll {
        spin_all(jobs, &poller, &mut st)
    } else {
        join_all(jobs)
    };
    let el = start.elapsed().as_secs_f64();
    println!(
        "{{\"iops\":{:.0},\"mean_lat_us\":{:.2}}}",
        ios as f64 / el,
        lat_sum.get() as f64 / 1000.0 / ios.max(1) as f64
    );
}
