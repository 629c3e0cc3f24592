//! `bdev_error_create` / `bdev_error_inject_error`: SPDK's error bdev (`EE_<base>`), which
//! fails the next `num` requests of a type, so fault tests run without SPDK.

use super::Dev;
use crate::engine::IoError;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
}

/// SPDK's `bdev_error_inject_error` params.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectParams {
    pub name: String,
    pub io_type: String,
    pub error_type: String,
    #[serde(default = "one")]
    pub num: u32,
    #[serde(default)]
    pub queue_depth: Option<u64>,
    #[serde(default)]
    pub corrupt_offset: Option<u64>,
    #[serde(default)]
    pub corrupt_value: Option<u8>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy)]
enum Kind {
    Failure,
    NoMem,
}

struct Rule {
    /// None: every type ("all").
    io_type: Option<IoType>,
    kind: Kind,
    left: u32,
}

pub struct ErrorBdev {
    inner: Dev,
    base_name: String,
    /// A test bdev: a lock per request is fine here, never on the product's paths.
    rules: Mutex<Vec<Rule>>,
}

impl ErrorBdev {
    pub fn new(inner: Dev, base_name: &str) -> Self {
        Self {
            inner,
            base_name: base_name.to_owned(),
            rules: Mutex::new(Vec::new()),
        }
    }

    pub fn inner(&self) -> &Dev {
        &self.inner
    }

    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    /// Adds (or with `error_type: "clear"`, removes) an injection; errors name the param.
    pub fn inject(&self, p: &InjectParams) -> Result<(), String> {
        let io_type = match p.io_type.as_str() {
            "all" => None,
            "read" => Some(IoType::Read),
            "write" => Some(IoType::Write),
            "flush" => Some(IoType::Flush),
            "unmap" => Some(IoType::Unmap),
            "write_zeroes" => Some(IoType::WriteZeroes),
            other => return Err(format!("io_type: {other} is not supported")),
        };
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let kind = match p.error_type.as_str() {
            "failure" => Kind::Failure,
            "nomem" => Kind::NoMem,
            "clear" => {
                rules.retain(|r| io_type.is_some() && r.io_type != io_type);
                return Ok(());
            }
            other => {
                return Err(format!(
                    "error_type: {other} is not supported (failure, nomem, clear)"
                ));
            }
        };
        rules.retain(|r| r.io_type != io_type);
        rules.push(Rule {
            io_type,
            kind,
            left: p.num,
        });
        Ok(())
    }

    fn take(&self, t: IoType) -> Option<Kind> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let r = rules
            .iter_mut()
            .find(|r| r.left > 0 && r.io_type.is_none_or(|x| x == t))?;
        r.left -= 1;
        Some(r.kind)
    }

    pub async fn op<'a>(
        &'a self,
        t: IoType,
        f: impl FnOnce(&'a Dev) -> Pin<Box<dyn Future<Output = Result<(), IoError>> + 'a>>,
    ) -> Result<(), IoError> {
        match self.take(t) {
            Some(Kind::Failure) => Err(IoError::Io),
            Some(Kind::NoMem) => Err(IoError::NoMem),
            None => f(&self.inner).await,
        }
    }
}
