//! What a guest printed, and how it failed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

/// Why a guest did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest timed out after {timeout:?}\n{tail}")]
    Timeout { timeout: Duration, tail: String },
    #[error("QEMU exited ({status}) without a result line\n{tail}")]
    NoResult { status: String, tail: String },
    #[error(
        "timed out after {timeout:?} waiting for a script output line containing {needle:?}\n{tail}"
    )]
    LineTimeout {
        needle: String,
        timeout: Duration,
        tail: String,
    },
}

/// What a finished guest printed.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Exit code of the script (`exit N`, or the status of its last command).
    pub rc: i32,
    /// The script's stdout and stderr (guest serial port 2), without the result line.
    pub output: String,
    /// Kernel and `/init` messages (guest serial port 1, the console).
    pub console: String,
    /// QEMU's own stderr.
    pub qemu_stderr: String,
    pub elapsed: Duration,
}

impl GuestOutput {
    /// Value of the first `KEY=VALUE` line of the script output with this key.
    pub fn value(&self, key: &str) -> Option<&str> {
        key_values(&self.output)
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Values of every `KEY=VALUE` line with this key, in order.
    pub fn values(&self, key: &str) -> Vec<&str> {
        key_values(&self.output)
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect()
    }

    /// All `KEY=VALUE` lines (the last one wins for a repeated key).
    pub fn map(&self) -> BTreeMap<&str, &str> {
        key_values(&self.output).collect()
    }

    /// Fails with the full output unless the script exited with 0.
    pub fn check_success(&self) -> Result<&Self> {
        if self.rc != 0 {
            anyhow::bail!(
                "guest script exited with rc={}\n{}",
                self.rc,
                self.describe()
            );
        }
        Ok(self)
    }

    /// Script output and console, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "--- script output ---\n{}--- console ---\n{}--- qemu stderr ---\n{}",
            self.output, self.console, self.qemu_stderr
        )
    }
}

/// `KEY=VALUE` pairs of lines whose key is `[A-Za-z0-9_]+`.
pub fn key_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once('=')?;
        let ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        ok.then_some((k, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_skip_non_keys() {
        let out = GuestOutput {
            rc: 0,
            output: "A=1\nnot a key: x=y\nB_2=x=y\nA=3\n=bad\n".into(),
            console: String::new(),
            qemu_stderr: String::new(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(out.value("A"), Some("1"));
        assert_eq!(out.values("A"), ["1", "3"]);
        assert_eq!(out.value("B_2"), Some("x=y"));
        assert_eq!(out.map().len(), 2);
        assert!(out.check_success().is_ok());
    }
}
