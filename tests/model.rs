//! Acceptance case 15: random operation sequences against a reference model.
//!
//! Model: the SVM view is the base at the last checkpoint plus the SVM's writes since; the
//! ingress sees the base; after failover the base equals the SVM view. Reprotect's
//! incremental map: the former primary's disk (the base as the primary's writes left it at
//! the failover) patched with the clusters the secondary reports changed since the last
//! checkpoint equals the promoted base, also after SVM writes at `done`.

use futures::executor::block_on;
use proptest::prelude::*;
use spdk_replication::engine::testing::{MemBuf, TestDisk, test_disk};
use spdk_replication::engine::{IoError, MergeStep, Secondary, Stage};

const BS: u64 = 512;
const DISK_BLOCKS: u64 = 256; // 128 KiB keeps 1000 cases fast while spanning many clusters

#[derive(Debug, Clone)]
enum Op {
    Ingress {
        lba: u64,
        n: u64,
        byte: u8,
    },
    IngressZeroes {
        lba: u64,
        n: u64,
    },
    Top {
        lba: u64,
        n: u64,
        byte: u8,
    },
    TopZeroes {
        lba: u64,
        n: u64,
    },
    TopUnmap {
        lba: u64,
        n: u64,
    },
    ReadTop {
        lba: u64,
        n: u64,
    },
    ReadIngress {
        lba: u64,
        n: u64,
    },
    Checkpoint,
    /// Starts the failover; later ops interleave with merge steps.
    Failover,
    MergeStep,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..DISK_BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=(DISK_BLOCKS - lba).min(40)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((lba, n), byte)| Op::Ingress { lba, n, byte }),
        1 => range().prop_map(|(lba, n)| Op::IngressZeroes { lba, n }),
        4 => (range(), any::<u8>()).prop_map(|((lba, n), byte)| Op::Top { lba, n, byte }),
        1 => range().prop_map(|(lba, n)| Op::TopZeroes { lba, n }),
        1 => range().prop_map(|(lba, n)| Op::TopUnmap { lba, n }),
        3 => range().prop_map(|(lba, n)| Op::ReadTop { lba, n }),
        1 => range().prop_map(|(lba, n)| Op::ReadIngress { lba, n }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Failover),
        2 => Just(Op::MergeStep),
    ]
}

fn span(lba: u64, n: u64) -> std::ops::Range<usize> {
    (lba * BS) as usize..((lba + n) * BS) as usize
}

fn read(f: impl FnOnce(MemBuf) -> Result<(), IoError>, n: u64) -> Vec<u8> {
    let buf = MemBuf::filled((n * BS) as usize, 0xEE);
    f(buf.clone()).expect("read");
    buf.to_vec()
}

fn run(
    granularity: u64,
    initial: u8,
    ops: Vec<Op>,
    late: (u64, u64, u8),
) -> Result<(), TestCaseError> {
    let disks: [TestDisk; 3] = std::array::from_fn(|_| test_disk(BS as u32, DISK_BLOCKS));
    let [base, hidden, active] = disks;
    let sec = Secondary::new(base.clone(), hidden, active, granularity).unwrap();
    let all = DISK_BLOCKS * BS;
    // Initial synchronisation through the ingress, then start.
    block_on(sec.ingress_write(0, MemBuf::filled(all as usize, initial))).unwrap();
    block_on(sec.start(None)).unwrap();
    let mut model_base = vec![initial; all as usize];
    let mut view = model_base.clone();
    let mut failed_over = false;
    // The former primary's disk: every primary write reached the ingress before failover.
    let mut former_primary = model_base.clone();

    for op in ops {
        match op {
            Op::Ingress { lba, n, byte } => {
                let r = block_on(sec.ingress_write(lba, MemBuf::filled((n * BS) as usize, byte)));
                if failed_over {
                    prop_assert_eq!(r, Err(IoError::Io), "ingress refused after failover");
                } else {
                    prop_assert_eq!(r, Ok(()));
                    model_base[span(lba, n)].fill(byte);
                }
            }
            Op::IngressZeroes { lba, n } => {
                let r = block_on(sec.ingress_write_zeroes(lba, n));
                if failed_over {
                    prop_assert_eq!(r, Err(IoError::Io));
                } else {
                    prop_assert_eq!(r, Ok(()));
                    model_base[span(lba, n)].fill(0);
                }
            }
            Op::Top { lba, n, byte } => {
                block_on(sec.top_write(lba, MemBuf::filled((n * BS) as usize, byte))).unwrap();
                view[span(lba, n)].fill(byte);
            }
            Op::TopZeroes { lba, n } => {
                block_on(sec.top_write_zeroes(lba, n)).unwrap();
                view[span(lba, n)].fill(0);
            }
            Op::TopUnmap { lba, n } => {
                block_on(sec.top_unmap(lba, n)).unwrap();
                view[span(lba, n)].fill(0);
            }
            Op::ReadTop { lba, n } => {
                // The hosts' one-lookup plan agrees with the piecewise one.
                let pieces: Vec<_> = sec.plan_top_read(lba, n).unwrap().collect();
                let whole = sec.plan_top_read_whole(lba, n).unwrap();
                prop_assert_eq!(whole, (pieces.len() == 1).then(|| pieces[0]));
                let got = read(|b| block_on(sec.top_read(lba, b)), n);
                prop_assert!(
                    got == view[span(lba, n)],
                    "top read {}+{} differs from the SVM view",
                    lba,
                    n
                );
            }
            Op::ReadIngress { lba, n } => {
                let got = read(|b| block_on(sec.ingress_read(lba, b)), n);
                if !failed_over {
                    prop_assert!(
                        got == model_base[span(lba, n)],
                        "ingress read {}+{} differs from base",
                        lba,
                        n
                    );
                }
            }
            Op::Checkpoint => {
                block_on(sec.checkpoint()).unwrap();
                if !failed_over {
                    view = model_base.clone();
                    prop_assert_eq!(sec.allocated(), (0, 0));
                }
            }
            Op::Failover => {
                if !failed_over {
                    former_primary = model_base.clone();
                }
                block_on(sec.stop(true)).unwrap();
                failed_over = true;
            }
            Op::MergeStep => {
                let step = block_on(sec.merge_step()).unwrap();
                prop_assert!(failed_over || step == MergeStep::Idle);
            }
        }
    }
    if !failed_over {
        former_primary = model_base.clone();
        block_on(sec.stop(true)).unwrap();
    }
    block_on(sec.run_merge()).unwrap();
    prop_assert_eq!(sec.stage(), Stage::Done);
    let p = sec.merge_progress();
    prop_assert_eq!(p.done_bytes, p.total_bytes);
    prop_assert!(
        base.inner().contents(0..all) == view,
        "base after failover differs from the SVM view"
    );
    let got = read(|b| block_on(sec.top_read(0, b)), DISK_BLOCKS);
    prop_assert!(got == view);
    // A write at done, then the incremental reprotect's copy onto the former primary.
    let (lba, n, byte) = late;
    block_on(sec.top_write(lba, MemBuf::filled((n * BS) as usize, byte))).unwrap();
    view[span(lba, n)].fill(byte);
    let changed = sec.changed_since_checkpoint();
    for r in changed.iter() {
        let (lba, n) = changed.extent(r);
        let part = base.inner().contents(lba * BS..(lba + n) * BS);
        former_primary[span(lba, n)].copy_from_slice(&part);
    }
    prop_assert!(
        former_primary == view,
        "former primary patched with the changed clusters differs from the promoted base"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn secondary_matches_reference_model(
        granularity in prop::sample::select(vec![512u64, 1024, 4096, 16384]),
        initial in any::<u8>(),
        ops in prop::collection::vec(op(), 1..60),
        late in (range(), any::<u8>()).prop_map(|((lba, n), b)| (lba, n, b)),
    ) {
        run(granularity, initial, ops, late)?;
    }
}
