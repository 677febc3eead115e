//! A node: binds the listeners, starts the bus, presence, the shards and the admin
//! listener, then waits for SIGTERM/SIGINT and drains (SPEC §2 `--drain-seconds`).
//!
//! The client listeners are created here, one SO_REUSEPORT socket per shard on the
//! same address (port 0 resolved by the first bind, then shared), so a bad address
//! fails at start with one clear line, before any thread is running. This is the
//! only module that knows every other: each part is given exactly what it uses.

use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

use crate::admin::{self, Admin, Console, Mint};
use crate::admission::Admission;
use crate::auth::Verifier;
use crate::bus::{Bus, Ctl, Inbox, RouterLimits};
use crate::config::Config;
use crate::limits::{INBOX_EVENTS, IO_MEMORY, LISTEN_BACKLOG, RING_DEPTH};
use crate::metrics::Metrics;
use crate::presence::{self, Presence};
use crate::shard;

fn bind_listener(addr: SocketAddr) -> std::io::Result<Socket> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    sk.set_reuse_address(true)?;
    sk.set_nonblocking(true)?;
    sk.bind(&addr.into())?;
    sk.listen(LISTEN_BACKLOG)?;
    Ok(sk)
}

/// One listener per shard on the same address; returns them and the bound address.
fn bind_listeners(cfg: &Config) -> Result<(Vec<Socket>, SocketAddr), String> {
    let first =
        bind_listener(cfg.listen).map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let bound = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("cannot read the listener's address")?;
    let mut listeners = vec![first];
    for _ in 1..cfg.shards {
        listeners.push(bind_listener(bound).map_err(|e| format!("cannot listen on {bound}: {e}"))?);
    }
    Ok((listeners, bound))
}

/// Start one pinned executor per listener.
fn start_shards(
    cfg: &Config,
    listeners: Vec<Socket>,
    ctx: &Arc<shard::Context>,
    inboxes: &[Arc<Inbox>],
) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, String> {
    let mut handles = Vec::new();
    for (i, sk) in listeners.into_iter().enumerate() {
        let cpu = cfg.cpus[i % cfg.cpus.len()];
        let fd = sk.into_raw_fd();
        let ctx = ctx.clone();
        let inbox = inboxes[i].clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("xcord-shard-{i}"))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .spawn(move || async move {
                // SAFETY: `fd` is a listening socket this thread now owns alone.
                let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                shard::run(i, ctx, inbox, listener).await;
            })
            .map_err(|e| format!("cannot start shard {i} on CPU {cpu}: {e}"))?;
        handles.push(h);
    }
    Ok(handles)
}

/// Run the node until a signal has drained it.
pub fn run(cfg: Config) -> Result<(), String> {
    let verifier = Verifier::from_config(&cfg.jwt)?;
    let n = cfg.shards;
    let (listeners, bound) = bind_listeners(&cfg)?;

    let metrics = Arc::new(Metrics::new(n));
    let inboxes: Vec<Arc<Inbox>> = (0..n).map(|_| Arc::new(Inbox::new(INBOX_EVENTS))).collect();
    let (presence, presence_rx) = Presence::new(metrics.clone());
    let limits = RouterLimits {
        ring_bytes: if cfg.resume_window.is_zero() {
            0
        } else {
            cfg.replay_buffer_bytes.saturating_mul(n)
        },
        max_frame_bytes: cfg.send_queue_bytes,
        max_sessions: cfg.max_connections,
    };
    let ender = presence.clone();
    let bus = Bus::start(
        cfg.redis.as_ref(),
        cfg.routing,
        inboxes.clone(),
        metrics.clone(),
        limits,
        Box::new(move |user| {
            ender.ended(user);
        }),
    )?;
    // This process's id in the presence keys (`xcord:node:{id}`).
    let node_id = format!("{:x}-{:08x}", std::process::id(), fastrand::u32(..));
    presence::start(
        presence::Settings {
            redis: cfg.redis.clone(),
            ttl: cfg.presence_ttl,
            sweep: cfg.presence_sweep,
            node_id,
        },
        presence_rx,
        bus.clone(),
    )?;
    let admission = Arc::new(Admission::new(
        cfg.max_connections,
        cfg.max_connections_per_ip,
    ));
    admin::start(
        cfg.admin_listen,
        Admin {
            metrics: metrics.clone(),
            bus: bus.clone(),
            admission: admission.clone(),
            admin_token: cfg.admin_token.clone(),
            console: Console {
                listen: bound,
                shards: n,
                mint: cfg.jwt.secret.clone().map(|secret| Mint {
                    secret,
                    issuer: cfg.jwt.issuer.clone(),
                    audience: cfg.jwt.audience.clone(),
                }),
            },
        },
    )?;
    let ctx = Arc::new(shard::Context {
        cfg: cfg.clone(),
        verifier,
        metrics,
        bus,
        presence,
        admission: admission.clone(),
    });
    let handles = start_shards(&cfg, listeners, &ctx, &inboxes)?;
    info!(
        shards = n,
        redis = cfg.redis.is_some(),
        "listening on {bound}"
    );

    wait_for_signal(&cfg)?;
    admission.start_draining();
    for inbox in &inboxes {
        inbox.push_ctl(Ctl::Drain);
    }
    for (i, h) in handles.into_iter().enumerate() {
        if h.join().is_err() {
            error!(shard = i, "shard ended abnormally");
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    info!("drained");
    Ok(())
}

/// Block until SIGTERM or SIGINT; a second signal afterwards ends the process at once.
fn wait_for_signal(cfg: &Config) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    if let Some(sig) = signals.forever().next() {
        info!(
            signal = sig,
            drain_seconds = cfg.drain.as_secs(),
            "draining: closing clients with 4011"
        );
    }
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            std::process::exit(1);
        }
    });
    Ok(())
}
