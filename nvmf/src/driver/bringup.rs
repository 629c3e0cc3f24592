//! Bringing one association up: the admin queue (ICReq, Connect, CC.EN, Identify, number
//! of queues, namespaces), then the I/O queues.

use super::Error;
use super::block_on::block_on_timeout;
use super::controller::{ConnectOptions, ControllerInfo, NamespaceInfo};
use super::qpair::QPair;
use crate::host::HostQueueConfig;
use crate::nvme::cmd::{Cqe, Sqe, admin};
use crate::nvme::fabrics::{self, CATTR_DISABLE_SQ_FLOW, Connect, DISCOVERY_NQN, cc, csts, prop};
use crate::nvme::identify::{self, ControllerData, NamespaceData, cns, nidt};
use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Session {
    pub admin: Arc<QPair>,
    pub io: Vec<Arc<QPair>>,
    pub info: ControllerInfo,
}

impl Session {
    pub fn fail(&self, reason: &str) {
        self.admin.fail(reason);
        for q in &self.io {
            q.fail(reason);
        }
    }
    pub fn any_failed(&self) -> bool {
        self.admin.is_failed() || self.io.iter().any(|q| q.is_failed())
    }
}

fn run<F: Future<Output = Result<T, Error>>, T>(
    f: F,
    t: Duration,
    what: &'static str,
) -> Result<T, Error> {
    block_on_timeout(f, t).unwrap_or(Err(Error::Timeout(what)))
}

fn cmd(
    qp: &Arc<QPair>,
    sqe: Sqe,
    write: Vec<u8>,
    read_len: usize,
    t: Duration,
    what: &'static str,
) -> Result<(Cqe, Vec<u8>), Error> {
    let (cqe, data) = run(qp.exec(sqe, Bytes::from(write), read_len), t, what)?;
    if !cqe.status.is_success() {
        return Err(Error::Status(cqe.status));
    }
    Ok((cqe, data))
}

fn queue_cfg(o: &ConnectOptions, depth: u16) -> HostQueueConfig {
    HostQueueConfig {
        hdgst: o.hdgst,
        ddgst: o.ddgst,
        max_transfer: o.max_transfer.max(4096),
        depth,
    }
}

fn connect_queue(
    addr: SocketAddr,
    o: &ConnectOptions,
    c: &Connect,
    depth: u16,
) -> Result<(Arc<QPair>, u16), Error> {
    let t = o.connect_timeout;
    let qp = QPair::connect(addr, queue_cfg(o, depth), t, o.rx.as_ref())?;
    run(qp.ready(), t, "ICResp")?;
    let (sqe, data) = c.to_sqe();
    let (cqe, _) = run(qp.exec(sqe, Bytes::from(data), 0), t, "Connect")?;
    if !cqe.status.is_success() {
        return Err(Error::Connect(cqe.status));
    }
    Ok((qp, (cqe.dw0 & 0xFFFF) as u16))
}

/// The whole bring-up of one association.
pub(crate) fn establish(
    addr: SocketAddr,
    subnqn: &str,
    hostnqn: &str,
    o: &ConnectOptions,
) -> Result<Session, Error> {
    let t = o.connect_timeout;
    let mut c = Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: CATTR_DISABLE_SQ_FLOW,
        kato: u32::try_from(o.kato.as_millis()).unwrap_or(u32::MAX),
        hostid: o.hostid,
        cntlid: 0xFFFF,
        subnqn: subnqn.to_string(),
        hostnqn: hostnqn.to_string(),
    };
    let (admin_q, cntlid) = connect_queue(addr, o, &c, 32)?;
    let get = |off, size8| -> Result<u64, Error> {
        Ok(cmd(
            &admin_q,
            fabrics::property_get(off, size8),
            Vec::new(),
            0,
            t,
            "Property Get",
        )?
        .0
        .result64())
    };
    let cap = get(prop::CAP, true)?;
    let cc0 = get(prop::CC, false)? as u32;
    let set_cc = |v: u32| {
        cmd(
            &admin_q,
            fabrics::property_set(prop::CC, u64::from(v), false),
            Vec::new(),
            0,
            t,
            "Property Set",
        )
    };
    let wait_rdy = |want: bool| -> Result<(), Error> {
        let limit = Duration::from_millis(fabrics::cap_timeout_ms(cap).clamp(500, 30_000));
        let start = Instant::now();
        loop {
            let s = get(prop::CSTS, false)? as u32;
            if s & csts::CFS != 0 {
                return Err(Error::Protocol("controller fatal status".into()));
            }
            if (s & csts::RDY != 0) == want {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout("CSTS.RDY"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    if cc0 & cc::EN != 0 {
        set_cc(0)?;
        wait_rdy(false)?;
    }
    set_cc(cc::EN | cc::IOSQES_IOCQES)?;
    wait_rdy(true)?;
    let (_, id) = cmd(
        &admin_q,
        identify::identify_cmd(cns::CONTROLLER, 0),
        Vec::new(),
        identify::IDENTIFY_LEN,
        t,
        "Identify",
    )?;
    let data = ControllerData::parse(&id);
    // MDTS 0 means "no limit", but Linux nvmet (which says 0 on TCP) fails any command
    // whose SGL is longer than its MAXH2CDATA (4 MiB) with Data SGL Length Invalid, reads
    // included: without an MDTS, MAXH2CDATA is the transfer limit.
    let mdts_bytes = if data.mdts == 0 {
        admin_q.maxh2cdata()
    } else {
        4096usize
            .checked_shl(u32::from(data.mdts))
            .unwrap_or(usize::MAX)
    };
    let mut info = ControllerInfo {
        cntlid,
        vwc: data.vwc & 1 != 0,
        data,
        namespaces: Vec::new(),
        io_queues: 0,
        queue_size: 0,
        max_transfer: o.max_transfer.min(mdts_bytes),
        maxh2cdata: admin_q.maxh2cdata(),
        in_capsule_data: 0,
    };
    if subnqn == DISCOVERY_NQN {
        return Ok(Session {
            admin: admin_q,
            io: Vec::new(),
            info,
        });
    }
    let want = u32::from(o.io_queues.max(1)) - 1;
    let mut sf = Sqe::new(admin::SET_FEATURES);
    sf.cdw10 = 0x07;
    sf.cdw11 = want | (want << 16);
    let (cqe, _) = cmd(&admin_q, sf, Vec::new(), 0, t, "Set Features")?;
    let granted = (cqe.dw0 & 0xFFFF).min(cqe.dw0 >> 16) + 1;
    let nq = granted.min(want + 1) as u16;
    let (_, list) = cmd(
        &admin_q,
        identify::identify_cmd(cns::ACTIVE_NS_LIST, 0),
        Vec::new(),
        identify::IDENTIFY_LEN,
        t,
        "Identify",
    )?;
    for nsid in identify::parse_ns_list(&list) {
        let (_, nd) = cmd(
            &admin_q,
            identify::identify_cmd(cns::NAMESPACE, nsid),
            Vec::new(),
            identify::IDENTIFY_LEN,
            t,
            "Identify",
        )?;
        let n = NamespaceData::parse(&nd);
        let mut ni = NamespaceInfo {
            nsid,
            num_blocks: n.nsze,
            block_size: n.block_size(),
            nguid: None,
            uuid: None,
        };
        // Descriptors are optional (SPDK tolerates their absence too).
        if let Ok((_, dd)) = cmd(
            &admin_q,
            identify::identify_cmd(cns::NS_DESCRIPTORS, nsid),
            Vec::new(),
            identify::IDENTIFY_LEN,
            t,
            "Identify",
        ) {
            for (ty, v) in identify::parse_ns_descriptors(&dd) {
                let arr: Option<[u8; 16]> = v.as_slice().try_into().ok();
                match ty {
                    nidt::NGUID => ni.nguid = arr,
                    nidt::UUID => ni.uuid = arr,
                    _ => {}
                }
            }
        }
        if ni.block_size >= 512 {
            info.namespaces.push(ni);
        }
    }
    let qsize = o
        .queue_size
        .max(2)
        .min(fabrics::cap_mqes(cap).saturating_add(1));
    let icd = (info.data.ioccsz as usize * 16).saturating_sub(64);
    let mut ios = Vec::new();
    for qid in 1..=nq {
        c.qid = qid;
        c.sqsize = qsize - 1;
        c.kato = 0;
        c.cntlid = cntlid;
        let (qp, _) = connect_queue(addr, o, &c, qsize)?;
        qp.set_in_capsule_limit(icd);
        ios.push(qp);
    }
    info.io_queues = ios.len();
    info.in_capsule_data = icd;
    info.queue_size = qsize;
    Ok(Session {
        admin: admin_q,
        io: ios,
        info,
    })
}
