//! Who may connect: the node-wide connection count against `--max-connections`,
//! the drain flag, and the per-address count against `--max-connections-per-ip`
//! (SPEC §7, §8). Shards take and give back places at connection set-up and
//! teardown only — never on the fan-out path — and the admin listener reads the
//! same state for `/readyz`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections-per-ip` reached for this address (HTTP 429).
    PerIp,
    /// The node is full or draining (HTTP 503).
    Full,
}

pub struct Admission {
    connections: AtomicUsize,
    max: usize,
    draining: AtomicBool,
    per_ip_limit: usize,
    /// Connections per client address. A mutex is fine: set-up and teardown only.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    pub fn new(max: usize, per_ip_limit: usize) -> Admission {
        Admission {
            connections: AtomicUsize::new(0),
            max,
            draining: AtomicBool::new(false),
            per_ip_limit,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Take a place for a connection from `ip`; every `Ok` is paired with one
    /// [`Admission::release`].
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        if !self.acquire_ip(ip) {
            return Err(Refusal::PerIp);
        }
        if self.draining() {
            self.release_ip(ip);
            return Err(Refusal::Full);
        }
        if self.connections.fetch_add(1, Relaxed) >= self.max {
            self.connections.fetch_sub(1, Relaxed);
            self.release_ip(ip);
            return Err(Refusal::Full);
        }
        Ok(())
    }

    /// Give back a place taken by [`Admission::admit`].
    pub fn release(&self, ip: IpAddr) {
        self.connections.fetch_sub(1, Relaxed);
        self.release_ip(ip);
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn at_capacity(&self) -> bool {
        self.connections() >= self.max
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        match self.per_ip.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    fn acquire_ip(&self, ip: IpAddr) -> bool {
        if self.per_ip_limit == 0 {
            return true;
        }
        let mut m = self.counts();
        let c = m.entry(ip).or_insert(0);
        if *c >= self.per_ip_limit {
            return false;
        }
        *c += 1;
        true
    }

    fn release_ip(&self, ip: IpAddr) {
        if self.per_ip_limit == 0 {
            return;
        }
        let mut m = self.counts();
        if let Some(c) = m.get_mut(&ip) {
            *c -= 1;
            if *c == 0 {
                m.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_and_given_back() {
        let a = Admission::new(2, 1);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let z: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(a.admit(x), Ok(()));
        assert_eq!(a.admit(x), Err(Refusal::PerIp));
        assert_eq!(a.admit(y), Ok(()));
        assert_eq!(a.admit(z), Err(Refusal::Full));
        assert!(a.at_capacity());
        a.release(x);
        assert_eq!(a.admit(z), Ok(()));
        a.start_draining();
        a.release(y);
        assert_eq!(a.admit(y), Err(Refusal::Full));
    }
}
