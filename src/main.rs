//! `xcord-gateway`: run a node, or print a development token (`xcord-gateway token`).

use clap::Parser as _;

/// mimalloc: per-thread free lists suit one allocating thread per shard, and it
/// returns memory to the OS more readily than glibc's arenas (idle RSS per
/// connection is a target, see loadtest/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use xcord_gateway::auth;
use xcord_gateway::config::{Cli, Command, Config};

fn main() {
    disable_transparent_huge_pages();
    let cli = parse_cli();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XCORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Some(Command::Token(t)) => {
            let mut claims = auth::Claims::new(&t.sub, &t.servers, &t.dms, t.ttl.as_secs());
            claims.iss = t.jwt_issuer;
            claims.aud = t.jwt_audience.map(auth::Audience::One);
            match auth::sign_hs256(t.jwt_secret.as_bytes(), &claims) {
                Ok(tok) => println!("{tok}"),
                Err(e) => {
                    eprintln!("error: cannot sign the token: {e}");
                    std::process::exit(2);
                }
            }
        }
        None => {
            let cfg = match Config::from_args(cli.run) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            };
            if let Err(e) = xcord_gateway::node::run(cfg) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// The command line, or exit: `--help`/`--version` print as clap does; a bad value
/// is refused with one `error:` line (clap's hint line dropped) and exit code 2.
fn parse_cli() -> Cli {
    match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad arguments");
            eprintln!("{line}");
            std::process::exit(2);
        }
    }
}

/// mimalloc asks for transparent huge pages on its arenas (`MADV_HUGEPAGE`). With
/// them, RSS grows in 2 MiB steps that a few thousand idle connections only partly
/// use, so the memory per connection measured on a small run is far above the
/// steady cost and capacity planning from it is wrong (tuning/README.md). Turn THP
/// off for this process (future faults, all mappings) unless the operator sets
/// mimalloc's own switch `MIMALLOC_ALLOW_THP=1`.
fn disable_transparent_huge_pages() {
    if std::env::var("MIMALLOC_ALLOW_THP").is_ok_and(|v| v == "1") {
        return;
    }
    // SAFETY: prctl with integer arguments only; failure (old kernel) is harmless.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
