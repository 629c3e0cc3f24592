//! The initiator (host) side, sans-I/O: one [`HostQueue`] per connection, plus the
//! reconnect policy. The socket driver in [`crate::driver`] runs them.

mod queue;
pub mod reconnect;

pub use queue::{HostEvent, HostQueue, HostQueueConfig, QueueError};
pub use reconnect::{LinkState, Reconnect, ReconnectOpts};
