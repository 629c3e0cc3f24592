//! Our initiator against our target over loopback TCP: data integrity across sizes, queue
//! depths, queue counts and digests.

mod common;
use common::*;
use nvmf::driver::ConnectOptions;
use nvmf::target::TargetConfig;

#[test]
fn identify_and_small_io() {
    let srv = server(TargetConfig::default(), 512, 2048);
    let c = connect(&srv, ConnectOptions::default());
    let info = c.info();
    assert_eq!(info.namespaces.len(), 1);
    let ns = &info.namespaces[0];
    assert_eq!((ns.nsid, ns.block_size, ns.num_blocks), (1, 512, 2048));
    assert!(info.vwc);
    assert!(ns.nguid.is_some() && ns.uuid.is_some());
    assert_eq!(info.data.subnqn, NQN);
    let b = c.blocking();
    let d = pattern(512, 1);
    b.write(1, 7, d.clone()).unwrap();
    assert_eq!(b.read(1, 7, 1).unwrap(), d);
    b.flush(1).unwrap();
}
