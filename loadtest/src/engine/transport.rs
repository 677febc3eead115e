//! A connection's byte stream: plain TCP, or TLS through rustls over the same
//! non-blocking mio socket. Reads fill the caller's buffer (the worker's scratch
//! buffer); writes go to the kernel at once, and what it does not take waits in
//! the connection's pending buffer (plain) or in rustls (TLS) until writable.

use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<(TcpStream, ClientConnection)>),
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Transport {
    pub fn new(
        sock: TcpStream,
        tls: Option<&(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    ) -> io::Result<Transport> {
        Ok(match tls {
            None => Transport::Plain(sock),
            Some((cfg, name)) => {
                let c =
                    ClientConnection::new(cfg.clone(), name.clone()).map_err(io::Error::other)?;
                Transport::Tls(Box::new((sock, c)))
            }
        })
    }

    pub fn is_plain(&self) -> bool {
        matches!(self, Transport::Plain(_))
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(b) => &mut b.0,
        }
    }

    /// Whether the TCP connect has completed (`Ok(false)`: not yet).
    pub fn connected(&mut self) -> io::Result<bool> {
        let s = self.socket();
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Read plaintext into `buf`: `Ok(0)` at the end of the stream,
    /// `Err(WouldBlock)` when nothing more is there now.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(b) => {
                let (sock, tls) = &mut **b;
                loop {
                    match tls.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if would_block(&e) => {}
                        Err(e) => return Err(e),
                    }
                    match tls.read_tls(sock) {
                        Ok(0) => return Ok(0),
                        Ok(_) => {
                            tls.process_new_packets().map_err(io::Error::other)?;
                            flush_tls(sock, tls)?;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Write `data`; what the kernel does not take now waits in `pending` (plain)
    /// or in rustls (TLS) until [`Transport::flush`].
    pub fn write(&mut self, data: &[u8], pending: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Transport::Plain(s) => {
                if !pending.is_empty() {
                    pending.extend_from_slice(data);
                    return flush_plain(s, pending);
                }
                let mut off = 0;
                while off < data.len() {
                    match s.write(&data[off..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => off += n,
                        Err(e) if would_block(&e) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                pending.extend_from_slice(&data[off..]);
                Ok(())
            }
            Transport::Tls(b) => {
                let (sock, tls) = &mut **b;
                tls.writer().write_all(data)?;
                flush_tls(sock, tls)
            }
        }
    }

    /// Write what waits (on a writable event).
    pub fn flush(&mut self, pending: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Transport::Plain(s) => flush_plain(s, pending),
            Transport::Tls(b) => {
                let (sock, tls) = &mut **b;
                flush_tls(sock, tls)
            }
        }
    }

    /// Half-close after the close frame (plain: FIN; TLS: close_notify first).
    pub fn shutdown(&mut self) {
        if let Transport::Tls(b) = self {
            let (sock, tls) = &mut **b;
            tls.send_close_notify();
            let _ = flush_tls(sock, tls);
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Write);
    }
}

fn flush_plain(s: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<()> {
    let mut off = 0;
    while off < pending.len() {
        match s.write(&pending[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if would_block(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    pending.drain(..off);
    Ok(())
}

fn flush_tls(sock: &mut TcpStream, tls: &mut ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(_) => {}
            Err(e) if would_block(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
