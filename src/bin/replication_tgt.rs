//! `replication_tgt`: one node of a replicated pair. With SPDK found at build time it is the
//! SPDK application (see `host::app`); without it, or with `--host native`, the native host
//! (see `native::app`). Both take SPDK's application options and the same config files.

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let mut host: Option<String> = None;
    // `--host X` / `--host=X` is ours; everything else goes to the chosen host's parser.
    let mut i = 1;
    while i < args.len() {
        if let Some(v) = args[i].strip_prefix("--host=") {
            host = Some(v.to_owned());
            args.remove(i);
        } else if args[i] == "--host" && i + 1 < args.len() {
            host = Some(args.remove(i + 1));
            args.remove(i);
        } else {
            i += 1;
        }
    }
    let host = host.unwrap_or_else(|| {
        if spdk_replication::SPDK_FOUND {
            "spdk"
        } else {
            "native"
        }
        .to_owned()
    });
    let code = match host.as_str() {
        "native" => spdk_replication::native::app::run(args),
        "spdk" => spdk(args),
        other => {
            eprintln!("replication_tgt: --host {other}: expected native or spdk");
            2
        }
    };
    std::process::exit(code);
}

#[cfg(spdk)]
fn spdk(args: Vec<String>) -> i32 {
    spdk_replication::host::app::run(args)
}

#[cfg(not(spdk))]
fn spdk(_args: Vec<String>) -> i32 {
    eprintln!(
        "replication_tgt: --host spdk: this build found no SPDK (see README: SPDK discovery); \
         rebuild with SPDK installed, or use --host native"
    );
    1
}
