//! `auth::sign_hs256` then `Verifier::verify` on arbitrary structured claims
//! (verifier: HS256, secret "secret", no issuer/audience, 5 s leeway).
//!
//! Checks: never panics; signing succeeds; the verifier accepts exactly the tokens
//! signed with the right secret whose `sub` is usable (non-empty, 1..=128 bytes of
//! `[A-Za-z0-9_.@=+-]`, hence no ':'), whose `exp` is at most 5 s in the past and
//! whose `nbf` (if any) is at most 5 s in the future — `iat`, `iss`, `aud`,
//! `servers` and `dms` never change the verdict — and an accepted token yields
//! exactly the claims that were signed. Verdicts within 2 s of a time boundary are
//! not checked (the clock may tick between signing and verifying).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use xcord_common::clock::unix_secs as now_secs;
use xcord_gateway::auth::{sign_hs256, Audience, Claims, Verifier};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::hs256(b"secret", None, None, 5))
}

const SUBS: [&str; 8] = [
    "alice",
    "u_1",
    "",
    "a:b",
    "x y",
    "\u{e9}",
    "user.name@x=+-",
    "*",
];

#[derive(Arbitrary, Debug)]
enum SubIn {
    Known(u8),
    Raw(String),
    /// A run of 'a' (reaches the 128-byte segment limit).
    Long(u8),
}

#[derive(Arbitrary, Debug)]
enum TimeIn {
    /// Seconds from now.
    Rel(i16),
    Abs(u64),
}

#[derive(Arbitrary, Debug)]
enum AudIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    sub: SubIn,
    exp: TimeIn,
    nbf: Option<TimeIn>,
    iat: Option<u64>,
    iss: Option<String>,
    aud: Option<AudIn>,
    servers: Vec<String>,
    dms: Vec<String>,
    wrong_secret: bool,
}

fn usable_sub(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@=+".contains(&b))
}

fn time(t: &TimeIn, now: u64) -> u64 {
    match t {
        TimeIn::Rel(d) => now.saturating_add_signed(*d as i64),
        TimeIn::Abs(a) => *a,
    }
}

fuzz_target!(|input: Input| {
    let now = now_secs();
    let claims = Claims {
        sub: match &input.sub {
            SubIn::Known(i) => SUBS[*i as usize % SUBS.len()].to_owned(),
            SubIn::Raw(s) => s.clone(),
            SubIn::Long(n) => "a".repeat(*n as usize),
        },
        exp: time(&input.exp, now),
        nbf: input.nbf.as_ref().map(|t| time(t, now)),
        iat: input.iat,
        iss: input.iss.clone(),
        aud: input.aud.as_ref().map(|a| match a {
            AudIn::One(s) => Audience::One(s.clone()),
            AudIn::Many(v) => Audience::Many(v.clone()),
        }),
        servers: input.servers.clone(),
        dms: input.dms.clone(),
    };
    let secret: &[u8] = if input.wrong_secret {
        b"not-the-secret"
    } else {
        b"secret"
    };
    let token = sign_hs256(secret, &claims).expect("signing cannot fail");
    let got = verifier().verify(&token);
    let after = now_secs();

    // Skip verdicts that depend on which second verify ran in.
    let near = |t: u64, edge: u64| t.abs_diff(edge) <= 2;
    let exp_edge = now.saturating_sub(5);
    let nbf_edge = now + 5;
    if after != now || near(claims.exp, exp_edge) || claims.nbf.is_some_and(|n| near(n, nbf_edge)) {
        return;
    }
    let want = !input.wrong_secret
        && usable_sub(&claims.sub)
        && claims.exp >= exp_edge
        && claims.nbf.is_none_or(|n| n <= nbf_edge);
    match got {
        Ok(c) => {
            assert!(want, "accepted {claims:?}");
            assert_eq!(c, claims, "claims changed in transit");
        }
        Err(e) => assert!(!want, "refused {claims:?}: {e}"),
    }
});
