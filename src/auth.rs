//! JWT authentication: HS256 only, `exp` required, a small explicit leeway, optional
//! `iss`/`aud` checks. Minting is here too, for `payd token` and the demo sign-in.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(&'static str),
}

pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Jwt {
    pub fn new(cfg: &AuthConfig) -> Jwt {
        let secret = cfg.jwt_secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
            validation.validate_aud = true;
        }
        Jwt {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if data.claims.sub.is_empty() => Err(AuthError::Invalid("empty subject")),
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::Invalid("only HS256 is accepted")
                }
                ErrorKind::MissingRequiredClaim(_) => {
                    AuthError::Invalid("missing a required claim")
                }
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
                _ => AuthError::Invalid("malformed token"),
            }),
        }
    }

    /// Mints a token for `user_id`, valid for `ttl_secs` from `now_secs`.
    pub fn mint(&self, user_id: &str, admin: bool, now_secs: u64, ttl_secs: u64) -> String {
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now_secs + ttl_secs,
            role: admin.then(|| "admin".to_string()),
            iat: Some(now_secs),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::config::Secret;

    const SECRET: &str = "a-test-secret-of-32-bytes-length";

    fn jwt(issuer: Option<&str>, audience: Option<&str>) -> Jwt {
        Jwt::new(&AuthConfig {
            jwt_secret: Secret::new(SECRET),
            leeway: Duration::from_secs(5),
            issuer: issuer.map(str::to_string),
            audience: audience.map(str::to_string),
        })
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(alg: Algorithm, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_with_its_role() {
        let j = jwt(None, None);
        let claims = j.verify(&j.mint("alice", true, now(), 60)).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.role.as_deref()),
            ("alice", Some("admin"))
        );
    }

    #[test]
    fn expiry_is_required_and_enforced_with_a_small_leeway() {
        let j = jwt(None, None);
        let t = now();
        // Expired 3 s ago: within the 5 s leeway.
        let claims = j.verify(&j.mint("a", false, t - 63, 60)).unwrap();
        assert_eq!(claims.exp, t - 3);
        assert_eq!(
            j.verify(&j.mint("a", false, t - 100, 60)),
            Err(AuthError::Expired)
        );
        let no_exp = sign(Algorithm::HS256, &serde_json::json!({"sub": "a"}));
        assert!(matches!(j.verify(&no_exp), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn only_hs256_with_our_secret_is_accepted() {
        let j = jwt(None, None);
        let claims = serde_json::json!({"sub": "a", "exp": now() + 60});
        assert_eq!(
            j.verify(&sign(Algorithm::HS512, &claims)),
            Err(AuthError::Invalid("only HS256 is accepted"))
        );
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert!(
            j.verify(&format!("{header}.{payload}.")).is_err(),
            "alg none"
        );
        let other = Jwt::new(&AuthConfig {
            jwt_secret: Secret::new("another-secret-entirely-0123456"),
            leeway: Duration::from_secs(5),
            issuer: None,
            audience: None,
        });
        assert_eq!(
            j.verify(&other.mint("a", true, now(), 60)),
            Err(AuthError::Invalid("bad signature"))
        );
        let empty = sign(
            Algorithm::HS256,
            &serde_json::json!({"sub": "", "exp": now() + 60}),
        );
        assert_eq!(j.verify(&empty), Err(AuthError::Invalid("empty subject")));
    }

    #[test]
    fn issuer_and_audience_are_checked_only_when_configured() {
        let strict = jwt(Some("https://shop.example"), Some("payd"));
        let claims = |iss: &str, aud: &str| serde_json::json!({"sub": "a", "exp": now() + 60, "iss": iss, "aud": aud});
        let good = sign(Algorithm::HS256, &claims("https://shop.example", "payd"));
        assert!(strict.verify(&good).is_ok());
        assert_eq!(
            strict.verify(&sign(
                Algorithm::HS256,
                &claims("https://evil.example", "payd")
            )),
            Err(AuthError::Invalid("wrong issuer"))
        );
        assert_eq!(
            strict.verify(&sign(
                Algorithm::HS256,
                &claims("https://shop.example", "other")
            )),
            Err(AuthError::Invalid("wrong audience"))
        );
        let relaxed = jwt(None, None);
        assert!(
            relaxed
                .verify(&sign(Algorithm::HS256, &claims("x", "y")))
                .is_ok()
        );
        // Minting carries the configured issuer and audience.
        assert!(strict.verify(&strict.mint("a", false, now(), 60)).is_ok());
    }
}
