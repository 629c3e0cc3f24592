//! Human-readable rendering of results and the failover wait logic, kept
//! free of I/O so it can be tested directly.

use crate::api::{ErrorReport, Mode, Stage, Status};

/// `name: stage: error`, with `ok` when the bdev has no error.
pub fn error_line(report: &ErrorReport) -> String {
    let error = report.error.as_deref().unwrap_or("ok");
    format!("{}: {}: {error}", report.name, report.stage)
}

/// Aligned table of name, mode, stage, merge progress (during failover
/// only) and error; the error column comes last as it is free text.
pub fn status_table(statuses: &[Status]) -> String {
    let header = ["NAME", "MODE", "STAGE", "MERGE", "ERROR"].map(str::to_owned);
    let rows: Vec<[String; 5]> = statuses
        .iter()
        .map(|s| {
            let merge = match (s.stage, s.merge) {
                (Stage::Failover, Some(merge)) => format!("{:.1}%", merge.percent()),
                _ => "-".to_owned(),
            };
            [
                s.name.clone(),
                s.mode.to_string(),
                s.stage.to_string(),
                merge,
                s.error.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:width$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Where a `stop --failover --wait` stands after one status poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverProgress<'a> {
    /// Some secondary is still merging; bytes are summed over all secondaries
    /// so the total covers the whole failover.
    Merging { done_bytes: u64, total_bytes: u64 },
    /// Every secondary reached `done`; primaries finish immediately and need
    /// no merge, so they never hold the wait up.
    Complete,
    /// The first bdev found in `failover_failed`.
    Failed {
        name: &'a str,
        error: Option<&'a str>,
    },
}

impl<'a> FailoverProgress<'a> {
    pub fn of(statuses: &'a [Status]) -> Self {
        if let Some(failed) = statuses.iter().find(|s| s.stage == Stage::FailoverFailed) {
            return FailoverProgress::Failed {
                name: &failed.name,
                error: failed.error.as_deref(),
            };
        }
        let secondaries = statuses.iter().filter(|s| s.mode == Mode::Secondary);
        if secondaries.clone().all(|s| s.stage == Stage::Done) {
            return FailoverProgress::Complete;
        }
        let (done_bytes, total_bytes) = secondaries
            .filter_map(|s| s.merge)
            .fold((0, 0), |(done, total), m| {
                (done + m.done_bytes, total + m.total_bytes)
            });
        FailoverProgress::Merging {
            done_bytes,
            total_bytes,
        }
    }
}

/// Plain progress line for one secondary, for when stderr is not a terminal.
pub fn merge_line(status: &Status) -> String {
    match status.merge {
        Some(m) => format!(
            "{}: {}: merged {}/{} bytes ({:.1}%)",
            status.name,
            status.stage,
            m.done_bytes,
            m.total_bytes,
            m.percent()
        ),
        None => format!("{}: {}", status.name, status.stage),
    }
}

/// Final line for a bdev once the failover has completed.
pub fn completion_line(status: &Status) -> String {
    match (status.mode, status.merge) {
        (Mode::Secondary, Some(m)) => {
            format!("{}: merge complete ({} bytes)", status.name, m.total_bytes)
        }
        (Mode::Secondary, None) => format!("{}: merge complete", status.name),
        (Mode::Primary, _) => format!("{}: failover complete (primary, no merge)", status.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Merge;
    use serde_json::Map;

    fn status(name: &str, mode: Mode, stage: Stage, merge: Option<(u64, u64)>) -> Status {
        Status {
            name: name.to_owned(),
            mode,
            stage,
            error: None,
            cow_granularity: None,
            ingress_name: None,
            counters: Map::new(),
            merge: merge.map(|(done_bytes, total_bytes)| Merge {
                total_bytes,
                done_bytes,
            }),
            sync: None,
        }
    }

    #[test]
    fn progress_waits_for_every_secondary() {
        let mut statuses = vec![
            status("p0", Mode::Primary, Stage::Done, None),
            status("s0", Mode::Secondary, Stage::Failover, Some((1024, 4096))),
            status("s1", Mode::Secondary, Stage::Done, Some((2048, 2048))),
        ];
        assert_eq!(
            FailoverProgress::of(&statuses),
            FailoverProgress::Merging {
                done_bytes: 3072,
                total_bytes: 6144
            }
        );
        statuses[1].stage = Stage::Done;
        assert_eq!(FailoverProgress::of(&statuses), FailoverProgress::Complete);
        statuses[2].stage = Stage::FailoverFailed;
        statuses[2].error = Some("merge write failed".into());
        assert_eq!(
            FailoverProgress::of(&statuses),
            FailoverProgress::Failed {
                name: "s1",
                error: Some("merge write failed")
            }
        );
        // Primaries alone complete at once.
        assert_eq!(
            FailoverProgress::of(&statuses[..1]),
            FailoverProgress::Complete
        );
    }

    #[test]
    fn renders_table_and_lines() {
        let mut failed = status("s1", Mode::Secondary, Stage::FailoverFailed, Some((0, 0)));
        failed.error = Some("EIO".into());
        let statuses = [
            status("primary0", Mode::Primary, Stage::Running, None),
            status("s0", Mode::Secondary, Stage::Failover, Some((1, 4))),
            failed,
        ];
        assert_eq!(
            status_table(&statuses),
            "NAME      MODE       STAGE            MERGE  ERROR\n\
             primary0  primary    running          -      -\n\
             s0        secondary  failover         25.0%  -\n\
             s1        secondary  failover_failed  -      EIO\n"
        );
        assert_eq!(
            merge_line(&statuses[1]),
            "s0: failover: merged 1/4 bytes (25.0%)"
        );
        assert_eq!(
            completion_line(&status("s0", Mode::Secondary, Stage::Done, Some((4, 4)))),
            "s0: merge complete (4 bytes)"
        );
        let report = ErrorReport {
            name: "s1".into(),
            stage: Stage::Running,
            error: None,
        };
        assert_eq!(error_line(&report), "s1: running: ok");
    }
}
