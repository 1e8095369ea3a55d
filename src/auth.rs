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
