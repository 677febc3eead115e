//! JWT authentication (SPEC §2, §4).
//!
//! The algorithm is fixed by the configuration — HS256 with `--jwt-secret`, or the
//! one the `--jwt-public-key` PEM implies (RSA → RS256, P-256 → ES256, Ed25519 →
//! EdDSA) — so a token cannot choose its own (`none`, or HS256 signed with a public
//! key, are refused). `exp` is required; `exp`/`nbf` get `--jwt-leeway-seconds`;
//! `iss`/`aud` are checked only when configured, and a token carrying `aud` is
//! accepted when no audience is configured.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashSet;

use crate::config::JwtConfig;

pub use xcord_common::claims::{sign_hs256, Audience, Claims};

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
    /// The verifier the configuration names: HS256 with `--jwt-secret`, or the key
    /// of `--jwt-public-key`.
    pub fn from_config(jwt: &JwtConfig) -> Result<Verifier, String> {
        let (issuer, audience) = (jwt.issuer.as_deref(), jwt.audience.as_deref());
        match (&jwt.secret, &jwt.public_key) {
            (Some(s), _) => Ok(Verifier::hs256(
                s.as_bytes(),
                issuer,
                audience,
                jwt.leeway_secs,
            )),
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --jwt-public-key {}: {e}", path.display()))?;
                Verifier::from_pem(&pem, issuer, audience, jwt.leeway_secs)
            }
            (None, None) => Err("one of --jwt-secret or --jwt-public-key is required".into()),
        }
    }

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
            || !xcord_common::channels::valid_channel(&data.claims.sub)
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
    use xcord_common::clock::unix_secs as now_secs;

    fn claims_for(sub: &str, servers: &[String], dms: &[String], ttl: u64) -> Claims {
        Claims::new(sub, servers, dms, ttl)
    }

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
