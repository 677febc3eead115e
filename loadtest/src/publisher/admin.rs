//! A minimal HTTP/1.1 keep-alive client for `POST /api/v1/publish`: one request at
//! a time on one connection, which keeps each channel's events in order.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A minimal HTTP/1.1 keep-alive client for `POST /api/v1/publish`.
pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: String,
    pub conn: Option<BufReader<TcpStream>>,
}

impl AdminClient {
    fn open(&mut self) -> Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .with_context(|| format!("connect to the admin listener {}", self.addr))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            self.conn = Some(BufReader::new(s));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| anyhow!("no admin connection"))
    }

    /// POST once; returns the HTTP status.
    fn post_once(&mut self, body: &str) -> Result<(u16, bool)> {
        let req = format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.addr,
            self.token,
            body.len(),
            body
        );
        let conn = self.open()?;
        conn.get_mut()
            .write_all(req.as_bytes())
            .context("write the publish request")?;
        let mut line = String::new();
        let n = conn.read_line(&mut line).context("read the status line")?;
        if n == 0 {
            // Closed before answering: the request was not taken.
            return Ok((0, true));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                bail!("connection closed inside the response headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                } else if k == "connection" && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut sink = vec![0u8; len];
        conn.read_exact(&mut sink)
            .context("read the response body")?;
        if close {
            self.conn = None;
        }
        Ok((status, false))
    }

    pub fn post(&mut self, body: &str) -> Result<u16> {
        match self.post_once(body) {
            Ok((_, true)) | Err(_) if self.conn.is_some() => {
                // A stale keep-alive connection: one more try on a fresh one.
                self.conn = None;
                let (status, closed) = self.post_once(body)?;
                if closed {
                    self.conn = None;
                    bail!("the admin listener closed the connection without answering");
                }
                Ok(status)
            }
            Ok((_, true)) => bail!("the admin listener closed the connection without answering"),
            Ok((status, false)) => Ok(status),
            Err(e) => Err(e),
        }
    }
}
