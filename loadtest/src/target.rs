//! Where a run goes: the gateway as `HOST:PORT`, `ws://host:port[/path]` or
//! `wss://host:port[/path]` (TLS through rustls: the webpki roots plus
//! `--ca-file`, SNI from the URL's host), resolved once; the source addresses
//! connections bind to; and the redaction of secrets in everything the tool
//! prints or records (the command line, Redis URLs with a password).
//!
//! Any address is accepted: the loopback-only rule belongs to this machine's test
//! suite, not to the tool (the shipped scenarios and the tests target loopback).

use anyhow::{anyhow, bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use crate::engine::Target;

/// A parsed `ws://` / `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub tls: bool,
    /// The host as written (brackets of an IPv6 literal removed).
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl WsUrl {
    /// `HOST:PORT` (plain, path `/api/v1/ws`), or a `ws://` / `wss://` URL (path
    /// `/api/v1/ws` when the URL has none).
    pub fn parse(s: &str) -> Result<WsUrl> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("ws://") {
            (false, r)
        } else if s.contains("://") {
            bail!("{s:?}: the gateway URL must be ws:// or wss://");
        } else {
            (false, s)
        };
        let (auth, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            "/api/v1/ws".to_owned()
        } else if path.starts_with('?') {
            format!("/api/v1/ws{path}")
        } else {
            path.to_owned()
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(auth, default_port)?;
        if host.is_empty() {
            bail!("{s:?}: no host");
        }
        Ok(WsUrl {
            tls,
            host,
            port,
            path,
        })
    }

    /// The `Host` header: the host, with the port unless it is the scheme's default.
    pub fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }

    pub fn display(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "wss" } else { "ws" },
            self.host_header(),
            self.path
        )
    }
}

/// `host:port`, `[v6]:port` or `host` (with `default_port`).
pub fn split_host_port(auth: &str, default_port: u16) -> Result<(String, u16)> {
    let auth = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| anyhow!("{auth:?}: unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("bad port in {auth:?}"))?,
            None if after.is_empty() => default_port,
            None => bail!("{auth:?}: junk after ']'"),
        };
        return Ok((h.to_owned(), port));
    }
    match auth.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((
            h.to_owned(),
            p.parse().with_context(|| format!("bad port in {auth:?}"))?,
        )),
        Some(_) => bail!("{auth:?}: an IPv6 address needs brackets, [::1]:8080"),
        None => Ok((auth.to_owned(), default_port)),
    }
}

/// Resolve `host:port`, preferring IPv4.
pub fn resolve(what: &str, host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("{what}: cannot resolve {host}:{port}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{what}: {host} has no address"))
}

/// The TLS client configuration: the webpki roots, plus the certificates of
/// `ca_file` (PEM) when given — a private CA of a staging fleet or a test.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("--ca-file {}: cannot read", path.display()))?
        {
            let cert = cert.with_context(|| format!("--ca-file {}: bad PEM", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("--ca-file {}: not a CA certificate", path.display()))?;
            n += 1;
        }
        if n == 0 {
            bail!("--ca-file {}: no certificate in it", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The engine's target for a gateway URL.
pub fn ws_target(url: &WsUrl, ca_file: Option<&Path>) -> Result<Target> {
    let addr = resolve("--gateway", &url.host, url.port)?;
    let tls = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| anyhow!("{}: not a TLS server name: {e}", url.host))?;
        Some((tls_config(ca_file)?, name))
    } else {
        if ca_file.is_some() {
            bail!("--ca-file needs a wss:// gateway URL");
        }
        None
    };
    Ok(Target {
        addr,
        host_header: url.host_header(),
        path: url.path.clone(),
        tls,
    })
}

/// The source addresses: the given list, else `127.0.0.1..=127.0.0.N` for an
/// IPv4 loopback target (N from the scenario), else none (the kernel's choice).
pub fn source_addrs(list: &[IpAddr], count: usize, target: SocketAddr) -> Vec<IpAddr> {
    if !list.is_empty() {
        return list.to_vec();
    }
    match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => (1..=count.clamp(1, 254) as u8)
            .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Flags whose value is a secret.
const SECRET_FLAGS: &[&str] = &["--jwt-secret", "--admin-token"];

/// The command line with secrets replaced by `***`: the values of the secret
/// flags, and the password of any URL (`redis://user:PASSWORD@host`).
pub fn redact_args(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for a in argv {
        if hide_next {
            out.push("***".to_owned());
            hide_next = false;
            continue;
        }
        if SECRET_FLAGS.contains(&a.as_str()) {
            hide_next = true;
            out.push(a.clone());
            continue;
        }
        if let Some(f) = SECRET_FLAGS
            .iter()
            .find(|f| a.starts_with(&format!("{f}=")))
        {
            out.push(format!("{f}=***"));
            continue;
        }
        out.push(redact_url(a));
    }
    out
}

/// A URL with the password of its user info replaced by `***`; anything else as is.
pub fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else {
        return s.to_owned();
    };
    let userinfo = &rest[..at];
    let hidden = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(), // redis://PASSWORD@host
    };
    format!("{scheme}://{hidden}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls() {
        let u = WsUrl::parse("127.0.0.1:8080").expect("hostport");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/api/v1/ws")
        );
        let u = WsUrl::parse("wss://gw.staging.example.com/custom/ws?x=1").expect("wss");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "gw.staging.example.com", 443, "/custom/ws?x=1")
        );
        assert_eq!(u.host_header(), "gw.staging.example.com");
        let u = WsUrl::parse("ws://[::1]:9000").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.host_header(), "[::1]:9000");
        assert_eq!(u.display(), "ws://[::1]:9000/api/v1/ws");
        let u = WsUrl::parse("wss://10.1.2.3:8443").expect("remote");
        assert_eq!((u.host.as_str(), u.port), ("10.1.2.3", 8443));
        assert!(WsUrl::parse("http://x:1").is_err());
        assert!(WsUrl::parse("ws://:80").is_err());
    }

    #[test]
    fn remote_and_loopback_sources() {
        let remote: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        assert!(source_addrs(&[], 3, remote).is_empty());
        let lo: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert_eq!(source_addrs(&[], 3, lo).len(), 3);
        let list: Vec<IpAddr> = vec!["10.9.0.5".parse().expect("ip")];
        assert_eq!(source_addrs(&list, 3, remote), list);
    }

    #[test]
    fn secrets_are_redacted() {
        let argv: Vec<String> = [
            "xcord-loadtest",
            "--jwt-secret",
            "s3cret",
            "--admin-token=adm1nT0k",
            "--redis",
            "rediss://default:pw@redis.example:6380/0",
            "--rate",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = redact_args(&argv).join(" ");
        assert!(
            !r.contains("s3cret") && !r.contains("adm1nT0k") && !r.contains(":pw@"),
            "{r}"
        );
        assert!(r.contains("--jwt-secret *** --admin-token=***"), "{r}");
        assert!(
            r.contains("rediss://default:***@redis.example:6380/0"),
            "{r}"
        );
        assert_eq!(redact_url("redis://pw@h/"), "redis://***@h/");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
    }

    #[test]
    fn tls_config_reads_a_ca_file() {
        assert!(tls_config(None).is_ok());
        let dir = std::env::temp_dir().join(format!("xcord-lt-ca-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("empty.pem");
        std::fs::write(&p, "nothing here\n").expect("write");
        assert!(tls_config(Some(&p)).is_err());
    }
}
