//! The reconnect policy of SPDK's `bdev_nvme_attach_controller`, as a small state machine
//! the driver consults: after a controller is lost, retry every `reconnect_delay` until
//! `ctrlr_loss_timeout` has passed (then the controller is deleted); I/O waits for the
//! reconnect unless `fast_io_fail_timeout` has passed, after which it fails at once.

use std::time::{Duration, Instant};

/// Mirrors `ctrlr_loss_timeout_sec`, `reconnect_delay_sec`, `fast_io_fail_timeout_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectOpts {
    /// `None` = retry forever (SPDK's -1); zero = one immediate attempt, then give up.
    pub ctrlr_loss_timeout: Option<Duration>,
    pub reconnect_delay: Duration,
    /// `None` = I/O waits until the controller is lost (SPDK's 0).
    pub fast_io_fail_timeout: Option<Duration>,
}

impl Default for ReconnectOpts {
    /// SPDK's defaults: no reconnect retries (loss timeout 0), I/O waits.
    fn default() -> Self {
        Self {
            ctrlr_loss_timeout: Some(Duration::ZERO),
            reconnect_delay: Duration::ZERO,
            fast_io_fail_timeout: None,
        }
    }
}

impl ReconnectOpts {
    /// SPDK requires reconnect_delay ≤ ctrlr_loss_timeout and fast_io_fail ≤ loss timeout
    /// when the loss timeout is finite, and a delay when it is not zero.
    pub fn validate(&self) -> Result<(), &'static str> {
        match self.ctrlr_loss_timeout {
            Some(l) if l.is_zero() => {
                if !self.reconnect_delay.is_zero() || self.fast_io_fail_timeout.is_some() {
                    return Err("reconnect_delay and fast_io_fail need a ctrlr_loss_timeout");
                }
            }
            Some(l) => {
                if self.reconnect_delay.is_zero() || self.reconnect_delay > l {
                    return Err("reconnect_delay must be non-zero and at most ctrlr_loss_timeout");
                }
                if self.fast_io_fail_timeout.is_some_and(|f| f > l) {
                    return Err("fast_io_fail_timeout must be at most ctrlr_loss_timeout");
                }
            }
            None => {
                if self.reconnect_delay.is_zero() {
                    return Err("an infinite ctrlr_loss_timeout needs a reconnect_delay");
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    /// Lost at `since`; next attempt at `next`.
    Reconnecting {
        since: Instant,
        next: Instant,
    },
    /// Given up: the controller is gone for good.
    Failed,
}

#[derive(Debug, Clone)]
pub struct Reconnect {
    pub opts: ReconnectOpts,
    pub state: LinkState,
    pub attempts: u32,
}

impl Reconnect {
    pub fn new(opts: ReconnectOpts) -> Self {
        Self {
            opts,
            state: LinkState::Connected,
            attempts: 0,
        }
    }

    /// The connection broke: the first attempt is immediate, as in SPDK's reset.
    pub fn lost(&mut self, now: Instant) {
        if self.state == LinkState::Connected {
            self.state = LinkState::Reconnecting {
                since: now,
                next: now,
            };
            self.attempts = 0;
        }
    }

    /// Whether an attempt is due now.
    pub fn attempt_due(&self, now: Instant) -> bool {
        matches!(self.state, LinkState::Reconnecting { next, .. } if now >= next)
    }

    pub fn attempt_failed(&mut self, now: Instant) {
        let LinkState::Reconnecting { since, .. } = self.state else {
            return;
        };
        self.attempts += 1;
        let next = now + self.opts.reconnect_delay;
        let give_up = match self.opts.ctrlr_loss_timeout {
            None => false,
            Some(l) => l.is_zero() || next.duration_since(since) > l,
        };
        self.state = if give_up {
            LinkState::Failed
        } else {
            LinkState::Reconnecting { since, next }
        };
    }

    pub fn reconnected(&mut self) {
        if matches!(self.state, LinkState::Reconnecting { .. }) {
            self.state = LinkState::Connected;
        }
    }

    /// Whether I/O issued now fails instead of waiting for the reconnect.
    pub fn io_fails(&self, now: Instant) -> bool {
        match self.state {
            LinkState::Connected => false,
            LinkState::Failed => true,
            LinkState::Reconnecting { since, .. } => self
                .opts
                .fast_io_fail_timeout
                .is_some_and(|f| now.duration_since(since) >= f),
        }
    }
}
