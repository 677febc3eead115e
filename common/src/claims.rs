//! The JWT claims the gateway reads (SPEC §2, §4), and how a development or test
//! token is signed. The gateway verifies with its own configured key; everything
//! that makes tokens — the `token` subcommand, the console, `xcord-loadtest`, the
//! tests — signs through [`sign_hs256`], so the claim names exist once.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::clock::unix_secs;

/// The claims of a gateway token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Server ids the user belongs to.
    #[serde(default)]
    pub servers: Vec<String>,
    /// DM conversation ids the user is part of.
    #[serde(default)]
    pub dms: Vec<String>,
}

/// The `aud` claim: one string or a list (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Claims {
    /// Claims for `sub` valid for `ttl_secs` from now.
    pub fn new(sub: &str, servers: &[String], dms: &[String], ttl_secs: u64) -> Claims {
        let now = unix_secs();
        Claims {
            sub: sub.to_owned(),
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            iat: Some(now),
            iss: None,
            aud: None,
            servers: servers.to_vec(),
            dms: dms.to_vec(),
        }
    }
}

/// Sign `claims` as an HS256 token with `secret`.
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_three_parts_and_keeps_claim_names() {
        let c = Claims::new("alice", &["s1".into()], &[], 60);
        let t = sign_hs256(b"k", &c).expect("sign");
        assert_eq!(t.split('.').count(), 3);
        let v = serde_json_like(&c);
        for name in ["\"sub\"", "\"exp\"", "\"iat\"", "\"servers\"", "\"dms\""] {
            assert!(v.contains(name), "{name} in {v}");
        }
        assert!(!v.contains("\"aud\""), "absent aud is not serialised");
    }

    fn serde_json_like(c: &Claims) -> String {
        // The token's middle part is the claims' JSON, base64url without padding.
        let t = sign_hs256(b"k", c).expect("sign");
        let mid = t.split('.').nth(1).unwrap_or("");
        String::from_utf8(b64url(mid)).unwrap_or_default()
    }

    fn b64url(s: &str) -> Vec<u8> {
        let val = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => u32::from(c - b'A'),
                b'a'..=b'z' => u32::from(c - b'a') + 26,
                b'0'..=b'9' => u32::from(c - b'0') + 52,
                b'-' => 62,
                _ => 63,
            }
        };
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.bytes() {
            acc = (acc << 6) | val(c);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}
