//! The live console (issue 11): `GET /ui` serves one self-contained page, embedded
//! in the binary (`console.html`, no CDN), which loads the official client from
//! `GET /ui/client.js` (`clients/typescript/dist/index.js`, embedded too). The page
//! draws `/metrics` every second, publishes through `POST /api/v1/publish`, and
//! watches channels through the client. Its two routes of its own need the admin
//! bearer like publishing: `GET /api/v1/info` (what the page must know to connect)
//! and `POST /api/v1/token` (a token minted for a chosen user, only with an HS256
//! `--jwt-secret`). The page itself holds nothing secret.

use std::net::SocketAddr;
use tiny_http::{Header, Request, Response};

use super::{authorize, json, read_body, Admin};
use crate::auth::{sign_hs256, Claims};
use crate::channels::valid_channel;

const PAGE: &str = include_str!("console.html");
const CLIENT_JS: &str = include_str!("../../clients/typescript/dist/index.js");

/// Longest lifetime of a minted token.
const MAX_MINT_TTL_SECS: u64 = 7 * 86_400;

/// What the console needs from the node.
pub struct Console {
    /// The client listener as bound (a `:0` port resolved).
    pub listen: SocketAddr,
    pub shards: usize,
    /// Minting, when the node verifies HS256 tokens.
    pub mint: Option<Mint>,
}

/// How to sign a token the node accepts.
pub struct Mint {
    pub secret: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

type Resp = Response<std::io::Cursor<Vec<u8>>>;

fn typed(body: &'static str, content_type: &str) -> Resp {
    let mut r = Response::from_string(body).with_status_code(200);
    if let Ok(h) = Header::from_bytes("Content-Type", content_type) {
        r.add_header(h);
    }
    if let Ok(h) = Header::from_bytes("Cache-Control", "no-store") {
        r.add_header(h);
    }
    r
}

pub fn page() -> Resp {
    typed(PAGE, "text/html; charset=utf-8")
}

pub fn client_js() -> Resp {
    typed(CLIENT_JS, "text/javascript; charset=utf-8")
}

pub fn info(admin: &Admin, req: &Request) -> Resp {
    if let Err(r) = authorize(admin, req) {
        return r;
    }
    let c = &admin.console;
    let body = sonic_rs::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": c.listen.to_string(),
        "wsPath": "/api/v1/ws",
        "shards": c.shards,
        "canMint": c.mint.is_some(),
    });
    json(200, &body.to_string())
}

#[derive(serde::Deserialize)]
struct MintRequest {
    sub: String,
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    dms: Vec<String>,
    #[serde(default = "default_ttl", rename = "ttlSeconds")]
    ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    3600
}

pub fn mint(admin: &Admin, req: &mut Request) -> Resp {
    if let Err(r) = authorize(admin, req) {
        return r;
    }
    let Some(m) = admin.console.mint.as_ref() else {
        return json(
            409,
            r#"{"error":"this gateway verifies with a public key: it cannot mint tokens"}"#,
        );
    };
    let Some(body) = read_body(req) else {
        return json(413, r#"{"error":"body too large or unreadable"}"#);
    };
    if !crate::protocol::depth::nesting_within(&body, crate::protocol::depth::MAX_DEPTH) {
        return json(400, r#"{"error":"body nests too deeply"}"#);
    }
    let Ok(r) = sonic_rs::from_slice::<MintRequest>(&body) else {
        return json(
            400,
            r#"{"error":"expected {sub, servers?, dms?, ttlSeconds?}"}"#,
        );
    };
    let segment = |s: &str| valid_channel(s) && !s.contains(':');
    if !segment(&r.sub) || !r.servers.iter().chain(&r.dms).all(|s| segment(s)) {
        return json(
            400,
            r#"{"error":"sub, servers and dms must be single channel segments"}"#,
        );
    }
    if r.ttl_seconds == 0 || r.ttl_seconds > MAX_MINT_TTL_SECS {
        return json(400, r#"{"error":"ttlSeconds must be 1 to 604800"}"#);
    }
    let mut claims = Claims::new(&r.sub, &r.servers, &r.dms, r.ttl_seconds);
    claims.iss = m.issuer.clone();
    claims.aud = m.audience.clone().map(crate::auth::Audience::One);
    match sign_hs256(m.secret.as_bytes(), &claims) {
        Ok(t) => json(200, &sonic_rs::json!({"token": t}).to_string()),
        Err(e) => json(500, &sonic_rs::json!({"error": e}).to_string()),
    }
}
