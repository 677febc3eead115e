//! The few system calls the loop makes, straight through libc: one epoll set,
//! nonblocking accept/recv/send, and socket options. Nothing here allocates.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

/// Readable (and peer half-close, so an EOF is never missed).
pub const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
/// Writable.
pub const OUT: u32 = libc::EPOLLOUT as u32;
/// Edge-triggered: a socket is registered once, for both directions, and never
/// modified again (no `epoll_ctl` on the hot path).
pub const ET: u32 = libc::EPOLLET as u32;
/// The peer closed, or the socket failed: read to find out.
pub const GONE: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// One epoll set and its event array.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: plain syscall with an integer flag.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity],
        })
    }

    /// Register `fd` with `token` for `flags`.
    pub fn add(&self, fd: RawFd, token: u64, flags: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: flags,
            u64: token,
        };
        // SAFETY: `ev` outlives the call.
        check(unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(|_| ())
    }

    /// Wait up to `timeout_ms` (-1: forever); the number of ready events (0 on EINTR).
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<usize> {
        let cap = self.events.len() as libc::c_int;
        // SAFETY: the kernel writes at most `cap` events into our array.
        let n = unsafe { libc::epoll_wait(self.fd, self.events.as_mut_ptr(), cap, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }

    /// Event `i` of the last wait: (token, flags).
    pub fn event(&self, i: usize) -> (u64, u32) {
        let e = self.events[i];
        (e.u64, e.events)
    }
}

/// Bind a nonblocking listener with a large backlog (a connect storm must not
/// overflow it: the gateway listens with 4096).
pub fn listen(addr: SocketAddr) -> io::Result<(RawFd, SocketAddr)> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let bound = l.local_addr()?;
    let fd = l.into_raw_fd();
    // listen(2) again on a listening socket only changes its backlog.
    // SAFETY: integer arguments only.
    check(unsafe { libc::listen(fd, 4096) })?;
    Ok((fd, bound))
}

/// Accept one connection, nonblocking; `None` when none is waiting.
pub fn accept(fd: RawFd) -> io::Result<Option<RawFd>> {
    // SAFETY: null address pointers are allowed; flags are integers.
    let r = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if r >= 0 {
        return Ok(Some(r));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(None),
        // The client gave up before we took it: try the next one.
        _ if e.raw_os_error() == Some(libc::ECONNABORTED) => accept(fd),
        _ => Err(e),
    }
}

/// recv(2): `Ok(0)` is EOF, `WouldBlock` means drained.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// send(2) without SIGPIPE: how many bytes the kernel took.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn close(fd: RawFd) {
    // SAFETY: we own `fd` and forget it afterwards.
    unsafe {
        libc::close(fd);
    }
}

/// Half-close: our FIN goes out after what is queued; reads keep working.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: integer arguments only.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// TCP_NODELAY: one event is one small write that must leave at once.
pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Raise the open-file soft limit to the hard limit (10k connections need it).
pub fn raise_nofile() {
    // SAFETY: `lim` is a plain struct the kernel fills.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
