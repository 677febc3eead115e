//! What does batching the fan-out's sends through io_uring save on loopback?
//!
//! The gateway writes each socket a fan-out turn touched with one non-blocking
//! `send()`. Issue 5 suggests batching them into io_uring submissions. This measures
//! the sender's CPU per 200-byte send, the way the `fanout` scenario sends (turns of
//! 100 sockets, 200 turns a second, a reader on the other CPU draining everything),
//! three ways:
//!
//! - `send`: one `send(MSG_DONTWAIT)` per socket (what the gateway does);
//! - `uring`: one `io_uring_enter` per turn carrying 100 SEND entries;
//! - `uring-fixed`: the same with the sockets registered as fixed files (no fd
//!   lookup per send).
//!
//! Last, a broadcast's floor: one send to every socket back to back (wall time).
//!
//! CPU is the sending thread's own (`CLOCK_THREAD_CPUTIME_ID`), which on loopback
//! includes the receiving side's softirq work run inside the send.
//!
//! `taskset -c 0 cargo run --release -p xcord-loadtest --example send_cost -- [SOCKETS] [SECONDS]`
//! (the reader pins itself to CPU 1). Loopback only; bounded in count and time.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const MSG: usize = 200;
const TURN: usize = 100;
const TURNS_PER_SEC: u64 = 200;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Drain every accepted socket with epoll until `stop` (the sender's sockets close).
fn reader(listener: TcpListener, n: usize) -> u64 {
    pin(1);
    let mut socks = Vec::with_capacity(n);
    // SAFETY: plain epoll calls on fds this thread owns.
    let ep = unsafe { libc::epoll_create1(0) };
    for i in 0..n {
        let (s, _) = listener.accept().expect("accept");
        s.set_nonblocking(true).expect("nonblocking");
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        socks.push(Some(s));
    }
    let mut open = n;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while open > 0 {
        let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, 1000) };
        for e in evs.iter().take(k.max(0) as usize) {
            let i = e.u64 as usize;
            let Some(s) = socks[i].as_mut() else { continue };
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        socks[i] = None;
                        open -= 1;
                        break;
                    }
                    Ok(m) => total += m as u64,
                    Err(_) => break,
                }
            }
        }
    }
    unsafe { libc::close(ep) };
    total
}

/// `n` loopback connections (TCP_NODELAY) and the reader thread draining them.
fn connect(n: usize) -> (std::thread::JoinHandle<u64>, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let r = std::thread::spawn(move || reader(listener, n));
    let socks = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    (r, socks)
}

#[derive(Clone, Copy, Debug)]
enum Way {
    Send,
    Uring,
    UringFixed,
}

fn run(way: Way, n: usize, secs: u64) -> (f64, u64) {
    let (r, socks) = connect(n);
    let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let msg = [b'x'; MSG];
    let mut ring = io_uring::IoUring::new(256).expect("io_uring");
    if let Way::UringFixed = way {
        ring.submitter()
            .register_files(&fds)
            .expect("register files");
    }
    let period = Duration::from_nanos(1_000_000_000 / TURNS_PER_SEC);
    let turns = secs * TURNS_PER_SEC;
    let mut next = Instant::now();
    let mut sends = 0u64;
    let mut cpu = Duration::ZERO;
    for t in 0..turns {
        let first = (t as usize * TURN) % n;
        let c0 = thread_cpu();
        match way {
            Way::Send => {
                for k in 0..TURN {
                    let fd = fds[(first + k) % n];
                    // SAFETY: fd is an open socket; msg is valid for MSG bytes.
                    let w = unsafe {
                        libc::send(
                            fd,
                            msg.as_ptr().cast(),
                            MSG,
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    assert_eq!(w, MSG as isize, "short send");
                }
            }
            Way::Uring | Way::UringFixed => {
                {
                    let mut sq = ring.submission();
                    for k in 0..TURN {
                        let i = (first + k) % n;
                        let e = match way {
                            Way::UringFixed => io_uring::opcode::Send::new(
                                io_uring::types::Fixed(i as u32),
                                msg.as_ptr(),
                                MSG as u32,
                            ),
                            _ => io_uring::opcode::Send::new(
                                io_uring::types::Fd(fds[i]),
                                msg.as_ptr(),
                                MSG as u32,
                            ),
                        }
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(i as u64);
                        // SAFETY: msg outlives the submission (completed below).
                        unsafe { sq.push(&e).expect("sq full") };
                    }
                }
                ring.submit_and_wait(TURN).expect("submit");
                for c in ring.completion() {
                    assert_eq!(c.result(), MSG as i32, "short send");
                }
            }
        }
        cpu += thread_cpu() - c0;
        sends += TURN as u64;
        next += period;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    drop(socks);
    drop(ring);
    let got = r.join().expect("reader");
    assert_eq!(got, sends * MSG as u64, "the reader got every byte");
    (cpu.as_secs_f64() * 1e6 / sends as f64, sends)
}

/// A broadcast's floor: one send to each of `n` sockets back to back, as one
/// event to every subscriber; returns the wall time of the whole burst (median of
/// `bursts`, one a second).
fn burst(n: usize, bursts: usize) -> Duration {
    let (r, socks) = connect(n);
    let msg = [b'x'; MSG];
    let mut took = Vec::with_capacity(bursts);
    for _ in 0..bursts {
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        for s in &socks {
            // SAFETY: an open socket; msg is valid for MSG bytes.
            let w = unsafe {
                libc::send(
                    s.as_raw_fd(),
                    msg.as_ptr().cast(),
                    MSG,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            assert_eq!(w, MSG as isize, "short send");
        }
        took.push(t.elapsed());
    }
    drop(socks);
    let got = r.join().expect("reader");
    assert_eq!(got, (bursts * n * MSG) as u64, "the reader got every byte");
    took.sort();
    took[took.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    pin(0);
    println!(
        "{n} loopback sockets, turns of {TURN} sends of {MSG} B, {TURNS_PER_SEC} turns/s, {secs} s each"
    );
    for way in [Way::Send, Way::Uring, Way::UringFixed, Way::Send] {
        let (us, sends) = run(way, n, secs);
        println!("{way:?}: {us:.2} µs of sender CPU per send ({sends} sends)");
    }
    let b = burst(n, 5);
    println!(
        "burst: one send to each of {n} sockets back to back takes {:.1} ms (median of 5), {:.2} µs per send",
        b.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e6 / n as f64
    );
}
