//! Every fixed bound and timeout of the gateway, named once. What an operator may
//! change is a flag (`config.rs`); what is here is a design choice, with the reason
//! beside it. Measured consequences live in loadtest/RESULTS.md, not here.

use std::time::Duration;

// ---- fan-out --------------------------------------------------------------

/// A fan-out turn ends after this many events …
pub const TURN_EVENTS: u32 = 256;
/// … or this many frame bytes: then the shard writes the dirty sockets and yields,
/// so that a burst larger than `--send-queue-bytes` is written while it is
/// delivered instead of looking like a slow consumer.
pub const TURN_BYTES: usize = 64 * 1024;
/// Events queued per shard inbox; past it the router drops and counts
/// (`queue_full`) — it must never wait on a shard (Redis drops a subscriber 32 MB
/// behind).
pub const INBOX_EVENTS: usize = 65_536;
/// The per-shard socket read buffer (shared by the shard's connections).
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// An outbound buffer cut for a slow consumer keeps at most this much capacity.
pub const OUT_KEEP_BYTES: usize = 256;
/// Idle connections give their outbound buffers back this often.
pub const TRIM_EVERY: Duration = Duration::from_secs(2);
/// A shard merges its latency histogram into the node's this often.
pub const LATENCY_FLUSH_EVERY: Duration = Duration::from_millis(500);

// ---- executors ------------------------------------------------------------

/// io_uring depth per ring. Every idle connection keeps a poll request in the
/// ring, and glommio cancels its preemption timers on every reactor turn; the
/// kernel finds a request to cancel by walking a hash table whose size follows the
/// completion queue (2^(log2(cq) - 5) buckets, at most 256): a deep ring keeps
/// that walk short.
pub const RING_DEPTH: usize = 4096;
/// The I/O memory glommio registers per executor. We do no file I/O, and locked
/// memory may be capped low (8 MiB on some hosts): the default 10 MiB would fail.
pub const IO_MEMORY: usize = 256 * 1024;
/// The listen(2) backlog of each shard's listener.
pub const LISTEN_BACKLOG: i32 = 4096;

// ---- handshakes -----------------------------------------------------------

/// Largest HTTP request head.
pub const MAX_HEAD: usize = 8 * 1024;
/// The request head must arrive within `--hello-timeout-ms`, and never later than this.
pub const HEAD_TIMEOUT_MAX: Duration = Duration::from_secs(10);
/// Pending handshakes per shard past which the oldest, if it has waited on its
/// client at least [`SHED_AGE`], is shed; past 4× this the oldest goes whatever its age.
pub const MAX_HANDSHAKES: usize = 2048;
/// A handshake this young is a connect burst, not a slowloris: let it finish.
pub const SHED_AGE: Duration = Duration::from_millis(500);
/// How long an HTTP refusal (404, 429, 503…) may take to write.
pub const RESPOND_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed accepts (EMFILE…) back off this long instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

// ---- connections ----------------------------------------------------------

/// A connection still closing after this long is killed.
pub const CLOSING_KILL_AFTER: Duration = Duration::from_secs(10);
/// After the drain's last 4011, how long the closes may take to flush.
pub const DRAIN_FLUSH_WAIT: Duration = Duration::from_secs(3);
/// A TYPING_START not repeated within this ends by itself (SPEC §6).
pub const TYPING_TTL: Duration = Duration::from_secs(10);
/// HELLO_ACK waits at most this long for presence to count the session (SPEC §6).
pub const PRESENCE_COUNT_WAIT: Duration = Duration::from_secs(2);
/// The sweep that enforces deadlines ticks at a quarter of the shortest one,
/// within these bounds.
pub const SWEEP_TICK_MIN: Duration = Duration::from_millis(20);
pub const SWEEP_TICK_MAX: Duration = Duration::from_millis(500);

// ---- Redis ----------------------------------------------------------------

/// Connecting to Redis, and each read or write on a command connection.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REDIS_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// An answer a client or the admin route waits for (SISMEMBER, a publish, an
/// SSUBSCRIBE): past it, the Redis-backed answer is "no" / 503 / UNAVAILABLE.
pub const REDIS_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// The pub/sub reader wakes this often to apply route changes while no event comes.
pub const PUBSUB_POLL: Duration = Duration::from_secs(1);
/// Jobs queued to the Redis command thread; past it a job fails at once.
pub const COMMAND_QUEUE: usize = 100_000;
/// Jobs written to Redis in one round trip.
pub const COMMAND_BATCH: usize = 256;
/// SET_PRESENCE changes queued to the presence thread past which one is dropped
/// and counted (session starts and ends are never dropped).
pub const PRESENCE_QUEUE: usize = 100_000;
/// Presence changes written to Redis in one pipeline.
pub const PRESENCE_BATCH: usize = 256;
/// Lapsed users a presence sweep reads at a time.
pub const SWEEP_BATCH: usize = 1000;
/// How long a root nobody holds any more stays subscribed (SPEC §9: up to 60 s),
/// so a user flapping between tabs does not churn Redis.
pub const ROOT_LINGER: Duration = Duration::from_secs(60);
/// Publishes queued on the in-process bus.
pub const MEMORY_BUS_QUEUE: usize = 65_536;

// ---- admin ----------------------------------------------------------------

/// Largest `POST /api/v1/publish` body.
pub const ADMIN_MAX_BODY: u64 = 1024 * 1024;
/// Threads serving the admin listener.
pub const ADMIN_THREADS: usize = 2;
/// A bus event whose channel is longer than this is dropped (`bad_channel`).
pub const EVENT_CHANNEL_MAX: usize = 1024;
