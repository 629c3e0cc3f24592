//! NVMe-oF/TCP: PDUs, NVMe structures, target and initiator state machines (sans-I/O),
//! and thin drivers over sockets.
//!
//! * [`pdu`]: the NVMe/TCP PDUs and the bounded stream decoder.
//! * [`nvme`]: commands, completions, Fabrics, Identify, log pages.
//! * [`target`]: subsystems, controllers and the per-connection state machine
//!   ([`target::TargetConn`]); namespaces are served by a [`target::Backend`].
//! * [`host`]: the initiator's per-queue state machine ([`host::HostQueue`]).
//! * [`driver`]: thread-per-connection socket drivers for both sides.

mod decode;
pub mod driver;
pub mod host;
pub mod nvme;
pub mod pdu;
pub mod target;
mod wire;
