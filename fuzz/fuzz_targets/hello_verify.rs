//! The HELLO/JWT path on arbitrary input, against one HS256 verifier
//! (`Verifier::hs256(b"secret", None, None, 5)`).
//!
//! The first byte picks the mode: (0) decode the rest as a client message and verify
//! every token it carries (HELLO, RESUME, REFRESH); (1) verify the rest as a raw
//! token string; (2) split the rest at the first '\n' into a header and a claims
//! text, sign them correctly with the secret and verify (so arbitrary claims JSON
//! reaches claim parsing and validation).
//!
//! Checks: never panics; a token that verifies has an HS256 header, a usable `sub`
//! (1..=128 bytes of the segment alphabet, no ':'), an `exp` not more than the 5 s
//! leeway in the past and no `nbf` more than 5 s in the future.

#![no_main]

#[path = "../common/strict_json.rs"]
mod strict_json;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use xcord_common::clock::unix_secs as now_secs;
use xcord_gateway::auth::{Claims, Verifier};
use xcord_gateway::protocol::{decode, ClientMsg};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::hs256(b"secret", None, None, 5))
}

fn usable_sub(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@=+".contains(&b))
}

/// What every accepted token must satisfy, from the claims the verifier returned.
fn check_claims(c: &Claims) {
    assert!(usable_sub(&c.sub), "accepted unusable sub {:?}", c.sub);
    // One second of slack for the clock ticking between verify and here.
    assert!(
        c.exp.saturating_add(5 + 1) >= now_secs(),
        "accepted expired token {c:?}"
    );
    if let Some(nbf) = c.nbf {
        assert!(nbf <= now_secs() + 5 + 1, "accepted immature token {c:?}");
    }
}

fn verify(token: &str) -> Option<Claims> {
    let r = verifier().verify(token);
    if let Ok(c) = &r {
        check_claims(c);
    }
    r.ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => match decode(rest) {
            Ok(ClientMsg::Hello { token: Some(t) })
            | Ok(ClientMsg::Resume { token: Some(t), .. })
            | Ok(ClientMsg::Refresh { token: t }) => {
                verify(&t);
            }
            _ => {}
        },
        1 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                verify(s);
            }
        }
        _ => {
            let cut = rest.iter().position(|b| *b == b'\n').unwrap_or(0);
            let (header, claims) = (&rest[..cut], rest.get(cut + 1..).unwrap_or(&[]));
            let msg = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let sig = jsonwebtoken::crypto::sign(
                msg.as_bytes(),
                &EncodingKey::from_secret(b"secret"),
                Algorithm::HS256,
            )
            .expect("HMAC signing cannot fail");
            if let Some(c) = verify(&format!("{msg}.{sig}")) {
                // serde_json (inside jsonwebtoken) does not check UTF-8 in strings it
                // skips, so read both parts lossily.
                let h = String::from_utf8_lossy(header);
                let h = strict_json::parse(h.as_bytes()).expect("accepted a non-JSON header");
                assert_eq!(
                    h.value["alg"], "HS256",
                    "accepted a header that is not HS256"
                );
                let cl = String::from_utf8_lossy(claims);
                let cl = strict_json::parse(cl.as_bytes()).expect("accepted non-JSON claims");
                assert_eq!(cl.value["sub"].as_str(), Some(c.sub.as_str()));
            }
        }
    }
});
