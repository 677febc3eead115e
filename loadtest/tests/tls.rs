//! `wss://` end to end: a TLS-terminating proxy written here (rustls, a
//! certificate for `localhost` signed by a test CA made with rcgen) in front of
//! the real gateway. With `--ca-file` the load tester trusts the test CA, checks
//! the name it sent as SNI (`localhost`, from the URL) and accounts for every
//! delivery; without it the handshake fails on the unknown issuer.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The test CA (PEM, written to `dir/ca.pem`) and the server's TLS config.
fn test_pki(dir: &Path) -> Arc<rustls::ServerConfig> {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "xcord-loadtest test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca.der().clone()];
    let pk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, pk)
        .expect("server config");
    Arc::new(cfg)
}

/// Copy both ways between a TLS client and the gateway until either side ends.
fn pump(cfg: Arc<rustls::ServerConfig>, client: TcpStream, backend: SocketAddr, stop: &AtomicBool) {
    let Ok(up) = TcpStream::connect(backend) else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let tick = Some(Duration::from_millis(2));
    let _ = client.set_read_timeout(tick);
    let _ = up.set_read_timeout(tick);
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, client);
    let mut up = up;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Relaxed) {
        let mut idle = true;
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                idle = false;
                if up.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        match up.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                idle = false;
                if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        if idle {
            std::thread::yield_now();
        }
    }
}

/// The proxy: one thread per connection. Returns its address.
fn tls_proxy(
    cfg: Arc<rustls::ServerConfig>,
    backend: SocketAddr,
    stop: Arc<AtomicBool>,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = l.local_addr().expect("proxy address");
    std::thread::spawn(move || {
        for c in l.incoming() {
            if stop.load(Relaxed) {
                break;
            }
            let Ok(c) = c else { continue };
            let (cfg, stop) = (cfg.clone(), stop.clone());
            std::thread::spawn(move || pump(cfg, c, backend, &stop));
        }
    });
    addr
}

#[test]
fn wss_through_a_tls_proxy_with_a_private_ca() {
    let _g = serial();
    let redis = Redis::start();
    let gw = Gateway::start(&redis);
    let dir = scratch("tls");
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = tls_proxy(test_pki(&dir), gw.addr, stop.clone());
    let url = format!("wss://localhost:{}/api/v1/ws", proxy.port());
    let ca = dir.join("ca.pem").display().to_string();
    let run = |name: &str, ca: Option<&str>| {
        let mut a = base_args(&gw, &redis);
        a[1] = url.clone(); // --gateway
        a.extend(
            [
                "--connections",
                "60",
                "--channels",
                "6",
                "--rate",
                "20",
                "--duration-s",
                "2",
                "--connect-timeout-s",
                "10",
                "--out",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a.push(dir.join(format!("{name}.json")).display().to_string());
        if let Some(ca) = ca {
            a.extend(["--ca-file".to_string(), ca.to_string()]);
        }
        let c = spawn_loadtest(&a, &dir, name);
        (
            finish(c, &dir, name),
            read_json(&dir.join(format!("{name}.json"))),
        )
    };
    let (code, v) = run("trusted", Some(&ca));
    assert_eq!(code, Some(0), "{}", v["failure_reasons"]);
    assert_eq!(v["connections"]["established"], 60);
    assert_eq!(v["deliveries"]["missing"], 0);
    assert_eq!(v["deliveries"]["expected"], 40 * 10);
    assert_eq!(v["deliveries"]["received"], 40 * 10);

    let (code, v) = run("untrusted", None);
    assert_eq!(code, Some(1));
    assert_eq!(v["connections"]["established"], 0);
    let errors = v["connections"]["errors"].to_string();
    assert!(errors.to_lowercase().contains("certificate"), "{errors}");
    stop.store(true, Relaxed);
}
