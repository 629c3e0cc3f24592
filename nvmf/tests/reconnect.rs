//! Reconnect behaviour (SPDK's ctrlr_loss_timeout / reconnect_delay / fast_io_fail) and
//! keep alive, against a target that really goes away and comes back on the same port.

mod common;
use common::*;
use nvmf::driver::{ConnectOptions, Controller, Error, TargetServer};
use nvmf::host::{LinkState, ReconnectOpts};
use nvmf::target::{NamespaceConfig, RamBackend, SubsystemConfig, Target, TargetConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn target_on(be: Arc<RamBackend>) -> Arc<Target> {
    let t = Target::new(TargetConfig::default());
    t.add_subsystem(SubsystemConfig::new(NQN).namespace(NamespaceConfig::new(1, be)))
        .unwrap();
    t
}

fn restart(addr: SocketAddr, be: Arc<RamBackend>) -> TargetServer {
    // The old listener's port may linger briefly; retry the bind.
    let start = Instant::now();
    loop {
        match TargetServer::start(target_on(be.clone()), addr) {
            Ok(s) => return s,
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("rebind {addr}: {e}"),
        }
    }
}

#[test]
fn io_resumes_after_the_target_restarts() {
    io_resumes(false);
}

/// The new queues of a reconnect reach the polling driver too.
#[test]
fn io_resumes_after_the_target_restarts_with_a_polling_driver() {
    io_resumes(true);
}

fn io_resumes(poll: bool) {
    let be = Arc::new(RamBackend::new(512, 4096));
    let srv = TargetServer::start(target_on(be.clone()), "127.0.0.1:0").unwrap();
    let addr = srv.local_addr();
    let opts = ConnectOptions {
        io_queues: 2,
        reconnect: ReconnectOpts {
            ctrlr_loss_timeout: Some(Duration::from_secs(20)),
            reconnect_delay: Duration::from_millis(100),
            fast_io_fail_timeout: None,
        },
        ..ConnectOptions::default()
    };
    let (opts, _poller) = polled_if(poll, opts);
    let c = Controller::connect(addr, NQN, HOSTNQN, opts).unwrap();
    let b = c.blocking();
    b.write(1, 10, pattern(8192, 1)).unwrap();
    srv.shutdown();
    // I/O issued while the target is down waits for the reconnect and then succeeds.
    let be2 = be.clone();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        restart(addr, be2)
    });
    b.write(1, 100, pattern(4096, 2)).unwrap();
    let srv2 = back.join().unwrap();
    assert!(c.reconnects() >= 1);
    assert_eq!(b.read(1, 10, 16).unwrap(), pattern(8192, 1));
    assert_eq!(b.read(1, 100, 8).unwrap(), pattern(4096, 2));
    assert_eq!(c.info().io_queues, 2);
    drop(srv2);
}

#[test]
fn fast_io_fail_then_controller_loss() {
    let be = Arc::new(RamBackend::new(512, 64));
    let srv = TargetServer::start(target_on(be), "127.0.0.1:0").unwrap();
    let opts = ConnectOptions {
        reconnect: ReconnectOpts {
            ctrlr_loss_timeout: Some(Duration::from_millis(1500)),
            reconnect_delay: Duration::from_millis(100),
            fast_io_fail_timeout: Some(Duration::from_millis(300)),
        },
        ..ConnectOptions::default()
    };
    let c = Controller::connect(srv.local_addr(), NQN, HOSTNQN, opts).unwrap();
    c.blocking().write(1, 0, vec![1u8; 512]).unwrap();
    let t0 = Instant::now();
    srv.shutdown();
    // Waits (reconnecting) until fast_io_fail_timeout, then fails fast.
    let r = c.blocking().read(1, 0, 1);
    assert_eq!(r, Err(Error::FastIoFail));
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    let r = c.blocking().read(1, 0, 1);
    assert_eq!(r, Err(Error::FastIoFail), "fails at once now");
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.link_state() != LinkState::Failed {
        assert!(Instant::now() < deadline, "controller never declared lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.blocking().read(1, 0, 1), Err(Error::ControllerLost));
}

#[test]
fn default_policy_gives_up_after_one_attempt() {
    let be = Arc::new(RamBackend::new(512, 64));
    let srv = TargetServer::start(target_on(be), "127.0.0.1:0").unwrap();
    let c = Controller::connect(srv.local_addr(), NQN, HOSTNQN, ConnectOptions::default()).unwrap();
    srv.shutdown();
    assert_eq!(c.blocking().read(1, 0, 1), Err(Error::ControllerLost));
}

#[test]
fn target_ends_a_controller_whose_keep_alive_stops() {
    // A raw host: Connect with KATO 300 ms, enable, then go silent.
    use nvmf::nvme::cmd::{Cqe, Sqe};
    use nvmf::nvme::fabrics::{self, Connect, cc, prop};
    use nvmf::pdu::{self, Decoder, DecoderCfg, IcReq, Pdu, WireCfg};
    use std::io::{Read, Write};
    let t = target(TargetConfig::default(), 512, 64, false);
    let srv = TargetServer::start(t.clone(), "127.0.0.1:0").unwrap();
    let mut s = std::net::TcpStream::connect(srv.local_addr()).unwrap();
    let mut out = Vec::new();
    pdu::encode_ic_req(
        &mut out,
        &IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: false,
            ddgst: false,
            maxr2t: 0,
        },
    );
    let c = Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato: 300,
        hostid: [1; 16],
        cntlid: 0xFFFF,
        subnqn: NQN.into(),
        hostnqn: HOSTNQN.into(),
    };
    let (mut sqe, data) = c.to_sqe();
    sqe.cid = 1;
    pdu::encode_capsule_cmd(&mut out, &sqe.encode(), &data, &WireCfg::default());
    let mut en: Sqe = fabrics::property_set(prop::CC, u64::from(cc::EN | cc::IOSQES_IOCQES), false);
    en.cid = 2;
    pdu::encode_capsule_cmd(&mut out, &en.encode(), &[], &WireCfg::default());
    s.write_all(&out).unwrap();
    let mut dec = Decoder::new(DecoderCfg::host(1 << 20));
    let mut buf = Vec::new();
    let mut got = 0;
    while got < 2 {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&b[..n]);
        while let Some((p, used)) = dec.decode(&buf).unwrap() {
            buf.drain(..used);
            match p {
                Pdu::IcResp(_) => dec.cfg.ic_done = true,
                Pdu::CapsuleResp(r) => {
                    assert!(Cqe::parse(&r.cqe).status.is_success());
                    got += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(t.controller_count(), 1);
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    // The target closes the connection once KATO passes without a command.
    let n = s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "expected EOF");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(t.controller_count(), 0);
}

#[test]
fn host_keep_alive_keeps_an_idle_controller() {
    let srv = server(TargetConfig::default(), 512, 64);
    let opts = ConnectOptions {
        kato: Duration::from_millis(400),
        ..ConnectOptions::default()
    };
    let c = connect(&srv, opts);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.is_connected());
    assert_eq!(c.reconnects(), 0);
    c.blocking().write(1, 0, vec![7u8; 512]).unwrap();
    assert_eq!(srv.target().controller_count(), 1);
}
