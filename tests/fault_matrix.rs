//! The fault matrix (issue 6), engine side: for each leg (primary local and remote,
//! secondary base, hidden, active) and operation (read, write, flush, write_zeroes/unmap)
//! failing in each stage where the leg is used, what the guest sees, what `get_error` and
//! the stage say afterwards, and that a retry (or `stop --failover` again) works once the
//! fault is gone. `docs/fault-matrix.md` is generated from these rows
//! (`UPDATE_DOCS=1 cargo test --test fault_matrix`) and checked here to be current.

mod common;

use common::*;
use futures::executor::block_on;
use spdk_replication::engine::testing::{OpKind, TestDisk, TestRuntime, test_disk};
use spdk_replication::engine::{IoError, MergeStep, Primary, PrimaryConfig, Stage};

const C: u64 = 64 * 1024;
/// Secondary layout in every stage after start: cluster 2 copied to hidden (the primary
/// wrote 0x22 there), cluster 4 written by the SVM (0x33), cluster 8 zeroed by the SVM,
/// cluster 6 only on the base (0x11).
const HID: u64 = 2 * C;
const ACT: u64 = 4 * C;
const BASE: u64 = 6 * C;
const ZERO: u64 = 8 * C;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leg {
    Local,
    Remote,
    Base,
    Hidden,
    Active,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Read,
    Write,
    Flush,
    Zeroes,
}

impl Op {
    fn kinds(self) -> &'static [OpKind] {
        match self {
            Op::Read => &[OpKind::Read],
            Op::Write => &[OpKind::Write],
            Op::Flush => &[OpKind::Flush],
            Op::Zeroes => &[OpKind::WriteZeroes, OpKind::Unmap],
        }
    }
}

/// A replication bdev under test, either side.
#[allow(clippy::large_enum_variant)]
enum Subject {
    Sec(Node),
    Pri {
        p: Primary<TestDisk>,
        local: TestDisk,
        remote: TestDisk,
        rt: TestRuntime,
    },
}

impl Subject {
    fn leg(&self, leg: Leg) -> &TestDisk {
        match (self, leg) {
            (Subject::Sec(n), Leg::Base) => &n.base,
            (Subject::Sec(n), Leg::Hidden) => &n.hidden,
            (Subject::Sec(n), Leg::Active) => &n.active,
            (Subject::Pri { local, .. }, Leg::Local) => local,
            (Subject::Pri { remote, .. }, Leg::Remote) => remote,
            _ => unreachable!("leg of the other side"),
        }
    }
    fn sec(&self) -> &Node {
        match self {
            Subject::Sec(n) => n,
            Subject::Pri { .. } => unreachable!(),
        }
    }
    fn error(&self) -> Option<String> {
        let r = match self {
            Subject::Sec(n) => n.sec.get_error(),
            Subject::Pri { p, .. } => p.get_error(),
        };
        r.err().map(|e| e.to_string())
    }
    fn stage(&self) -> Stage {
        match self {
            Subject::Sec(n) => n.sec.stage(),
            Subject::Pri { p, .. } => p.stage(),
        }
    }
}

fn secondary_in(stage: Stage) -> Subject {
    let n = node();
    n.ingress_write(0, DISK, 0x11).unwrap();
    if stage == Stage::None {
        return Subject::Sec(n);
    }
    block_on(n.sec.start(None)).unwrap();
    n.ingress_write(HID, C, 0x22).unwrap();
    n.top_write(ACT, C, 0x33).unwrap();
    block_on(n.sec.top_write_zeroes(lba(ZERO), lba(C))).unwrap();
    match stage {
        Stage::Running => {}
        Stage::Failover => {
            block_on(n.sec.stop(true)).unwrap();
        }
        Stage::FailoverFailed => {
            // A merge that failed at its first cluster: every overlay is kept.
            n.base
                .fail(&[OpKind::Write], Some(lba(HID)..lba(HID + C)), Some(1));
            block_on(n.sec.stop(true)).unwrap();
            block_on(n.sec.run_merge()).unwrap_err();
            n.base.clear_faults();
        }
        Stage::Done => {
            block_on(n.sec.stop(true)).unwrap();
            block_on(n.sec.run_merge()).unwrap();
        }
        Stage::None => unreachable!(),
    }
    n.base.clear_log();
    n.hidden.clear_log();
    n.active.clear_log();
    Subject::Sec(n)
}

fn primary_in(stage: Stage) -> Subject {
    let (local, remote) = (test_disk(BS, BLOCKS), test_disk(BS, BLOCKS));
    let p = Primary::new(local.clone(), remote.clone(), PrimaryConfig::default()).unwrap();
    match stage {
        Stage::None => {}
        Stage::Running => p.start(None).unwrap(),
        Stage::Done => {
            p.start(None).unwrap();
            p.stop(false).unwrap();
        }
        _ => unreachable!("no such primary stage"),
    }
    Subject::Pri {
        p,
        local,
        remote,
        rt: TestRuntime::default(),
    }
}

/// What the guest (or the merge, for failover rows) does to reach the faulty leg.
#[derive(Clone, Copy, Debug)]
enum Probe {
    TopRead(u64),
    TopWrite(u64),
    TopZeroes(u64),
    TopFlush,
    IngressRead(u64),
    IngressWrite(u64),
    IngressZeroes(u64),
    IngressFlush,
    /// `stop --failover` (again, in failover_failed) and the merge to its end.
    Merge,
    PriRead,
    PriWrite,
    PriZeroes,
    PriFlush,
}

impl Probe {
    fn describe(self) -> String {
        let at = |off: u64| match off {
            HID => "a cluster in hidden",
            ACT => "a cluster in active",
            BASE => "a base-only cluster",
            ZERO => "a zeroed cluster",
            _ => "?",
        };
        match self {
            Probe::TopRead(o) => format!("top read of {}", at(o)),
            Probe::TopWrite(o) => format!("top write to {}", at(o)),
            Probe::TopZeroes(o) => format!("top write_zeroes of {}", at(o)),
            Probe::TopFlush => "top flush".into(),
            Probe::IngressRead(o) => format!("ingress read of {}", at(o)),
            Probe::IngressWrite(o) => format!("ingress write to {}", at(o)),
            Probe::IngressZeroes(o) => format!("ingress write_zeroes of {}", at(o)),
            Probe::IngressFlush => "ingress flush".into(),
            Probe::Merge => "failover merge".into(),
            Probe::PriRead => "primary read".into(),
            Probe::PriWrite => "primary write".into(),
            Probe::PriZeroes => "primary write_zeroes".into(),
            Probe::PriFlush => "primary flush".into(),
        }
    }

    fn run(self, s: &Subject) -> Result<(), IoError> {
        let len = 4096;
        match (self, s) {
            (Probe::TopRead(o), Subject::Sec(n)) => n.top_read(o + len, len).map(|_| ()),
            (Probe::TopWrite(o), Subject::Sec(n)) => n.top_write(o + len, len, 0x44),
            (Probe::TopZeroes(o), Subject::Sec(n)) => {
                block_on(n.sec.top_write_zeroes(lba(o + len), lba(len)))
            }
            (Probe::TopFlush, Subject::Sec(n)) => block_on(n.sec.top_flush()),
            (Probe::IngressRead(o), Subject::Sec(n)) => n.ingress_read(o + len, len).map(|_| ()),
            (Probe::IngressWrite(o), Subject::Sec(n)) => n.ingress_write(o + len, len, 0x55),
            (Probe::IngressZeroes(o), Subject::Sec(n)) => {
                block_on(n.sec.ingress_write_zeroes(lba(o + len), lba(len)))
            }
            (Probe::IngressFlush, Subject::Sec(n)) => block_on(n.sec.ingress_flush()),
            (Probe::Merge, Subject::Sec(n)) => {
                block_on(n.sec.stop(true)).map_err(|_| IoError::Io)?;
                match block_on(n.sec.run_merge()) {
                    Ok(MergeStep::Done) => Ok(()),
                    _ => Err(IoError::Io),
                }
            }
            (Probe::PriRead, Subject::Pri { p, .. }) => {
                block_on(p.read(lba(BASE), pattern(len, SENTINEL)))
            }
            (Probe::PriWrite, Subject::Pri { p, rt, .. }) => {
                block_on(p.write(rt, lba(BASE), pattern(len, 0x66)))
            }
            (Probe::PriZeroes, Subject::Pri { p, rt, .. }) => {
                block_on(p.write_zeroes(rt, lba(BASE), lba(len)))
            }
            (Probe::PriFlush, Subject::Pri { p, rt, .. }) => block_on(p.flush(rt)),
            _ => unreachable!("probe of the other side"),
        }
    }
}

/// One row: the fault, the guest's view, the state afterwards, and the recovery.
struct Row {
    leg: Leg,
    op: Op,
    stage: Stage,
    probe: Probe,
    /// Whether the guest's request fails.
    fails: bool,
    /// `get_error` right after.
    error: Option<&'static str>,
    stage_after: Stage,
    /// How it recovers once the fault is gone.
    recovery: &'static str,
}

const IO_ERR: Option<&str> = Some("I/O error occurred");
const NOT_RUNNING: Option<&str> = Some("Block replication is not running");

fn rows() -> Vec<Row> {
    use Leg::*;
    use Op::*;
    use Probe::*;
    use Stage::{Done, Failover, FailoverFailed, None as Stg0, Running};
    let r = |leg, op, stage, probe, fails, error, stage_after, recovery| Row {
        leg,
        op,
        stage,
        probe,
        fails,
        error,
        stage_after,
        recovery,
    };
    const RETRY: &str = "retry succeeds";
    const RESTART: &str =
        "link stays broken; stop clears the error (stage done); resync re-protects";
    const REMERGE: &str = "stop --failover again merges everything";
    const NONE: &str = "nothing to recover";
    vec![
        // Primary: local failures are returned; remote ones recorded and never returned.
        r(Local, Read, Stg0, PriRead, true, NOT_RUNNING, Stg0, RETRY),
        r(Local, Read, Running, PriRead, true, None, Running, RETRY),
        r(Local, Write, Stg0, PriWrite, true, NOT_RUNNING, Stg0, RETRY),
        r(Local, Write, Running, PriWrite, true, None, Running, RETRY),
        r(Local, Write, Done, PriWrite, true, None, Done, RETRY),
        r(Local, Flush, Running, PriFlush, true, None, Running, RETRY),
        r(
            Local, Zeroes, Running, PriZeroes, true, None, Running, RETRY,
        ),
        r(Remote, Read, Running, PriRead, false, None, Running, NONE),
        r(
            Remote,
            Write,
            Stg0,
            PriWrite,
            false,
            NOT_RUNNING,
            Stg0,
            NONE,
        ),
        r(
            Remote, Write, Running, PriWrite, false, IO_ERR, Running, RESTART,
        ),
        r(Remote, Write, Done, PriWrite, false, None, Done, NONE),
        r(
            Remote, Flush, Running, PriFlush, false, IO_ERR, Running, RESTART,
        ),
        r(
            Remote, Zeroes, Running, PriZeroes, false, IO_ERR, Running, RESTART,
        ),
        // Secondary base.
        r(
            Base,
            Read,
            Stg0,
            IngressRead(BASE),
            true,
            NOT_RUNNING,
            Stg0,
            RETRY,
        ),
        r(
            Base,
            Read,
            Running,
            TopRead(BASE),
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Base,
            Read,
            Running,
            IngressWrite(BASE),
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Base,
            Read,
            Failover,
            TopRead(BASE),
            true,
            None,
            Failover,
            RETRY,
        ),
        r(
            Base,
            Read,
            FailoverFailed,
            TopRead(BASE),
            true,
            IO_ERR,
            FailoverFailed,
            RETRY,
        ),
        r(Base, Read, Done, TopRead(BASE), true, None, Done, RETRY),
        r(
            Base,
            Write,
            Stg0,
            IngressWrite(BASE),
            true,
            NOT_RUNNING,
            Stg0,
            RETRY,
        ),
        r(
            Base,
            Write,
            Running,
            IngressWrite(HID),
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Base,
            Write,
            Failover,
            Merge,
            true,
            IO_ERR,
            FailoverFailed,
            REMERGE,
        ),
        r(
            Base,
            Write,
            FailoverFailed,
            TopWrite(BASE),
            true,
            IO_ERR,
            FailoverFailed,
            RETRY,
        ),
        r(
            Base,
            Write,
            FailoverFailed,
            TopWrite(ACT),
            false,
            IO_ERR,
            FailoverFailed,
            NONE,
        ),
        r(Base, Write, Done, TopWrite(BASE), true, None, Done, RETRY),
        r(Base, Flush, Running, TopFlush, true, None, Running, RETRY),
        r(
            Base,
            Flush,
            Running,
            IngressFlush,
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Base,
            Flush,
            Failover,
            Merge,
            true,
            IO_ERR,
            FailoverFailed,
            REMERGE,
        ),
        r(Base, Flush, Done, TopFlush, true, None, Done, RETRY),
        r(
            Base,
            Zeroes,
            Running,
            IngressZeroes(HID),
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Base,
            Zeroes,
            Failover,
            Merge,
            true,
            IO_ERR,
            FailoverFailed,
            REMERGE,
        ),
        // Hidden (QEMU's cases: COW write failing, hidden read failing, merge failing).
        r(
            Hidden,
            Read,
            Running,
            TopRead(HID),
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Hidden,
            Read,
            Failover,
            Merge,
            true,
            IO_ERR,
            FailoverFailed,
            REMERGE,
        ),
        r(
            Hidden,
            Read,
            FailoverFailed,
            TopRead(HID),
            true,
            IO_ERR,
            FailoverFailed,
            RETRY,
        ),
        r(Hidden, Read, Done, TopRead(HID), false, None, Done, NONE),
        r(
            Hidden,
            Write,
            Running,
            IngressWrite(BASE),
            true,
            None,
            Running,
            RETRY,
        ),
        r(Hidden, Write, Failover, Merge, false, None, Done, NONE),
        r(Hidden, Flush, Running, TopFlush, true, None, Running, RETRY),
        r(Hidden, Flush, Done, TopFlush, false, None, Done, NONE),
        // Active (QEMU's case: active write failing).
        r(
            Active,
            Read,
            Running,
            TopRead(ACT),
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Active,
            Read,
            Failover,
            Merge,
            true,
            IO_ERR,
            FailoverFailed,
            REMERGE,
        ),
        r(Active, Read, Done, TopRead(ACT), false, None, Done, NONE),
        r(
            Active,
            Write,
            Running,
            TopWrite(BASE),
            true,
            None,
            Running,
            RETRY,
        ),
        r(
            Active,
            Write,
            Failover,
            TopWrite(BASE),
            false,
            None,
            Failover,
            NONE,
        ),
        r(
            Active,
            Write,
            FailoverFailed,
            TopWrite(ACT),
            true,
            IO_ERR,
            FailoverFailed,
            RETRY,
        ),
        r(Active, Write, Done, TopWrite(BASE), false, None, Done, NONE),
        r(Active, Flush, Running, TopFlush, true, None, Running, RETRY),
        r(
            Active, Flush, Failover, TopFlush, true, None, Failover, RETRY,
        ),
        r(
            Active,
            Zeroes,
            Running,
            TopZeroes(BASE),
            false,
            None,
            Running,
            NONE,
        ),
    ]
}

fn subject(row: &Row) -> Subject {
    match row.leg {
        Leg::Local | Leg::Remote => primary_in(row.stage),
        _ => secondary_in(row.stage),
    }
}

/// The SVM view every secondary row must keep, whatever failed: 0x11 | hidden cluster
/// still 0x11 to the SVM | 0x33 | 0x11 | zeros | 0x11 (probe writes excepted).
fn check_svm_view(n: &Node, probe: Probe, stage: Stage) {
    if stage == Stage::None {
        return;
    }
    let mut want = vec![0x11u8; (10 * C) as usize];
    want[ACT as usize..(ACT + C) as usize].fill(0x33);
    want[ZERO as usize..(ZERO + C) as usize].fill(0);
    if let Probe::TopWrite(o) = probe {
        want[(o + 4096) as usize..(o + 8192) as usize].fill(0x44);
    }
    if let Probe::TopZeroes(o) = probe {
        want[(o + 4096) as usize..(o + 8192) as usize].fill(0);
    }
    let got = n
        .top_read(0, 10 * C)
        .expect("top readable once the fault is gone");
    assert!(got == want, "SVM view changed");
}

#[test]
fn every_fault_has_its_documented_outcome_and_recovers() {
    for row in rows() {
        let what = format!(
            "{:?} {:?} fails in {}: {}",
            row.leg,
            row.op,
            row.stage,
            row.probe.describe()
        );
        let s = subject(&row);
        assert_eq!(s.stage(), row.stage, "{what}: setup");
        s.leg(row.leg).fail(row.op.kinds(), None, None);
        let r = row.probe.run(&s);
        assert_eq!(r.is_err(), row.fails, "{what}: guest saw {r:?}");
        assert_eq!(s.error().as_deref(), row.error, "{what}: get_error");
        assert_eq!(s.stage(), row.stage_after, "{what}: stage after");
        s.leg(row.leg).clear_faults();
        // Recovery: the same request again, or the merge again.
        match row.recovery {
            "stop --failover again merges everything" => {
                assert_eq!(row.probe.run(&s), Ok(()), "{what}: retried merge");
                assert_eq!(s.stage(), Stage::Done, "{what}");
                assert_eq!(s.error(), None, "{what}: error cleared by the merge");
                let n = s.sec();
                assert!(
                    n.base_bytes(0, 10 * C) == n.top_read(0, 10 * C).unwrap(),
                    "{what}: base == SVM view"
                );
            }
            _ if row.fails => assert_eq!(row.probe.run(&s), Ok(()), "{what}: retry"),
            _ => {}
        }
        if let Subject::Sec(n) = &s {
            check_svm_view(n, row.probe, row.stage);
        }
        if let Subject::Pri { p, remote, .. } = &s
            && row.error == IO_ERR
        {
            // The link stays broken: nothing more is forwarded until stop + start.
            let before = remote.log().len();
            Probe::PriWrite.run(&s).unwrap();
            assert_eq!(remote.log().len(), before, "{what}: forwarding stopped");
            p.stop(false).unwrap();
            assert_eq!(s.error(), None, "{what}: cleared by stop");
            assert_eq!(s.stage(), Stage::Done);
            Probe::PriWrite.run(&s).unwrap();
            assert_eq!(
                remote.log().len(),
                before,
                "{what}: done writes locally only"
            );
        }
    }
}

fn table() -> String {
    let mut t = String::from(
        "| leg | fails | stage | reached by | guest sees | `get_error` after | stage after | recovery |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows() {
        t += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            format!("{:?}", r.leg).to_lowercase(),
            format!("{:?}", r.op).to_lowercase(),
            r.stage,
            r.probe.describe(),
            if r.fails { "EIO" } else { "success" },
            r.error.unwrap_or("null"),
            r.stage_after,
            r.recovery
        );
    }
    t
}

#[test]
fn fault_matrix_doc_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fault-matrix.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    const BEGIN: &str = "<!-- rows: generated by tests/fault_matrix.rs -->\n";
    const END: &str = "<!-- end rows -->";
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("{path} lacks the generated-rows markers");
    };
    let current = &doc[b + BEGIN.len()..e];
    let want = table();
    if current != want {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let new = format!("{}{BEGIN}{want}{}", &doc[..b], &doc[e..]);
            std::fs::write(path, new).unwrap();
            return;
        }
        panic!("{path} is out of date: run UPDATE_DOCS=1 cargo test --test fault_matrix");
    }
}
