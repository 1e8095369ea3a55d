//! JWT authentication: HS256 only, `exp` required, a small explicit leeway, optional
//! `iss`/`aud` checks. Minting is here too, for `payd token` and the demo sign-in.

use std::collections::HashMap;
use std::sync::Mutex;

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
    leeway: u64,
    /// Tokens that passed every check, with their claims. A client sends the same
    /// token with each request until it expires; checking its HMAC and parsing its
    /// JSON again was a tenth of a request's CPU. Only `exp` can change its verdict
    /// (the key, algorithm, issuer and audience are fixed for the process), so a hit
    /// checks `exp` again and nothing else. Bounded by [`VERIFIED_CAP`].
    verified: Mutex<HashMap<String, Claims>>,
}

/// At most this many remembered tokens (about 3 MB); when full, the memory starts
/// over. Only validly signed tokens get in, so a flood of forgeries cannot evict.
const VERIFIED_CAP: usize = 10_000;

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
            leeway: cfg.leeway.as_secs(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(verdict) = self.remembered(token, now) {
            return verdict;
        }
        let claims = self.verify_fully(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CAP {
            verified.clear();
        }
        verified.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    /// The verdict on a token verified before, as of `now` (seconds): its claims, or
    /// `Expired` once `exp` (plus the leeway) has passed. `None`: not seen before.
    fn remembered(&self, token: &str, now: u64) -> Option<Result<Claims, AuthError>> {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let claims = verified.get(token)?;
        if claims.exp.saturating_add(self.leeway) < now {
            verified.remove(token);
            return Some(Err(AuthError::Expired));
        }
        Some(Ok(claims.clone()))
    }

    fn verify_fully(&self, token: &str) -> Result<Claims, AuthError> {
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

    #[test]
    fn a_remembered_token_still_expires_and_a_forgery_is_never_remembered() {
        let j = jwt(None, None);
        let t = now();
        let token = j.mint("a", false, t, 60);
        assert!(j.verify(&token).is_ok());
        // The second verdict comes from memory: the same claims now…
        assert_eq!(j.remembered(&token, t).unwrap().unwrap().sub, "a");
        // …within the leeway after `exp`, and expired past it.
        assert!(j.remembered(&token, t + 64).unwrap().is_ok());
        assert_eq!(j.remembered(&token, t + 66), Some(Err(AuthError::Expired)));
        // Once expired it is forgotten, and a full check says expired too.
        assert!(j.remembered(&token, t).is_none());
        // A token signed with another key is refused every time and never remembered.
        let other = Jwt::new(&AuthConfig {
            jwt_secret: Secret::new("another-secret-of-32-bytes-length"),
            leeway: Duration::from_secs(5),
            issuer: None,
            audience: None,
        });
        let forged = other.mint("a", true, t, 60);
        for _ in 0..2 {
            assert_eq!(j.verify(&forged), Err(AuthError::Invalid("bad signature")));
        }
        assert!(j.remembered(&forged, t).is_none());
    }
}
