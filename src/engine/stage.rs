use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// Replication stage (spec section 3). `Display` gives the names used verbatim in RPC output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Stage {
    None = 0,
    Running = 1,
    Failover = 2,
    FailoverFailed = 3,
    Done = 4,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::None => "none",
            Stage::Running => "running",
            Stage::Failover => "failover",
            Stage::FailoverFailed => "failover_failed",
            Stage::Done => "done",
        }
    }

    fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::None,
            1 => Stage::Running,
            2 => Stage::Failover,
            3 => Stage::FailoverFailed,
            _ => Stage::Done,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of the pair a replication bdev is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Primary,
    Secondary,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Primary => "primary",
            Mode::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(Mode::Primary),
            "secondary" => Ok(Mode::Secondary),
            other => Err(format!(
                "must be \"primary\" or \"secondary\", got \"{other}\""
            )),
        }
    }
}

/// Stage readable from any reactor without a lock; written only on the control path.
#[derive(Debug, Default)]
pub(crate) struct AtomicStage(AtomicU8);

impl AtomicStage {
    pub(crate) fn get(&self) -> Stage {
        Stage::from_u8(self.0.load(Ordering::Acquire))
    }
    pub(crate) fn set(&self, s: Stage) {
        self.0.store(s as u8, Ordering::Release);
    }
}
