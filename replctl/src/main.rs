use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::bail;
use clap::{CommandFactory, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use replctl::Client;
use replctl::api::{self, ErrorReport, NameParams, Request, Status};
use replctl::cli::{Cli, Command, UsageError};
use replctl::client::decode_result;
use replctl::report::{self, FailoverProgress};
use serde_json::Value;

const POLL_INTERVAL: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.command.request() {
        Ok(request) => request,
        Err(err) => usage_exit(err),
    };
    match run(&cli, &request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` appends the cause chain, e.g. the OS error of a failed connect.
            eprintln!("replctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a mode/option mismatch the way clap reports its own usage errors.
fn usage_exit(err: UsageError) -> ! {
    let kind = match err {
        UsageError::Missing { .. } => clap::error::ErrorKind::MissingRequiredArgument,
        UsageError::WrongMode { .. } => clap::error::ErrorKind::ArgumentConflict,
    };
    let mut cmd = Cli::command();
    cmd.build();
    let create = cmd
        .find_subcommand_mut("create")
        .expect("only create has mode-dependent options");
    create.error(kind, err).exit()
}

fn run(cli: &Cli, request: &Request) -> anyhow::Result<()> {
    let mut client = Client::connect(&cli.socket, Duration::from_secs(cli.timeout))?;
    let mut out = io::stdout().lock();
    match &cli.command {
        Command::Create(_) => {
            let name: String = client.call_as(request)?;
            writeln!(out, "{name}")?;
        }
        Command::Delete { .. } | Command::Start { .. } | Command::Checkpoint { .. } => {
            expect_true(&mut client, request)?;
        }
        Command::Resync { name, wait, .. }
        | Command::Verify { name, wait }
        | Command::Reprotect { name, wait, .. } => {
            if *wait {
                start_when_not_busy(&mut client, request, Duration::from_secs(cli.timeout))?;
            } else {
                expect_true(&mut client, request)?;
            }
            if *wait {
                wait_for_sync(&mut client, name, &mut out)?;
            }
        }
        Command::Stop { name, wait, .. } => {
            expect_true(&mut client, request)?;
            if *wait {
                wait_for_failover(&mut client, name.clone(), &mut out)?;
            }
        }
        Command::Status { json, .. } => {
            let result = client.call(request)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
            } else {
                let statuses: Vec<Status> = decode_result(&request.method, result)?;
                write!(out, "{}", report::status_table(&statuses))?;
            }
        }
        Command::GetError { .. } => {
            let reports: Vec<ErrorReport> = client.call_as(request)?;
            for r in &reports {
                writeln!(out, "{}", report::error_line(r))?;
            }
        }
        Command::Rpc { .. } | Command::DirtyMap { .. } => {
            let result: Value = client.call(request)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
        }
    }
    Ok(())
}

/// The action methods answer `true`; anything else means the module did not
/// do what was asked even though the call itself succeeded.
fn expect_true(client: &mut Client, request: &Request) -> anyhow::Result<()> {
    if !client.call_as::<bool>(request)? {
        bail!("{}: server returned false", request.method);
    }
    Ok(())
}

/// With `--wait`, a refusal because timed-out remote requests are still pending (EBUSY: a
/// reconnected remote retries them shortly) is waited out, up to `limit`, like the job.
fn start_when_not_busy(
    client: &mut Client,
    request: &Request,
    limit: Duration,
) -> anyhow::Result<()> {
    const EBUSY: i64 = -16;
    let deadline = std::time::Instant::now() + limit;
    let mut said = false;
    loop {
        match client.call_as::<bool>(request) {
            Ok(true) => return Ok(()),
            Ok(false) => bail!("{}: server returned false", request.method),
            Err(replctl::client::Error::Rpc { code, message, .. })
                if code == EBUSY
                    && message.contains("timed-out remote request")
                    && std::time::Instant::now() < deadline =>
            {
                if !said {
                    eprintln!("{message}; waiting");
                    said = true;
                }
                thread::sleep(POLL_INTERVAL);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Polls a primary's status until its sync or verify has ended, drawing a byte progress
/// bar on a terminal and plain lines otherwise; fails when the job stopped short.
fn wait_for_sync(client: &mut Client, name: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let request = Request::new(
        api::GET_STATUS,
        &NameParams {
            name: Some(name.to_owned()),
        },
    );
    let bar = io::stderr().is_terminal().then(|| {
        let style = ProgressStyle::with_template(
            "{spinner} {msg} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("template is valid");
        ProgressBar::new(0).with_style(style)
    });
    let mut last = String::new();
    loop {
        let statuses: Vec<Status> = client.call_as(&request)?;
        let Some(s) = statuses.first().and_then(|s| s.sync.clone()) else {
            bail!("{name}: not a primary (no sync status)");
        };
        if s.state == "syncing" || s.state == "verifying" {
            match &bar {
                Some(bar) => {
                    bar.set_message(s.state.clone());
                    bar.set_length(s.total_bytes);
                    bar.set_position(s.done_bytes);
                }
                None => {
                    let line = format!(
                        "{name}: {}: {}/{} bytes",
                        s.state, s.done_bytes, s.total_bytes
                    );
                    if line != last {
                        eprintln!("{line}");
                        last = line;
                    }
                }
            }
            thread::sleep(POLL_INTERVAL);
            continue;
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let error = statuses.first().and_then(|st| st.error.clone());
        writeln!(
            out,
            "{name}: {}: {} bytes done, {} bytes dirty, {} mismatches{}",
            s.state,
            s.done_bytes,
            s.dirty_bytes,
            s.mismatches,
            if s.first_mismatches.is_empty() {
                String::new()
            } else {
                format!(" (first at byte offsets {:?})", s.first_mismatches)
            }
        )?;
        if s.state == "out_of_sync" && s.mismatches == 0 {
            bail!(
                "{name}: the sync stopped with {} bytes still dirty ({})",
                s.dirty_bytes,
                error.as_deref().unwrap_or("no error reported")
            );
        }
        return Ok(());
    }
}

/// Polls the status until every secondary has merged (or one failed),
/// drawing a byte progress bar on a terminal and plain lines otherwise.
fn wait_for_failover(
    client: &mut Client,
    name: Option<String>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let request = Request::new(api::GET_STATUS, &NameParams { name });
    let bar = io::stderr().is_terminal().then(|| {
        let style = ProgressStyle::with_template(
            "{spinner} merging [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("template is valid");
        ProgressBar::new(0).with_style(style)
    });
    let mut last_lines = String::new();
    loop {
        let statuses: Vec<Status> = client.call_as(&request)?;
        match FailoverProgress::of(&statuses) {
            FailoverProgress::Failed { name, error } => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                bail!(
                    "{name}: failover failed: {}",
                    error.unwrap_or("no error reported")
                );
            }
            FailoverProgress::Complete => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                for status in &statuses {
                    writeln!(out, "{}", report::completion_line(status))?;
                }
                return Ok(());
            }
            FailoverProgress::Merging {
                done_bytes,
                total_bytes,
            } => match &bar {
                Some(bar) => {
                    // The total can grow while the merge is being sized.
                    bar.set_length(total_bytes);
                    bar.set_position(done_bytes);
                }
                None => {
                    let lines: String = statuses
                        .iter()
                        .filter(|s| s.mode == api::Mode::Secondary)
                        .map(|s| report::merge_line(s) + "\n")
                        .collect();
                    // Skip repeats so a stalled merge doesn't flood a log.
                    if lines != last_lines {
                        eprint!("{lines}");
                        last_lines = lines;
                    }
                }
            },
        }
        thread::sleep(POLL_INTERVAL);
    }
}
