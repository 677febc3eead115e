//! The HELLO/JWT path on arbitrary input, against one HS256 verifier
//! (`Verifier::hs256(SECRET, None, None, 5)`), which the target proves at start
//! accepts a token it signs with that secret (so the accept path is reachable).
//!
//! The first byte picks the mode: (0) decode the rest as a client message and verify
//! every token it carries (HELLO, RESUME, REFRESH); (1) verify the rest as a raw
//! token string; (2) split the rest at the first '\n' into a header and a claims
//! text, sign them correctly with the secret and verify (so arbitrary claims JSON
//! reaches claim parsing and validation; with no '\n', the rest is the claims under
//! the standard HS256 header); (3) build claims from the rest (a usable or unusable
//! `sub`, `exp`/`nbf` around now), sign them with the secret (or, when the input
//! says so, another one), carry the token in a HELLO, RESUME or REFRESH, decode that
//! and verify: the verdict must be exactly the expected one.
//!
//! Checks: never panics; a token that verifies has an HS256 header, a usable `sub`
//! (1..=128 bytes of the segment alphabet, no ':'), an `exp` not more than the 5 s
//! leeway in the past and no `nbf` more than 5 s in the future; in mode 3, a token
//! the client message carries arrives unchanged, and one signed with the secret with
//! a usable `sub` and a live `exp`/`nbf` is accepted with exactly its claims.

#![no_main]

#[path = "../common/strict_json.rs"]
mod strict_json;

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use xcord_common::clock::unix_secs as now_secs;
use xcord_gateway::auth::{sign_hs256, Claims, Verifier};
use xcord_gateway::protocol::{decode, ClientMsg};

/// The verifier's secret; modes 2 and 3 sign with it.
const SECRET: &[u8] = b"secret";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let v = Verifier::hs256(SECRET, None, None, 5);
        // A verifier that refuses everything would make every accept-path check
        // below vacuous: it must accept a token signed with its own secret.
        let good = Claims::new("alice", &["s1".into()], &[], 3600);
        let token = sign_hs256(SECRET, &good).expect("HMAC signing cannot fail");
        assert_eq!(
            v.verify(&token).as_ref(),
            Ok(&good),
            "the verifier refuses a token signed with its own secret"
        );
        v
    })
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

/// `sub` choices: usable ones and each way of being unusable.
const SUBS: [&str; 8] = [
    "alice",
    "u_1",
    "user.name@x=+-",
    "",
    "a:b",
    "x y",
    "\u{e9}",
    "*",
];

#[derive(Arbitrary, Debug)]
enum SubIn {
    Known(u8),
    Raw(String),
    /// A run of 'a' (reaches the 128-byte limit).
    Long(u8),
}

#[derive(Arbitrary, Debug)]
enum Carrier {
    Hello,
    Resume { session_id: String, seq: u64 },
    Refresh,
}

/// Mode 3's input: claims to sign and the message that carries the token.
#[derive(Arbitrary, Debug)]
struct Signed {
    sub: SubIn,
    /// Seconds from now.
    exp: i16,
    nbf: Option<i16>,
    servers: Vec<String>,
    wrong_secret: bool,
    carrier: Carrier,
}

/// Mode 3: sign, carry, decode, verify; the verdict must be the expected one.
fn signed(input: Signed) {
    let now = now_secs();
    let mut claims = Claims::new(
        &match &input.sub {
            SubIn::Known(i) => SUBS[*i as usize % SUBS.len()].to_owned(),
            SubIn::Raw(s) => s.clone(),
            SubIn::Long(n) => "a".repeat(*n as usize),
        },
        &input.servers,
        &[],
        0,
    );
    claims.exp = now.saturating_add_signed(input.exp.into());
    claims.nbf = input.nbf.map(|d| now.saturating_add_signed(d.into()));
    let secret: &[u8] = if input.wrong_secret {
        b"not-the-secret"
    } else {
        SECRET
    };
    let token = sign_hs256(secret, &claims).expect("HMAC signing cannot fail");
    let text = match &input.carrier {
        Carrier::Hello => serde_json::json!({"type": "HELLO", "payload": {"token": token}}),
        Carrier::Resume { session_id, seq } => serde_json::json!({"type": "RESUME",
            "payload": {"token": token, "sessionId": session_id, "seq": seq}}),
        Carrier::Refresh => serde_json::json!({"type": "REFRESH", "payload": {"token": token}}),
    }
    .to_string();
    let carried = match decode(text.as_bytes()) {
        Ok(ClientMsg::Hello { token: Some(t) }) | Ok(ClientMsg::Resume { token: Some(t), .. }) => t,
        Ok(ClientMsg::Refresh { token: t }) => t,
        // Our own well-formed message carries the token whatever it holds.
        other => panic!(
            "a well-formed {:?} did not decode: {other:?}",
            input.carrier
        ),
    };
    assert_eq!(
        carried, token,
        "the token changed on its way through decode"
    );
    let got = verify(&carried);
    let after = now_secs();
    // Skip verdicts that depend on which second verify ran in.
    let near = |t: u64, edge: u64| t.abs_diff(edge) <= 2;
    let (exp_edge, nbf_edge) = (now.saturating_sub(5), now + 5);
    if after != now || near(claims.exp, exp_edge) || claims.nbf.is_some_and(|n| near(n, nbf_edge)) {
        return;
    }
    let want = !input.wrong_secret
        && usable_sub(&claims.sub)
        && claims.exp >= exp_edge
        && claims.nbf.is_none_or(|n| n <= nbf_edge);
    match got {
        Some(c) => {
            assert!(want, "accepted {claims:?}");
            assert_eq!(c, claims, "claims changed in transit");
        }
        None => assert!(!want, "refused {claims:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
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
        2 => {
            const HS256: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;
            let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
                Some(cut) => (&rest[..cut], &rest[cut + 1..]),
                None => (HS256, rest),
            };
            let msg = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let sig = jsonwebtoken::crypto::sign(
                msg.as_bytes(),
                &EncodingKey::from_secret(SECRET),
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
        _ => {
            if let Ok(input) = Signed::arbitrary_take_rest(Unstructured::new(rest)) {
                signed(input);
            }
        }
    }
});
