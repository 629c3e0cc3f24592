//! Runs a shell script in a guest and prints what it printed: handy to try guest-side commands.
//!
//!   cargo run -p guest-harness --example run -- SCRIPT [KERNEL_ARG...]
//!   echo 'lsmod; nvme version' | cargo run -p guest-harness --example run -- -

use std::io::Read;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        anyhow::bail!("usage: run SCRIPT|- [KERNEL_ARG...]");
    };
    let script = if path == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&path)?
    };
    guest_harness::available().map_err(anyhow::Error::msg)?;
    let mut builder = guest_harness::Guest::builder()
        .script(script)
        .timeout(Duration::from_secs(300));
    for arg in args {
        builder = builder.append(arg);
    }
    let out = builder.spawn()?.wait()?;
    println!("{}", out.describe());
    println!("rc={} after {:.1?}", out.rc, out.elapsed);
    std::process::exit(out.rc);
}
