//! NVMe-oF/TCP: PDUs, NVMe structures, target and initiator state machines (sans-I/O),
//! and thin drivers over sockets.
