//! Waking the bus thread from `poll` when a route change is queued. A sender writes
//! the eventfd only while the thread sleeps, so a busy bus costs senders nothing.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

pub struct Waker {
    fd: RawFd,
    sleeping: AtomicBool,
}

impl Waker {
    pub fn new() -> Result<Arc<Waker>, String> {
        // SAFETY: eventfd with valid flags; the fd is owned by the Waker.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "cannot create an eventfd: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Arc::new(Waker {
            fd,
            sleeping: AtomicBool::new(false),
        }))
    }

    pub fn wake(&self) {
        if self.sleeping.swap(false, Relaxed) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe {
                libc::write(self.fd, (&one as *const u64).cast(), 8);
            }
        }
    }

    /// The bus thread is about to sleep in `poll` (wake it from now on).
    pub fn sleep(&self) {
        self.sleeping.store(true, Relaxed);
    }

    /// The bus thread is awake again.
    pub fn awake(&self) {
        self.sleeping.store(false, Relaxed);
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our nonblocking eventfd.
        unsafe {
            libc::read(self.fd, (&mut v as *mut u64).cast(), 8);
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe {
            libc::close(self.fd);
        }
    }
}
