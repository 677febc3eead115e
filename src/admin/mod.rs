//! The admin listener (SPEC §2, §7): `/healthz`, `/readyz`, `/metrics` and
//! `POST /api/v1/publish`, and the live console (`console.rs`: `GET /ui`). It runs
//! on its own small thread pool, far from the shards: it reads their relaxed
//! counters and the admission state, and publishes through the bus like a backend.
//! It is given exactly what it serves ([`Admin`]). Everything but health, readiness
//! and metrics needs the `--admin-token` bearer.

mod console;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use tiny_http::{Header, Method, Request, Response, Server};
use tracing::info;

use crate::admission::Admission;
use crate::bus::Bus;
use crate::channels::valid_channel;
use crate::limits::{ADMIN_MAX_BODY, ADMIN_THREADS};
use crate::metrics::{Metrics, NodeState};

/// What the admin listener serves.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub bus: Arc<Bus>,
    pub admission: Arc<Admission>,
    /// The bearer of `POST /api/v1/publish` and the console's routes; without it
    /// those answer 403.
    pub admin_token: Option<String>,
    /// What the console shows and may do.
    pub console: console::Console,
}

pub use console::{Console, Mint};

/// Bind the admin listener and serve it on its threads. Returns the bound address.
pub fn start(addr: SocketAddr, admin: Admin) -> Result<SocketAddr, String> {
    let server =
        Server::http(addr).map_err(|e| format!("cannot bind --admin-listen {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or("admin listener has no IP address")?;
    info!("admin listening on {bound}");
    let server = Arc::new(server);
    let admin = Arc::new(admin);
    for i in 0..ADMIN_THREADS {
        let server = server.clone();
        let admin = admin.clone();
        std::thread::Builder::new()
            .name(format!("xcord-admin-{i}"))
            .spawn(move || {
                for req in server.incoming_requests() {
                    handle(&admin, req);
                }
            })
            .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    }
    Ok(bound)
}

fn text(status: u16, body: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.into()).with_status_code(status)
}

fn json(status: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut r = Response::from_string(body.to_owned()).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        r.add_header(h);
    }
    r
}

/// Whether the node accepts clients now (SPEC §7).
pub fn ready(admin: &Admin) -> Result<(), &'static str> {
    if admin.admission.draining() {
        return Err("draining");
    }
    if admin.admission.at_capacity() {
        return Err("at --max-connections");
    }
    if !admin.bus.up() {
        return Err("redis link down");
    }
    Ok(())
}

fn handle(admin: &Admin, mut req: Request) {
    let path = req.url().split('?').next().unwrap_or("").to_owned();
    let resp = match (req.method(), path.as_str()) {
        (Method::Get, "/healthz") => text(200, "ok\n"),
        (Method::Get, "/readyz") => match ready(admin) {
            Ok(()) => text(200, "ready\n"),
            Err(why) => text(503, format!("not ready: {why}\n")),
        },
        (Method::Get, "/metrics") => {
            let node = NodeState {
                ready: ready(admin).is_ok(),
                max_connections: admin.admission.max(),
            };
            let mut r = text(200, admin.metrics.render(&node));
            if let Ok(h) = Header::from_bytes("Content-Type", "text/plain; version=0.0.4") {
                r.add_header(h);
            }
            r
        }
        (Method::Post, "/api/v1/publish") => publish(admin, &mut req),
        (Method::Get, "/ui" | "/ui/") => console::page(),
        (Method::Get, "/ui/client.js") => console::client_js(),
        (Method::Get, "/api/v1/info") => console::info(admin, &req),
        (Method::Post, "/api/v1/token") => console::mint(admin, &mut req),
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/api/v1/publish" | "/ui" | "/ui/client.js"
            | "/api/v1/info" | "/api/v1/token",
        ) => text(405, "method not allowed\n"),
        _ => text(404, "not found\n"),
    };
    let _ = req.respond(resp);
}

/// Whether the request carries the admin bearer: `Err` is the answer when not
/// (403 without `--admin-token`, 401 on a missing or wrong bearer).
fn authorize(admin: &Admin, req: &Request) -> Result<(), Response<std::io::Cursor<Vec<u8>>>> {
    let Some(expected) = admin.admin_token.as_deref() else {
        return Err(json(
            403,
            r#"{"error":"disabled: start the gateway with --admin-token"}"#,
        ));
    };
    let bearer = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().trim().to_owned());
    let ok = bearer
        .as_deref()
        .and_then(crate::auth::bearer_token)
        .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()));
    if !ok {
        return Err(json(401, r#"{"error":"missing or wrong bearer token"}"#));
    }
    Ok(())
}

/// A request body of at most `ADMIN_MAX_BODY` bytes.
fn read_body(req: &mut Request) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let ok = req
        .as_reader()
        .take(ADMIN_MAX_BODY + 1)
        .read_to_end(&mut body)
        .is_ok();
    (ok && body.len() as u64 <= ADMIN_MAX_BODY).then_some(body)
}

fn publish(admin: &Admin, req: &mut Request) -> Response<std::io::Cursor<Vec<u8>>> {
    if let Err(r) = authorize(admin, req) {
        return r;
    }
    let Some(body) = read_body(req) else {
        return json(413, r#"{"error":"body too large or unreadable"}"#);
    };
    if !crate::protocol::depth::nesting_within(&body, crate::protocol::depth::MAX_DEPTH) {
        return json(400, r#"{"error":"body nests too deeply"}"#);
    }
    let v: sonic_rs::Value = match sonic_rs::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return json(400, r#"{"error":"body is not JSON"}"#),
    };
    use sonic_rs::JsonValueTrait;
    let channel = v.get("channel").and_then(|c| c.as_str()).unwrap_or("");
    let event = v.get("event").and_then(|c| c.as_str()).unwrap_or("");
    if !valid_channel(channel) {
        return json(400, r#"{"error":"channel must be a valid channel name"}"#);
    }
    if !admin.bus.publishable(channel) {
        return json(
            400,
            r#"{"error":"with --routing roots a channel has a root: at least two segments"}"#,
        );
    }
    if event.is_empty() {
        return json(400, r#"{"error":"event must be a non-empty string"}"#);
    }
    let payload = v
        .get("payload")
        .map(|p| p.to_string())
        .unwrap_or_else(|| "null".to_owned());
    match admin.bus.publish_wait(channel, event, &payload) {
        Ok(()) => json(202, r#"{"ok":true}"#),
        Err(e) => json(503, &sonic_rs::json!({"error": e}).to_string()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
