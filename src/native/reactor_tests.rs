//! Reactor messages, tasks, timers, cross-thread wakes and io_uring ops.

use super::*;
use std::sync::mpsc;

#[test]
fn messages_tasks_timers_and_cross_thread_wakes() {
    let r = Reactors::start(&[0, 1]).unwrap();
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let tx2 = tx.clone();
    r.get(0).send(move || {
        spawn_local(async move {
            sleep(Duration::from_millis(30)).await;
            tx2.send(("timer", Instant::now())).unwrap();
        })
    });
    // A task on reactor 1 woken by a oneshot completed from this thread.
    let (otx, orx) = futures::channel::oneshot::channel::<u32>();
    let tx3 = tx.clone();
    r.get(1).send(move || {
        spawn_local(async move {
            let v = orx.await.unwrap();
            assert_eq!(v, 42);
            tx3.send(("woken", Instant::now())).unwrap();
        })
    });
    std::thread::sleep(Duration::from_millis(10));
    otx.send(42).unwrap();
    let mut got: Vec<_> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(got[0].0, "timer");
    assert!(got[0].1 - t0 >= Duration::from_millis(30));
    assert_eq!(got[1].0, "woken");
    let v = futures::executor::block_on(r.get(1).run(|| async { 7 }));
    assert_eq!(v, Some(7));
    r.stop();
}

#[test]
fn uring_reads_a_file() {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&[5u8; 4096]).unwrap();
    let file = std::fs::File::open(f.path()).unwrap();
    let r = Reactors::start(&[0]).unwrap();
    let n = futures::executor::block_on(r.get(0).run(move || async move {
        let mut buf = vec![0u8; 4096];
        let e = opcode::Read::new(types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), 4096)
            .offset(0)
            .build();
        let n = uring(e, None).await;
        (n, buf.iter().all(|&b| b == 5))
    }));
    assert_eq!(n, Some((4096, true)));
}

/// A task that keeps yielding lets the reactor fire its timers and run its other tasks (a
/// self-wake would not: the turn polls ready tasks until none is left).
#[test]
fn yield_now_lets_timers_and_other_tasks_run() {
    let r = Reactors::start(&[0]).unwrap();
    let yields = futures::executor::block_on(r.get(0).run(|| async {
        let fired = Rc::new(Cell::new(false));
        let f = fired.clone();
        spawn_local(async move {
            sleep(Duration::from_millis(1)).await;
            f.set(true);
        });
        let mut yields = 0u64;
        // Bounded, so the test fails instead of hanging if the timer never fires.
        while !fired.get() && yields < 50_000_000 {
            yield_now().await;
            yields += 1;
        }
        (fired.get(), yields)
    }));
    let (fired, yields) = yields.unwrap();
    assert!(
        fired,
        "the timer never fired while a task yielded ({yields} yields)"
    );
    r.stop();
}
