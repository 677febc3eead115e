//! JWT authentication (SPEC §2, §4).
//!
//! The algorithm is fixed by the configuration — HS256 with `--jwt-secret`, or the
//! one the `--jwt-public-key` PEM implies (RSA → RS256, P-256 → ES256, Ed25519 →
//! EdDSA) — so a token cannot choose its own (`none`, or HS256 signed with a public
//! key, are refused). `exp` is required; `exp`/`nbf` get `--jwt-leeway-seconds`;
//! `iss`/`aud` are checked only when configured, and a token carrying `aud` is
//! accepted when no audience is configured.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The claims the gateway reads.
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

/// A configured token verifier.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(
        secret: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: u64,
    ) -> Verifier {
        Self::build(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            issuer,
            audience,
            leeway,
        )
    }

    /// From a PEM public key; the key type fixes the algorithm.
    pub fn from_pem(
        pem: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: u64,
    ) -> Result<Verifier, String> {
        let (key, alg) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (k, Algorithm::RS256)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (k, Algorithm::ES256)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (k, Algorithm::EdDSA)
        } else {
            return Err("the public key is not an RSA, EC (P-256) or Ed25519 PEM".into());
        };
        Ok(Self::build(key, alg, issuer, audience, leeway))
    }

    fn build(
        key: DecodingKey,
        alg: Algorithm,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: u64,
    ) -> Verifier {
        let mut v = Validation::new(alg);
        v.leeway = leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        match audience {
            Some(a) => {
                v.set_audience(&[a]);
                required.insert("aud".to_owned());
            }
            // SPEC §2: without a configured audience the claim is not checked.
            None => v.validate_aud = false,
        }
        if let Some(i) = issuer {
            v.set_issuer(&[i]);
            required.insert("iss".to_owned());
        }
        v.required_spec_claims = required;
        Verifier { key, validation: v }
    }

    /// Verify a token; the error is a short reason for logs (the client only sees 4004/401).
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| e.to_string())?;
        if data.claims.sub.is_empty()
            || !crate::channels::name::valid_channel(&data.claims.sub)
            || data.claims.sub.contains(':')
        {
            return Err("sub is not a usable user id".into());
        }
        Ok(data.claims)
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value; the scheme is
/// case-insensitive (RFC 7235 §2.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sign an HS256 token (the `token` subcommand, tests and the load tester).
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// Claims for a user valid for `ttl_secs` from now.
pub fn claims_for(sub: &str, servers: &[String], dms: &[String], ttl_secs: u64) -> Claims {
    let now = now_secs();
    Claims {
        sub: sub.to_owned(),
        exp: now + ttl_secs,
        nbf: None,
        iat: Some(now),
        iss: None,
        aud: None,
        servers: servers.to_vec(),
        dms: dms.to_vec(),
    }
}

#[cfg(test)]
mod bearer_tests {
    use super::bearer_token;

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_required() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_and_refuses_bad() {
        let v = Verifier::hs256(b"s3cret", None, None, 5);
        let mut c = claims_for("alice", &["s1".into()], &[], 60);
        let t = sign_hs256(b"s3cret", &c).unwrap();
        assert_eq!(v.verify(&t).unwrap().servers, vec!["s1".to_string()]);
        assert!(v.verify(&sign_hs256(b"other", &c).unwrap()).is_err());
        c.exp = now_secs() - 100;
        assert!(
            v.verify(&sign_hs256(b"s3cret", &c).unwrap()).is_err(),
            "expired"
        );
        let mut c = claims_for("alice", &[], &[], 60);
        c.nbf = Some(now_secs() + 100);
        assert!(
            v.verify(&sign_hs256(b"s3cret", &c).unwrap()).is_err(),
            "not yet valid"
        );
        assert!(v.verify("garbage").is_err());
    }

    #[test]
    fn audience_only_checked_when_configured() {
        let mut c = claims_for("bob", &[], &[], 60);
        c.aud = Some(Audience::One("web".into()));
        let t = sign_hs256(b"k", &c).unwrap();
        assert!(Verifier::hs256(b"k", None, None, 5).verify(&t).is_ok());
        assert!(Verifier::hs256(b"k", None, Some("web"), 5)
            .verify(&t)
            .is_ok());
        assert!(Verifier::hs256(b"k", None, Some("app"), 5)
            .verify(&t)
            .is_err());
        let no_aud = sign_hs256(b"k", &claims_for("bob", &[], &[], 60)).unwrap();
        assert!(Verifier::hs256(b"k", None, Some("web"), 5)
            .verify(&no_aud)
            .is_err());
        let mut c = claims_for("bob", &[], &[], 60);
        assert!(Verifier::hs256(b"k", Some("xcord"), None, 5)
            .verify(&sign_hs256(b"k", &c).unwrap())
            .is_err());
        c.iss = Some("xcord".into());
        assert!(Verifier::hs256(b"k", Some("xcord"), None, 5)
            .verify(&sign_hs256(b"k", &c).unwrap())
            .is_ok());
        assert!(Verifier::hs256(b"k", Some("other"), None, 5)
            .verify(&sign_hs256(b"k", &c).unwrap())
            .is_err());
    }

    #[test]
    fn alg_none_refused() {
        // {"alg":"none"} . {"sub":"x","exp":9999999999} . (no signature)
        let t = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(Verifier::hs256(b"k", None, None, 5).verify(t).is_err());
    }
}
