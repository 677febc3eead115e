//! HS256 tokens the tool signs itself, one per simulated user: the claims and the
//! signing are the workspace's own (`xcord_common::claims`), so they are exactly
//! what the gateway's verifier reads; `iss` and `aud` are set when the gateway
//! checks them.

use anyhow::{anyhow, Result};
use xcord_common::claims::{sign_hs256, Claims};
use xcord_common::Audience;

use crate::plan::ConnPlan;

pub struct TokenMaker {
    secret: Vec<u8>,
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
            secret: secret.as_bytes().to_vec(),
            issuer,
            audience,
            ttl_secs,
        }
    }

    pub fn sign(&self, c: &ConnPlan) -> Result<String> {
        let mut claims = Claims::new(&c.user, &c.servers, &c.dms, self.ttl_secs);
        claims.iss = self.issuer.clone();
        claims.aud = self.audience.clone().map(Audience::One);
        sign_hs256(&self.secret, &claims).map_err(|e| anyhow!("cannot sign an HS256 token: {e}"))
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
