//! A node: binds the listeners, starts the bus, the shards and the admin listener,
//! then waits for SIGTERM/SIGINT and drains (SPEC §2 `--drain-seconds`).
//!
//! The client listeners are created here, one SO_REUSEPORT socket per shard on the
//! same address (port 0 resolved by the first bind, then shared), so a bad address
//! fails at start with one clear line, before any thread is running.

use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shard::inbox::{Ctl, Inbox};

/// What every thread of the node can see. Everything here is immutable or atomic.
pub struct Shared {
    pub cfg: Config,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub bus: Arc<Bus>,
    pub presence: Arc<crate::presence::Presence>,
    /// This process's id in the presence keys (`xcord:node:{id}`).
    pub node_id: String,
    /// Open client connections on the node (for `--max-connections`).
    pub connections: AtomicUsize,
    pub draining: AtomicBool,
    /// `--max-connections-per-ip` bookkeeping.
    pub per_ip: PerIp,
}

/// Connections per client address (SPEC §8). Touched at connection set-up and
/// teardown only — never on the fan-out path — so a mutex is fine here.
pub struct PerIp {
    limit: usize,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerIp {
    pub fn new(limit: usize) -> PerIp {
        PerIp {
            limit,
            counts: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Count a connection from `ip`; false when the limit is reached (0 = off).
    pub fn acquire(&self, ip: std::net::IpAddr) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut m = match self.counts.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let c = m.entry(ip).or_insert(0);
        if *c >= self.limit {
            return false;
        }
        *c += 1;
        true
    }

    pub fn release(&self, ip: std::net::IpAddr) {
        if self.limit == 0 {
            return;
        }
        let mut m = match self.counts.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(c) = m.get_mut(&ip) {
            *c -= 1;
            if *c == 0 {
                m.remove(&ip);
            }
        }
    }
}

impl Shared {
    /// Tell presence a session is over (used when a resumed session is abandoned).
    pub fn presence_end(&self, user: &str) -> bool {
        self.presence.end(user)
    }
}

/// io_uring depth per ring. Every idle connection keeps a poll request in the
/// ring, and glommio cancels its preemption timers on every reactor turn; the
/// kernel finds a request to cancel by walking a hash table whose size follows
/// the ring's completion queue (2^(log2(cq) - 5) buckets, at most 256). At the
/// default depth of 128 that is 8 buckets for 10k polls, and the walk was a
/// quarter of the shard's CPU (perf, loadtest/RESULTS.md). 4096 gives 256 buckets.
const RING_DEPTH: usize = 4096;

/// The I/O memory glommio registers per executor. We do no file I/O, and the
/// process may lock only 8 MiB here; the default 10 MiB fails to register.
const IO_MEMORY: usize = 256 * 1024;

fn bind_listener(addr: SocketAddr) -> std::io::Result<Socket> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    sk.set_reuse_address(true)?;
    sk.set_nonblocking(true)?;
    sk.bind(&addr.into())?;
    sk.listen(4096)?;
    Ok(sk)
}

pub fn build_verifier(cfg: &Config) -> Result<Verifier, String> {
    let a = &cfg.args;
    match (&a.jwt_secret, &a.jwt_public_key) {
        (Some(s), _) => Ok(Verifier::hs256(
            s.as_bytes(),
            a.jwt_issuer.as_deref(),
            a.jwt_audience.as_deref(),
            a.jwt_leeway_seconds,
        )),
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --jwt-public-key {}: {e}", path.display()))?;
            Verifier::from_pem(
                &pem,
                a.jwt_issuer.as_deref(),
                a.jwt_audience.as_deref(),
                a.jwt_leeway_seconds,
            )
        }
        (None, None) => Err("one of --jwt-secret or --jwt-public-key is required".into()),
    }
}

/// Run the node until a signal has drained it. Returns the process exit code.
pub fn run(cfg: Config) -> Result<(), String> {
    let verifier = build_verifier(&cfg)?;
    let n = cfg.shards;

    let first = bind_listener(cfg.args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.args.listen))?;
    let bound = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("cannot read the listener's address")?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(bind_listener(bound).map_err(|e| format!("cannot listen on {bound}: {e}"))?);
    }

    let metrics = Arc::new(Metrics::new(n));
    let inboxes: Vec<Arc<Inbox>> = (0..n).map(|_| Arc::new(Inbox::new(65_536))).collect();
    let (presence_tx, presence_rx) = crate::presence::channel();
    let limits = crate::bus::ResumeLimits {
        ring_bytes: if cfg.args.resume_window_seconds == 0 {
            0
        } else {
            cfg.args.replay_buffer_bytes.saturating_mul(n)
        },
        max_replay_bytes: cfg.args.send_queue_bytes,
    };
    let bus = Bus::start(
        cfg.args.redis.as_deref(),
        inboxes.clone(),
        metrics.clone(),
        limits,
        presence_tx.clone(),
    )?;
    let node_id = format!("{:x}-{:08x}", std::process::id(), fastrand::u32(..));
    let presence = crate::presence::start(
        crate::presence::Settings {
            redis_url: cfg.args.redis.clone(),
            ttl: Duration::from_secs(cfg.args.presence_ttl_seconds),
            sweep: Duration::from_secs(cfg.args.presence_sweep_seconds),
            node_id: node_id.clone(),
        },
        presence_tx,
        presence_rx,
        bus.clone(),
        metrics.clone(),
    )?;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        verifier,
        metrics,
        bus,
        presence,
        node_id,
        connections: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        per_ip: PerIp::new(cfg.args.max_connections_per_ip),
    });
    crate::admin::start(cfg.args.admin_listen, shared.clone())?;

    let mut handles = Vec::new();
    for (i, sk) in listeners.into_iter().enumerate() {
        let cpu = cfg.cpus[i % cfg.cpus.len()];
        let fd = sk.into_raw_fd();
        let shared = shared.clone();
        let inbox = inboxes[i].clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("xcord-shard-{i}"))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .spawn(move || async move {
                // SAFETY: `fd` is a listening socket this thread now owns alone.
                let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                crate::shard::run(i, shared, inbox, listener).await;
            })
            .map_err(|e| format!("cannot start shard {i} on CPU {cpu}: {e}"))?;
        handles.push(h);
    }
    info!(
        shards = n,
        redis = cfg.args.redis.is_some(),
        "listening on {bound}"
    );

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    if let Some(sig) = signals.forever().next() {
        info!(
            signal = sig,
            drain_seconds = cfg.args.drain_seconds,
            "draining: closing clients with 4011"
        );
    }
    shared.draining.store(true, Relaxed);
    for inbox in &inboxes {
        inbox.push_ctl(Ctl::Drain);
    }
    // A second signal ends at once.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            std::process::exit(1);
        }
    });
    for (i, h) in handles.into_iter().enumerate() {
        if h.join().is_err() {
            error!(shard = i, "shard ended abnormally");
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    info!("drained");
    Ok(())
}
