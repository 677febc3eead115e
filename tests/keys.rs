//! SPEC §2: `--jwt-public-key FILE` — the key type fixes the algorithm (Ed25519 →
//! EdDSA, P-256 → ES256); tokens signed with another algorithm, including HS256
//! "signed" with the public key itself (algorithm confusion) and `none`, are refused.

mod common;
use common::*;
use serde_json::json;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn start_with_key(public: &str) -> Gateway {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--jwt-public-key",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(fixture(public)))
    .collect();
    Gateway::start_raw(&args).expect("gateway with a public key")
}

fn claims(sub: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"sub": sub, "exp": now + 600})
}

fn hello_code(gw: &Gateway, token: &str) -> Result<String, Option<u16>> {
    let mut c = Client::connect(gw);
    c.send(json!({"type": "HELLO", "payload": {"token": token}}));
    match c.next() {
        Got::Msg(v) if v["type"] == "HELLO_ACK" => {
            Ok(v["payload"]["userId"].as_str().unwrap_or("").to_string())
        }
        Got::Closed(code) => Err(code),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ed25519_public_key_means_eddsa_only() {
    let gw = start_with_key("ed25519-public.pem");
    let private = std::fs::read(fixture("ed25519-private.pem")).unwrap();
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims("eddie"),
        &jsonwebtoken::EncodingKey::from_ed_pem(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(hello_code(&gw, &good), Ok("eddie".to_string()));
    // HS256 with the public key's bytes as the secret: the classic confusion attack.
    let public = std::fs::read(fixture("ed25519-public.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("eddie"),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(hello_code(&gw, &confused), Err(Some(4004)));
    assert_eq!(
        hello_code(
            &gw,
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ."
        ),
        Err(Some(4004))
    );
}

#[test]
fn p256_public_key_means_es256_only() {
    let gw = start_with_key("ec-p256-public.pem");
    let private = std::fs::read(fixture("ec-p256-private.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap();
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims("ecco"),
        &key,
    )
    .unwrap();
    assert_eq!(hello_code(&gw, &good), Ok("ecco".to_string()));
    // The right key family but a token from the Ed25519 key: refused.
    let ed = std::fs::read(fixture("ed25519-private.pem")).unwrap();
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims("ecco"),
        &jsonwebtoken::EncodingKey::from_ed_pem(&ed).unwrap(),
    )
    .unwrap();
    assert_eq!(hello_code(&gw, &other), Err(Some(4004)));
}

#[test]
fn an_unreadable_or_foreign_key_file_is_refused_at_start() {
    for file in ["no-such-key.pem", "README.md"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xcord-gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--jwt-public-key",
            ])
            .arg(fixture(file))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error"),
            "{file}"
        );
    }
}
