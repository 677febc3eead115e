//! The admin listener's console routes (issue 11): the embedded page and client,
//! `/api/v1/info` and token minting, each behind the admin bearer. The page itself
//! is driven in headless Chromium by `clients/typescript/test/console.test.mjs`.

mod common;

use common::*;
use serde_json::{json, Value};

fn get(gw: &Gateway, path: &str, bearer: Option<&str>) -> (u16, String) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http(gw.admin, "GET", path, &headers, "")
}

fn mint(gw: &Gateway, bearer: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(
        gw.admin,
        "POST",
        "/api/v1/token",
        &[("Authorization", &format!("Bearer {bearer}"))],
        &body.to_string(),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn the_page_and_the_client_are_served_from_the_binary() {
    let gw = Gateway::start(&[]);
    let (status, page) = get(&gw, "/ui", None);
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") && page.contains("/ui/client.js"),
        "{page}"
    );
    assert!(
        !page.contains("https://"),
        "no CDN: the page is self-contained"
    );
    let (status, js) = get(&gw, "/ui/client.js", None);
    assert_eq!(status, 200);
    assert!(
        js.contains("export class") || js.contains("export {"),
        "an ES module"
    );
}

#[test]
fn info_and_minting_need_the_admin_bearer_and_a_minted_token_works() {
    let gw = Gateway::start(&[]);
    assert_eq!(get(&gw, "/api/v1/info", None).0, 401);
    assert_eq!(get(&gw, "/api/v1/info", Some("wrong")).0, 401);
    let (status, body) = get(&gw, "/api/v1/info", Some(ADMIN));
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["listen"], gw.addr.to_string(), "the bound address");
    assert_eq!(info["wsPath"], "/api/v1/ws");
    assert_eq!(info["canMint"], true);
    assert_eq!(mint(&gw, "wrong", json!({"sub": "ann"})).0, 401);
    assert_eq!(mint(&gw, ADMIN, json!({"sub": "a:b"})).0, 400);
    assert_eq!(
        mint(&gw, ADMIN, json!({"sub": "ann", "ttlSeconds": 0})).0,
        400
    );
    let (status, t) = mint(&gw, ADMIN, json!({"sub": "ann", "servers": ["s1"]}));
    assert_eq!(status, 200);
    let (mut c, ack) = Client::hello(&gw, t["token"].as_str().unwrap());
    assert_eq!(ack["userId"], "ann");
    c.subscribe(&["server:s1"]);
}

#[test]
fn without_an_admin_token_the_console_routes_are_refused() {
    let gw = Gateway::start_raw(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--shards",
            "1",
        ]
        .map(String::from),
    )
    .unwrap();
    assert_eq!(get(&gw, "/api/v1/info", Some("anything")).0, 403);
    assert_eq!(mint(&gw, "anything", json!({"sub": "ann"})).0, 403);
}

#[test]
fn a_public_key_node_cannot_mint() {
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ed25519-public.pem"
    );
    let gw = Gateway::start_raw(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--jwt-public-key",
            key,
            "--admin-token",
            ADMIN,
            "--shards",
            "1",
        ]
        .map(String::from),
    )
    .unwrap();
    let (_, body) = get(&gw, "/api/v1/info", Some(ADMIN));
    assert!(body.contains("\"canMint\":false"), "{body}");
    assert_eq!(mint(&gw, ADMIN, json!({"sub": "ann"})).0, 409);
}
