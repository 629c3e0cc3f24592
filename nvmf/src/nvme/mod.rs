//! NVMe structures carried in capsules: commands, completions, SGLs, Fabrics commands,
//! Identify data and log pages.

pub mod cmd;
pub mod fabrics;
pub mod identify;
pub mod log;

pub use cmd::{Cqe, Sgl, Sqe, Status};
