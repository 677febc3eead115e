//! HS256 tokens the tool signs itself: `{sub, exp, iat, servers, dms}` (plus `iss`
//! and `aud` when the gateway checks them), as the gateway's verifier expects.

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::plan::ConnPlan;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    servers: &'a [String],
    dms: &'a [String],
}

pub struct TokenMaker {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    ttl_secs: u64,
}

impl TokenMaker {
    pub fn new(
        secret: &str,
        issuer: Option<String>,
        audience: Option<String>,
        ttl_secs: u64,
    ) -> TokenMaker {
        TokenMaker {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer,
            audience,
            ttl_secs,
        }
    }

    pub fn sign(&self, c: &ConnPlan) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: &c.user,
            exp: now + self.ttl_secs,
            iat: now,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
            servers: &c.servers,
            dms: &c.dms,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .context("cannot sign an HS256 token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_three_part_token() {
        let m = TokenMaker::new("s", None, None, 60);
        let c = ConnPlan {
            user: "lt1".into(),
            servers: vec!["lt0".into()],
            dms: vec![],
            subscribe: vec![],
            tracked: vec![],
            typing: vec![],
        };
        let t = m.sign(&c).expect("sign");
        assert_eq!(t.split('.').count(), 3);
    }
}
