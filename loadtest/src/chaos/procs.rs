//! The processes the chaos scenario owns, all on loopback: one `redis-server`
//! (killed with SIGKILL and started again on the same port) and gateway nodes
//! (started from `--gateway-bin`, drained with SIGTERM). Each is killed by PID
//! when dropped. Secrets go to the gateways through the environment, never argv.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port below the ephemeral range (so that no client socket of
/// this machine takes it while Redis is down).
pub fn free_low_port() -> Result<u16> {
    for _ in 0..200 {
        let p = fastrand::u16(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free loopback port in 20000..32000")
}

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start(port: u16) -> Result<Redis> {
        let mut r = Redis { child: None, port };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (is it on PATH?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!(
                        "redis-server exited at start ({st}): port {} taken?",
                        self.port
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not answer on port {}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl Gateway {
    /// Start a node on loopback; returns once it logged its client address.
    pub fn start(
        bin: &PathBuf,
        redis_url: &str,
        secret: &str,
        extra: &[String],
    ) -> Result<Gateway> {
        let mut child = Command::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--redis",
                redis_url,
            ])
            .args(extra)
            .env("XCORD_JWT_SECRET", secret)
            .env("XCORD_ADMIN_TOKEN", secret)
            .env("XCORD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start the gateway {}", bin.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep reading for the node's whole life (a full pipe would block it).
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sent || line.contains("admin listening on") {
                    continue;
                }
                if let Some(i) = line.find("listening on ") {
                    let rest = &line[i + "listening on ".len()..];
                    if let Some(a) = rest.split_whitespace().next().and_then(|a| a.parse().ok()) {
                        let _ = tx.send(a);
                        sent = true;
                    }
                }
            }
        });
        let pid = child.id();
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(Gateway {
                child: Some(child),
                addr,
                pid,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the gateway did not log its listening address")
            }
        }
    }

    /// SIGTERM: the node drains (its clients get 4011) and exits.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
    }

    /// Whether the node has exited (reaping it).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
