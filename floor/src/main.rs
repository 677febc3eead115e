//! `xcord-floor`: the floor of side-by-side measurements. A bare one-thread epoll
//! WebSocket server that does the minimum the XCORD gateway does for a load test —
//! upgrade, HELLO with an HS256 token, SUBSCRIBE with SPEC §4's prefix rule, PING,
//! events from Redis (`PSUBSCRIBE events:*`) and from `POST /api/v1/publish`, each
//! framed once and written with one `send()` per subscriber — so that a figure of
//! the gateway can be reported as a ratio to the floor measured in the same run.
//! See floor/README.md for what it deliberately does not do.

mod admin;
mod bus;
mod index;
mod proto;
mod resp;
mod server;
mod session;
mod sys;
mod ws;

use clap::Parser;
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    name = "xcord-floor",
    version,
    about = "The floor of side-by-side measurements: a bare one-thread epoll WebSocket server \
             doing the minimum the XCORD gateway does",
    long_about = "The floor of side-by-side measurements: a bare one-thread epoll WebSocket \
                  server doing the minimum the XCORD gateway does for a load test, so that a \
                  figure of the gateway is reported as a ratio to the floor measured in the \
                  same run.\n\n\
                  It speaks the SPEC §3 subset a load test uses: the upgrade on GET /api/v1/ws, \
                  HELLO {token} (HS256, exp required) -> HELLO_ACK, SUBSCRIBE -> SUBSCRIBED \
                  (every syntactically valid channel granted; a subscription X covers X and \
                  X:... on segment boundaries), PING -> PONG. Events come from Redis \
                  (PSUBSCRIBE events:*) and from POST /api/v1/publish on the admin listener; \
                  each is framed once, byte for byte the gateway's EVENT frame, and written \
                  with one send() per subscriber. A connection with more than 1 MiB unsent is \
                  closed.\n\n\
                  Not done, on purpose: presence, resume, rate limits, authorization beyond the \
                  token, heartbeat and HELLO timeouts, UNSUBSCRIBE, typing, compression, \
                  fragmented messages, the Authorization header on the upgrade, metrics, \
                  draining. It logs 'admin listening on ADDR' and 'listening on ADDR' to \
                  stderr, like the gateway.",
    after_help = "Exit code: 2 on a bad flag or when a listener cannot be bound."
)]
struct Cli {
    /// Client listener, HOST:PORT. Port 0 picks a free port; the bound address is
    /// logged as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener, HOST:PORT: POST /api/v1/publish, GET /healthz, GET /readyz
    /// (503 while Redis is not subscribed). Logged as `admin listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin_listen: SocketAddr,
    /// Redis URL, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]: PSUBSCRIBE events:*
    /// there. Without it, events come from the admin route only.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// HS256 secret HELLO tokens are verified with.
    #[arg(
        long,
        env = "XCORD_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    jwt_secret: String,
    /// Clock skew allowed on exp/nbf, seconds.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    jwt_leeway_seconds: u64,
    /// Bearer token POST /api/v1/publish requires; without it the route is open.
    #[arg(
        long,
        env = "XCORD_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,
    /// The heartbeatInterval sent in HELLO_ACK, ms (the floor closes no idle
    /// connection: it has no timers).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    heartbeat_interval_ms: u64,
}

/// The command line, or exit: `--help`/`--version` print as clap does; a bad value
/// is refused with one `error:` line and exit code 2.
fn parse_cli() -> Cli {
    match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // The first line; "…not provided:" is completed with the names below it.
            let text = e.render().to_string();
            let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
            let mut line = lines.next().unwrap_or("error: bad arguments").to_owned();
            if line.ends_with(':') {
                for more in lines.take_while(|l| !l.trim().is_empty()) {
                    line.push(' ');
                    line.push_str(more.trim());
                }
            }
            eprintln!("{line}");
            std::process::exit(2);
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

fn main() {
    let cli = parse_cli();
    let redis = match cli.redis.as_deref().map(resp::parse_url) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => fail(&e),
    };
    if cli.jwt_secret.is_empty() {
        fail("--jwt-secret must not be empty");
    }
    sys::raise_nofile();
    let cfg = server::Config {
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        redis,
        jwt_secret: cli.jwt_secret,
        jwt_leeway_secs: cli.jwt_leeway_seconds,
        admin_token: cli.admin_token,
        heartbeat_ms: cli.heartbeat_interval_ms,
    };
    let mut server = server::Server::new(cfg).unwrap_or_else(|e| fail(&e));
    if let Err(e) = server.run() {
        eprintln!("xcord_floor: epoll_wait: {e}");
        std::process::exit(1);
    }
}
