//! Admin command behaviour hosts depend on (see shared/notes/nvmf-interop.md): held AERs,
//! Get Features Keep Alive Timer, Abort, Identify fields, log page bounds, controller reset.

mod common;
use common::raw::{admin_conn, drive, drive_running, io_prefix, small_target, wire};
use nvmf::nvme::cmd::{Cqe, Sgl, Sqe, Status, admin};
use nvmf::nvme::fabrics::{self, cc, prop};
use nvmf::nvme::identify::{self, ControllerData, cns};
use nvmf::nvme::log;
use nvmf::pdu::{self, Pdu};
use nvmf::target::TargetConn;
use std::time::{Duration, Instant};

/// Sends `cmds` on an enabled admin connection; returns (cid, status, dw0, data) per completion.
fn run(conn: &mut TargetConn, cmds: &[Sqe]) -> Vec<(u16, Status, u32, Vec<u8>)> {
    let mut b = Vec::new();
    for s in cmds {
        pdu::encode_capsule_cmd(&mut b, &s.encode(), &[], &wire(false, false));
    }
    let (pdus, closed) = drive_running(conn, &b, false, false);
    assert!(!closed, "{:?}", conn.close_reason());
    let mut data = std::collections::HashMap::<u16, Vec<u8>>::new();
    let mut out = Vec::new();
    for p in pdus {
        match p {
            Pdu::C2HData(d) => data.entry(d.cccid).or_default().extend(d.data),
            Pdu::CapsuleResp(r) => {
                let c = Cqe::parse(&r.cqe);
                out.push((
                    c.cid,
                    c.status,
                    c.dw0,
                    data.remove(&c.cid).unwrap_or_default(),
                ));
            }
            other => panic!("{other:?}"),
        }
    }
    out
}

fn cmd(op: u8, cid: u16, f: impl FnOnce(&mut Sqe)) -> Sqe {
    let mut s = Sqe::new(op);
    s.cid = cid;
    s.dptr = Sgl::transport(0);
    f(&mut s);
    s
}

#[test]
fn aer_is_held_and_can_be_aborted() {
    let t = small_target();
    let (mut a, _) = admin_conn(&t);
    let aer = cmd(admin::ASYNC_EVENT_REQUEST, 10, |_| {});
    assert!(
        run(&mut a, &[aer]).is_empty(),
        "an AER must not complete at once"
    );
    // AERL is 3: four may be held; the fifth is refused.
    let more: Vec<Sqe> = (11..15)
        .map(|cid| cmd(admin::ASYNC_EVENT_REQUEST, cid, |_| {}))
        .collect();
    let r = run(&mut a, &more);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0, r[0].1), (14, Status::AER_LIMIT_EXCEEDED));
    let abort = cmd(admin::ABORT, 20, |s| s.cdw10 = 10 << 16);
    let r = run(&mut a, &[abort]);
    assert_eq!(r.len(), 2);
    assert!(
        r.iter()
            .any(|x| x.0 == 10 && x.1 == Status::ABORT_REQUESTED)
    );
    assert!(
        r.iter()
            .any(|x| x.0 == 20 && x.1 == Status::SUCCESS && x.2 == 0)
    );
    // Aborting something unknown: success, DW0 bit 0 = not aborted.
    let r = run(&mut a, &[cmd(admin::ABORT, 21, |s| s.cdw10 = 999 << 16)]);
    assert_eq!((r[0].1, r[0].2 & 1), (Status::SUCCESS, 1));
}

#[test]
fn features_that_hosts_require() {
    let t = small_target();
    let (mut a, _) = admin_conn(&t);
    let r = run(
        &mut a,
        &[
            cmd(admin::SET_FEATURES, 1, |s| {
                s.cdw10 = 0x0F;
                s.cdw11 = 7000;
            }),
            cmd(admin::GET_FEATURES, 2, |s| s.cdw10 = 0x0F),
            cmd(admin::SET_FEATURES, 3, |s| {
                s.cdw10 = 0x07;
                s.cdw11 = 200 | (200 << 16);
            }),
            cmd(admin::SET_FEATURES, 4, |s| {
                s.cdw10 = 0x0B;
                s.cdw11 = 0x100;
            }),
            cmd(admin::GET_FEATURES, 5, |s| s.cdw10 = 0x0B),
            cmd(admin::GET_FEATURES, 6, |s| s.cdw10 = 0x06), // no write cache here
            cmd(admin::GET_FEATURES, 7, |s| s.cdw10 = 0x7E),
            cmd(admin::KEEP_ALIVE, 8, |_| {}),
            cmd(0xC5, 9, |_| {}),
        ],
    );
    let by: std::collections::HashMap<u16, (Status, u32)> =
        r.iter().map(|x| (x.0, (x.1, x.2))).collect();
    assert_eq!(by[&1].0, Status::SUCCESS);
    assert_eq!(by[&2], (Status::SUCCESS, 7000));
    // Capped by max_io_queues (16), zero-based in both halves.
    assert_eq!(by[&3], (Status::SUCCESS, 15 | (15 << 16)));
    assert_eq!(by[&5], (Status::SUCCESS, 0x100));
    assert_eq!(by[&6].0, Status::INVALID_FIELD);
    assert_eq!(by[&7].0, Status::INVALID_FIELD);
    assert_eq!(by[&8].0, Status::SUCCESS);
    assert_eq!(by[&9].0, Status::INVALID_OPCODE);
}

#[test]
fn identify_fields() {
    let t = small_target();
    let (mut a, cntlid) = admin_conn(&t);
    let id = |cid, c: u8, nsid: u32| {
        let mut s = identify::identify_cmd(c, nsid);
        s.cid = cid;
        s
    };
    let r = run(
        &mut a,
        &[
            id(1, cns::CONTROLLER, 0),
            id(2, cns::NAMESPACE, 1),
            id(3, cns::NAMESPACE, 2),
            id(4, cns::ACTIVE_NS_LIST, 0),
            id(5, cns::NS_DESCRIPTORS, 1),
            id(6, 0x06, 0),
        ],
    );
    let c = ControllerData::parse(&r[0].3);
    assert_eq!(c.cntlid, cntlid);
    assert!(c.kas > 0 && c.maxcmd >= 32 && c.nn == 1 && c.oaes != 0);
    assert_eq!(c.ioccsz, (64 + 4096) / 16);
    assert_eq!(c.sgls & 3, 1);
    assert_eq!(c.cntrltype, identify::cntrltype::IO);
    let n = identify::NamespaceData::parse(&r[1].3);
    assert_eq!((n.nsze, n.block_size()), (1024, 512));
    assert_eq!(r[2].1, Status::INVALID_NAMESPACE);
    assert_eq!(identify::parse_ns_list(&r[3].3), vec![1]);
    let d = identify::parse_ns_descriptors(&r[4].3);
    assert_eq!(
        d.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![identify::nidt::NGUID, identify::nidt::UUID]
    );
    assert_eq!(r[5].1, Status::INVALID_FIELD);
}

#[test]
fn log_pages_are_bounded_by_the_host_buffer() {
    let t = small_target();
    let (mut a, _) = admin_conn(&t);
    let mut smart = log::get_log_cmd(log::lid::SMART, 0, 512);
    smart.cid = 1;
    // NUMD says 16 GiB but the buffer is 512 bytes: refused, nothing allocated.
    let mut huge = log::get_log_cmd(log::lid::SMART, 0, 512);
    huge.cid = 2;
    huge.cdw10 |= 0xFFFF << 16;
    huge.cdw11 = 0xFFFF;
    let mut disc = log::get_log_cmd(log::lid::DISCOVERY, 0, 1024);
    disc.cid = 3;
    let r = run(&mut a, &[smart, huge, disc]);
    assert_eq!((r[0].1, r[0].3.len()), (Status::SUCCESS, 512));
    assert_eq!(r[1].1, Status::INVALID_FIELD);
    assert_eq!(
        r[2].1,
        Status::INVALID_LOG_PAGE,
        "discovery log only on the discovery controller"
    );
}

/// Regression (nvme-cli `changed-ns-list-log` against our target failed with Invalid Log
/// Page): OAES advertises namespace attribute notices, so log 0x04 must exist.
#[test]
fn changed_namespace_list_log_exists() {
    let t = small_target();
    let (mut a, _) = admin_conn(&t);
    let mut id = identify::identify_cmd(cns::CONTROLLER, 0);
    id.cid = 1;
    let mut ch = log::get_log_cmd(log::lid::CHANGED_NS_LIST, 0, 4096);
    ch.cid = 2;
    let r = run(&mut a, &[id, ch]);
    assert_ne!(
        ControllerData::parse(&r[0].3).oaes & identify::OAES_NS_ATTR,
        0
    );
    assert_eq!(r[1].1, Status::SUCCESS);
    assert_eq!(r[1].3, vec![0u8; 4096], "no namespace changed");
}

#[test]
fn controller_reset_ends_io_queues() {
    let t = small_target();
    let (mut a, cntlid) = admin_conn(&t);
    let mut io = TargetConn::new(t.clone(), Instant::now());
    let (_, closed) = drive(
        &mut io,
        &io_prefix(cntlid, false, false),
        1 << 20,
        false,
        false,
    );
    assert!(!closed && io.qid() == Some(1));
    let mut off = fabrics::property_set(prop::CC, u64::from(cc::IOSQES_IOCQES), false);
    off.cid = 9;
    let mut csts = fabrics::property_get(prop::CSTS, false);
    csts.cid = 10;
    let r = run(&mut a, &[off, csts]);
    assert_eq!(r[1].2 & 1, 0, "CSTS.RDY clears on reset");
    io.handle_timeout(Instant::now() + Duration::from_secs(1));
    assert!(io.is_closed());
    assert_eq!(io.close_reason(), Some("controller reset"));
}

#[test]
fn shutdown_completes() {
    let t = small_target();
    let (mut a, _) = admin_conn(&t);
    let mut shn = fabrics::property_set(
        prop::CC,
        u64::from(cc::EN | cc::IOSQES_IOCQES | (1 << cc::SHN_SHIFT)),
        false,
    );
    shn.cid = 3;
    let mut csts = fabrics::property_get(prop::CSTS, false);
    csts.cid = 4;
    let r = run(&mut a, &[shn, csts]);
    assert_eq!(
        r[1].2 & fabrics::csts::SHST_MASK,
        fabrics::csts::SHST_COMPLETE
    );
}
