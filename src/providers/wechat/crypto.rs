//! WeChat Pay cryptography: API v3 request signing, response and callback
//! verification, AEAD_AES_256_GCM resource decryption, platform certificates, and
//! the legacy API v2 `sign` (MD5 / HMAC-SHA256) plus refund-notify `req_info`
//! decryption.
//!
//! Everything here is pure: no I/O, no clock, no logging. Callers hand in the
//! exact bytes that were (or will be) on the wire and get back exact bytes, so
//! signing and verification always happen over the raw input — never over
//! re-serialized JSON or XML. Key types keep their material private and print
//! none of it, and no error message ever carries key material.

use std::collections::BTreeMap;
use std::fmt;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rand::Rng as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use sha2::Sha256;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

/// The API v3 signature scheme, used in `Authorization` and
/// `Wechatpay-Signature-Type`.
pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Length of the AES-GCM nonce WeChat uses (12 UTF-8 bytes).
const GCM_NONCE_LEN: usize = 12;
/// Length of the APIv3 key (32 UTF-8 bytes → AES-256).
const API_V3_KEY_LEN: usize = 32;

/// Errors from this module. The `Display` text never includes key material,
/// plaintexts or signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A key or certificate could not be parsed or is unsuitable.
    #[error("bad key: {0}")]
    BadKey(String),
    /// A signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// Authenticated decryption failed (wrong key, nonce, AAD, or tampered data).
    #[error("decryption failed")]
    Decrypt,
    /// Input was not in the expected encoding or format.
    #[error("encoding error: {0}")]
    Encoding(String),
}

// ---------------------------------------------------------------------------
// API v3: merchant signing
// ---------------------------------------------------------------------------

/// The merchant API private key (RSA, 2048–8192 bits) that signs v3 requests.
pub struct MerchantSigner {
    key: KeyPair,
}

impl MerchantSigner {
    /// Loads a PEM private key in PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) form; the PEM label decides which parser runs.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| CryptoError::BadKey("no PKCS#8 or PKCS#1 private key in PEM".into()))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => KeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => KeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(CryptoError::BadKey("not an RSA private key".into())),
        }
        .map_err(|e| CryptoError::BadKey(format!("RSA private key rejected: {e}")))?;
        let signer = Self { key };
        // Sign once at load time so a key that cannot sign is rejected here,
        // not on the first request.
        signer.try_sign_base64(b"payd key self-test")?;
        Ok(signer)
    }

    /// SHA256withRSA (PKCS#1 v1.5) over `message`, base64 (standard, padded).
    ///
    /// Signing cannot fail for a key that passed [`MerchantSigner::from_pem`]
    /// (it signs once as a self-test); should it fail anyway, the result is an
    /// empty string, which WeChat rejects as `SIGN_ERROR`. Use
    /// [`MerchantSigner::try_sign_base64`] to see the error instead.
    pub fn sign_base64(&self, message: &[u8]) -> String {
        self.try_sign_base64(message).unwrap_or_default()
    }

    /// As [`MerchantSigner::sign_base64`], reporting a failure.
    pub fn try_sign_base64(&self, message: &[u8]) -> Result<String, CryptoError> {
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.key
            .sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
            .map_err(|_| CryptoError::BadKey("RSA signing failed".into()))?;
        Ok(B64.encode(sig))
    }
}

impl fmt::Debug for MerchantSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerchantSigner")
            .field("modulus_bits", &(self.key.public_modulus_len() * 8))
            .finish_non_exhaustive()
    }
}

/// The v3 request message: `METHOD\nCANONICAL_URL\nTIMESTAMP\nNONCE\nBODY\n`
/// (the body is empty for GET but the final `\n` stays).
pub fn request_message(
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> String {
    format!("{method}\n{canonical_url}\n{timestamp}\n{nonce}\n{body}\n")
}

/// The full `Authorization` header value for a v3 request, with parameters in
/// the order the wechatpayv3 SDK (and the vectors) use:
/// `WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",timestamp="…",serial_no="…"`.
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    signer: &MerchantSigner,
    mchid: &str,
    serial_no: &str,
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> String {
    let message = request_message(method, canonical_url, timestamp, nonce, body);
    let signature = signer.sign_base64(message.as_bytes());
    format!(
        "{AUTH_SCHEME} mchid=\"{mchid}\",nonce_str=\"{nonce}\",signature=\"{signature}\",\
         timestamp=\"{timestamp}\",serial_no=\"{serial_no}\""
    )
}

/// The parameters of a v3 `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationParts {
    pub mchid: String,
    pub nonce_str: String,
    pub timestamp: String,
    pub serial_no: String,
    pub signature: String,
}

/// Parses a v3 `Authorization` header. Parameters may come in any order (SDKs
/// differ); values must be double-quoted. Rejects a scheme other than
/// `WECHATPAY2-SHA256-RSA2048` (compared case-insensitively, as HTTP auth
/// schemes are), a missing or empty required parameter, and any parameter
/// given twice. Unknown parameters are ignored.
pub fn parse_authorization(header: &str) -> Result<AuthorizationParts, CryptoError> {
    let bad = |what: &str| CryptoError::Encoding(format!("authorization header: {what}"));
    let header = header.trim();
    let (scheme, params) = header
        .split_once([' ', '\t'])
        .ok_or_else(|| bad("missing parameters"))?;
    if !scheme.eq_ignore_ascii_case(AUTH_SCHEME) {
        return Err(bad("unsupported scheme"));
    }

    let mut seen: Vec<&str> = Vec::new();
    let mut mchid = None;
    let mut nonce_str = None;
    let mut timestamp = None;
    let mut serial_no = None;
    let mut signature = None;

    let mut rest = params.trim_start();
    loop {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| bad("parameter without '='"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("empty parameter name"));
        }
        let quoted = after
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| bad("parameter value not double-quoted"))?;
        let (value, after) = quoted
            .split_once('"')
            .ok_or_else(|| bad("unterminated quoted value"))?;
        if seen.contains(&name) {
            return Err(bad("duplicate parameter"));
        }
        seen.push(name);
        let slot = match name {
            "mchid" => Some(&mut mchid),
            "nonce_str" => Some(&mut nonce_str),
            "timestamp" => Some(&mut timestamp),
            "serial_no" => Some(&mut serial_no),
            "signature" => Some(&mut signature),
            _ => None,
        };
        if let Some(slot) = slot {
            *slot = Some(value.to_owned());
        }
        rest = after.trim_start();
        if rest.is_empty() {
            break;
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| bad("expected ',' between parameters"))?
            .trim_start();
    }

    let required = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| bad(&format!("missing {name}")))
    };
    Ok(AuthorizationParts {
        mchid: required(mchid, "mchid")?,
        nonce_str: required(nonce_str, "nonce_str")?,
        timestamp: required(timestamp, "timestamp")?,
        serial_no: required(serial_no, "serial_no")?,
        signature: required(signature, "signature")?,
    })
}

// ---------------------------------------------------------------------------
// API v3: verification
// ---------------------------------------------------------------------------

/// The v3 response/callback message: `TIMESTAMP\nNONCE\nBODY\n` over the raw
/// body bytes.
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// An RSA public key, parsed once, that checks SHA256withRSA (PKCS#1 v1.5)
/// signatures of 2048–8192-bit keys.
#[derive(Clone)]
pub struct RsaVerifier {
    key: ParsedPublicKey,
}

impl RsaVerifier {
    /// Loads a `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo) PEM, or — when the input
    /// has no PEM armour — bare base64 of the DER, whitespace allowed (the way
    /// Alipay hands keys out).
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        if pem.windows(10).any(|w| w == b"-----BEGIN") {
            let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
                .map_err(|_| CryptoError::BadKey("no public key in PEM".into()))?;
            Self::from_spki_der(der.as_ref())
        } else {
            let compact: Vec<u8> = pem
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let der = B64
                .decode(&compact)
                .map_err(|_| CryptoError::BadKey("public key is neither PEM nor base64".into()))?;
            Self::from_spki_der(&der)
        }
    }

    /// Loads a DER SubjectPublicKeyInfo. (aws-lc-rs also accepts a bare PKCS#1
    /// `RSAPublicKey` here.)
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
            .map_err(|e| CryptoError::BadKey(format!("RSA public key rejected: {e}")))?;
        Ok(Self { key })
    }

    /// True only if `signature_b64` (standard base64) is a valid signature of
    /// `message`. Malformed base64 or any verification failure gives false.
    pub fn verify_base64(&self, message: &[u8], signature_b64: &str) -> bool {
        match B64.decode(signature_b64) {
            Ok(sig) => self.key.verify_sig(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

impl fmt::Debug for RsaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaVerifier").finish_non_exhaustive()
    }
}

/// A WeChat Pay platform certificate (certificate mode, §1.5).
#[derive(Debug, Clone)]
pub struct PlatformCertificate {
    /// Serial number as upper-case hex of the integer value — the way the
    /// official SDKs print it (`%X`) and `Wechatpay-Serial` carries it. Compare
    /// with [`serial_eq`].
    pub serial_no: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub verifier: RsaVerifier,
}

impl PlatformCertificate {
    /// Parses a PEM certificate and extracts serial, validity and RSA key. The
    /// certificate's own signature is not checked (WeChat's chain is not
    /// available; trust comes from the APIv3-key-authenticated download).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        let cert = Certificate::from_pem(pem)
            .map_err(|e| CryptoError::BadKey(format!("platform certificate: {e}")))?;
        let tbs = &cert.tbs_certificate;
        let serial_no = serial_hex(tbs.serial_number.as_bytes());
        let unix = |t: x509_cert::time::Time| {
            i64::try_from(t.to_unix_duration().as_secs())
                .map_err(|_| CryptoError::BadKey("certificate validity out of range".into()))
        };
        let not_before_unix = unix(tbs.validity.not_before)?;
        let not_after_unix = unix(tbs.validity.not_after)?;
        let spki = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| CryptoError::BadKey(format!("certificate public key: {e}")))?;
        let verifier = RsaVerifier::from_spki_der(&spki)?;
        Ok(Self {
            serial_no,
            not_before_unix,
            not_after_unix,
            verifier,
        })
    }

    /// Whether `now_unix` lies within the certificate's validity period.
    pub fn is_valid_at(&self, now_unix: i64) -> bool {
        self.not_before_unix <= now_unix && now_unix <= self.not_after_unix
    }
}

/// Upper-case hex of a DER INTEGER's value, without leading zeros.
fn serial_hex(bytes: &[u8]) -> String {
    let hex = hex_upper(bytes);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Compares two hex certificate serials as numbers: case-insensitive, leading
/// zeros ignored. Not constant-time (serials are public).
pub fn serial_eq(a: &str, b: &str) -> bool {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.eq_ignore_ascii_case(b)
}

// ---------------------------------------------------------------------------
// API v3: AEAD_AES_256_GCM
// ---------------------------------------------------------------------------

fn gcm_cipher(api_v3_key: &[u8]) -> Result<Aes256Gcm, CryptoError> {
    if api_v3_key.len() != API_V3_KEY_LEN {
        return Err(CryptoError::BadKey("APIv3 key must be 32 bytes".into()));
    }
    Aes256Gcm::new_from_slice(api_v3_key)
        .map_err(|_| CryptoError::BadKey("APIv3 key must be 32 bytes".into()))
}

/// Decrypts a v3 `resource` / `encrypt_certificate`: AES-256-GCM with the
/// APIv3 key, `nonce` (12 UTF-8 bytes) and `associated_data` (may be empty);
/// `ciphertext_b64` is base64 of ciphertext ‖ 16-byte tag. Any authentication
/// failure — or a nonce that is not 12 bytes — is [`CryptoError::Decrypt`].
pub fn aes_gcm_decrypt(
    api_v3_key: &[u8],
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, CryptoError> {
    let cipher = gcm_cipher(api_v3_key)?;
    if nonce.len() != GCM_NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let data = B64
        .decode(ciphertext_b64)
        .map_err(|_| CryptoError::Encoding("ciphertext is not valid base64".into()))?;
    cipher
        .decrypt(
            GenericArray::from_slice(nonce.as_bytes()),
            Payload {
                msg: &data,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

/// The inverse of [`aes_gcm_decrypt`] (for the sandbox): base64 of
/// ciphertext ‖ tag. Deterministic for a fixed nonce.
pub fn aes_gcm_encrypt(
    api_v3_key: &[u8],
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, CryptoError> {
    let cipher = gcm_cipher(api_v3_key)?;
    if nonce.len() != GCM_NONCE_LEN {
        return Err(CryptoError::Encoding("nonce must be 12 bytes".into()));
    }
    let out = cipher
        .encrypt(
            GenericArray::from_slice(nonce.as_bytes()),
            Payload {
                msg: plaintext,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::Encoding("plaintext too long".into()))?;
    Ok(B64.encode(out))
}

/// 32 random characters from `[0-9A-Za-z]` (thread-local CSPRNG).
pub fn nonce_str() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

// ---------------------------------------------------------------------------
// API v2
// ---------------------------------------------------------------------------

/// The v2 `sign_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V2SignType {
    Md5,
    HmacSha256,
}

impl V2SignType {
    /// `None` (field absent) or `"MD5"` → MD5; `"HMAC-SHA256"` → HMAC-SHA256;
    /// anything else → `None`.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("MD5") => Some(Self::Md5),
            Some("HMAC-SHA256") => Some(Self::HmacSha256),
            Some(_) => None,
        }
    }

    /// The wire name (`MD5` / `HMAC-SHA256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::HmacSha256 => "HMAC-SHA256",
        }
    }
}

/// `k=v&…&key=<api_key>` over the non-empty fields except `sign`, in byte order
/// of the names. Contains the API key: never log it.
fn v2_string_to_sign(params: &BTreeMap<String, String>, api_key: &str) -> String {
    let mut s = String::new();
    for (k, v) in params {
        if k == "sign" || v.is_empty() {
            continue;
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(api_key);
    s
}

/// The v2 `sign`: every non-empty field except `sign`, sorted by name, joined
/// `k=v&…`, then `&key=<api_key>`; MD5 → upper-case hex, or HMAC-SHA256 keyed
/// with the API key → upper-case hex.
pub fn v2_sign(params: &BTreeMap<String, String>, api_key: &str, sign_type: V2SignType) -> String {
    let s = v2_string_to_sign(params, api_key);
    match sign_type {
        V2SignType::Md5 => hex_upper(&Md5::digest(s.as_bytes())),
        V2SignType::HmacSha256 => {
            // HMAC accepts keys of any length, so this never fails; an empty
            // string (which matches no signature) is the fallback regardless.
            let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(api_key.as_bytes()) else {
                return String::new();
            };
            mac.update(s.as_bytes());
            hex_upper(&mac.finalize().into_bytes())
        }
    }
}

/// Checks the v2 `sign` field. The algorithm is `expected` when given (WeChat
/// notifies omit `sign_type` even for HMAC-SHA256 orders), else the one the
/// params' `sign_type` names (absent or empty → MD5; unknown → false). The
/// comparison is constant-time and ignores hex case. Missing `sign` → false.
pub fn v2_verify(
    params: &BTreeMap<String, String>,
    api_key: &str,
    expected: Option<V2SignType>,
) -> bool {
    let Some(given) = params.get("sign") else {
        return false;
    };
    let sign_type = match expected {
        Some(t) => t,
        None => {
            let named = params
                .get("sign_type")
                .map(String::as_str)
                .filter(|s| !s.is_empty());
            match V2SignType::parse(named) {
                Some(t) => t,
                None => return false,
            }
        }
    };
    let computed = v2_sign(params, api_key, sign_type);
    let given = given.to_ascii_uppercase();
    aws_lc_rs::constant_time::verify_slices_are_equal(computed.as_bytes(), given.as_bytes()).is_ok()
}

/// The AES-256-ECB key for v2 `req_info`: lower-case hex MD5 of the API key,
/// used as 32 ASCII bytes.
fn req_info_key(api_key: &str) -> [u8; 32] {
    let digest = Md5::digest(api_key.as_bytes());
    let mut key = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in digest.iter().enumerate() {
        key[2 * i] = HEX[usize::from(b >> 4)];
        key[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    key
}

/// Decrypts a v2 refund notify's `req_info`: base64 → AES-256-ECB with PKCS#7
/// padding, key = lower-case hex MD5 of the API key → UTF-8 XML text. A wrong
/// key shows up as [`CryptoError::Decrypt`] (bad padding or non-UTF-8 output).
pub fn v2_decrypt_req_info(req_info_b64: &str, api_key: &str) -> Result<String, CryptoError> {
    let data = B64
        .decode(req_info_b64.trim())
        .map_err(|_| CryptoError::Encoding("req_info is not valid base64".into()))?;
    let key = req_info_key(api_key);
    let plain = ecb::Decryptor::<aes::Aes256>::new(&key.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&data)
        .map_err(|_| CryptoError::Decrypt)?;
    String::from_utf8(plain).map_err(|_| CryptoError::Decrypt)
}

/// The inverse of [`v2_decrypt_req_info`] (for the sandbox).
pub fn v2_encrypt_req_info(plaintext: &str, api_key: &str) -> String {
    let key = req_info_key(api_key);
    let out = ecb::Encryptor::<aes::Aes256>::new(&key.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes());
    B64.encode(out)
}

fn hex_upper(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const V3: &str = include_str!("../../../tests/fixtures/vectors/wechatpay_v3.json");
    const V2: &str = include_str!("../../../tests/fixtures/vectors/wechatpay_v2.json");
    const MERCHANT_PKCS8: &[u8] =
        include_bytes!("../../../tests/fixtures/vectors/merchant_rsa2048_private_pkcs8.pem");
    const MERCHANT_PKCS1: &[u8] =
        include_bytes!("../../../tests/fixtures/vectors/merchant_rsa2048_private_pkcs1.pem");
    const MERCHANT_PUBLIC: &[u8] =
        include_bytes!("../../../tests/fixtures/vectors/merchant_rsa2048_public.pem");
    const PROVIDER_PKCS8: &[u8] =
        include_bytes!("../../../tests/fixtures/vectors/provider_rsa2048_private_pkcs8.pem");
    const PROVIDER_PKCS1: &[u8] =
        include_bytes!("../../../tests/fixtures/vectors/provider_rsa2048_private_pkcs1.pem");
    const PROVIDER_PUBLIC: &[u8] =
        include_bytes!("../../../tests/fixtures/vectors/provider_rsa2048_public.pem");
    const PLATFORM_CERT: &[u8] =
        include_bytes!("../../../tests/fixtures/vectors/wechatpay_platform_cert.pem");

    fn v3() -> Value {
        serde_json::from_str(V3).unwrap()
    }
    fn v2() -> Value {
        serde_json::from_str(V2).unwrap()
    }
    fn s(v: &Value) -> &str {
        v.as_str().unwrap()
    }
    fn params(v: &Value) -> BTreeMap<String, String> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), s(v).to_owned()))
            .collect()
    }
    fn provider_verifier() -> RsaVerifier {
        RsaVerifier::from_public_key_pem(PROVIDER_PUBLIC).unwrap()
    }
    /// Flips one bit of the decoded bytes and re-encodes (keeps base64 valid).
    fn flip_b64(b64: &str, index: usize) -> String {
        let mut bytes = B64.decode(b64).unwrap();
        let i = index.min(bytes.len() - 1);
        bytes[i] ^= 0x01;
        B64.encode(bytes)
    }
    fn flip_char(text: &str, index: usize) -> String {
        let mut bytes = text.as_bytes().to_vec();
        bytes[index] ^= 0x01;
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn request_signatures_match_vectors() {
        let v = v3();
        let pkcs8 = MerchantSigner::from_pem(MERCHANT_PKCS8).unwrap();
        let pkcs1 = MerchantSigner::from_pem(MERCHANT_PKCS1).unwrap();
        let merchant_pub = RsaVerifier::from_public_key_pem(MERCHANT_PUBLIC).unwrap();
        let mchid = s(&v["mchid"]);
        let serial = s(&v["merchant_serial_no"]);
        let cases = v["request_signatures"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for case in cases {
            let ts: i64 = s(&case["timestamp"]).parse().unwrap();
            let msg = request_message(
                s(&case["method"]),
                s(&case["canonical_url"]),
                ts,
                s(&case["nonce_str"]),
                s(&case["body"]),
            );
            assert_eq!(msg, s(&case["message"]));
            assert_eq!(pkcs8.sign_base64(msg.as_bytes()), s(&case["signature"]));
            assert_eq!(pkcs1.sign_base64(msg.as_bytes()), s(&case["signature"]));
            assert!(merchant_pub.verify_base64(msg.as_bytes(), s(&case["signature"])));
            for signer in [&pkcs8, &pkcs1] {
                let header = authorization(
                    signer,
                    mchid,
                    serial,
                    s(&case["method"]),
                    s(&case["canonical_url"]),
                    ts,
                    s(&case["nonce_str"]),
                    s(&case["body"]),
                );
                assert_eq!(header, s(&case["authorization"]));
            }
            let parts = parse_authorization(s(&case["authorization"])).unwrap();
            assert_eq!(parts.mchid, mchid);
            assert_eq!(parts.serial_no, serial);
            assert_eq!(parts.nonce_str, s(&case["nonce_str"]));
            assert_eq!(parts.timestamp, s(&case["timestamp"]));
            assert_eq!(parts.signature, s(&case["signature"]));
        }
    }

    #[test]
    fn signer_debug_has_no_key_material() {
        let signer = MerchantSigner::from_pem(MERCHANT_PKCS8).unwrap();
        let dbg = format!("{signer:?}");
        assert!(dbg.starts_with("MerchantSigner"), "{dbg}");
        assert!(dbg.len() < 80, "{dbg}");
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<MerchantSigner>();
        assert_send_sync::<RsaVerifier>();
        assert_send_sync::<PlatformCertificate>();
    }

    #[test]
    fn bad_private_keys_are_rejected() {
        assert!(matches!(
            MerchantSigner::from_pem(b"nonsense"),
            Err(CryptoError::BadKey(_))
        ));
        assert!(matches!(
            MerchantSigner::from_pem(MERCHANT_PUBLIC),
            Err(CryptoError::BadKey(_))
        ));
        let broken = String::from_utf8(MERCHANT_PKCS8.to_vec())
            .unwrap()
            .replace("MIIE", "AAAA");
        let err = MerchantSigner::from_pem(broken.as_bytes()).unwrap_err();
        assert!(matches!(err, CryptoError::BadKey(_)));
    }

    #[test]
    fn parse_authorization_any_order_and_rejections() {
        let h = r#"WECHATPAY2-SHA256-RSA2048 serial_no="ABC", signature="c2ln",timestamp="1700000000" ,mchid="1900000001",nonce_str="N""#;
        let p = parse_authorization(h).unwrap();
        assert_eq!(
            p,
            AuthorizationParts {
                mchid: "1900000001".into(),
                nonce_str: "N".into(),
                timestamp: "1700000000".into(),
                serial_no: "ABC".into(),
                signature: "c2ln".into(),
            }
        );
        // Go SDK order (signature last) also parses.
        let go = r#"WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="1",serial_no="s",signature="x""#;
        assert!(parse_authorization(go).is_ok());

        for bad in [
            r#"WECHATPAY2-SHA256-RSA4096 mchid="1",nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"Bearer mchid="1",nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"mchid="1",nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="1",serial_no="s""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="2",nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1" nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="",nonce_str="n",timestamp="1",serial_no="s",signature="x""#,
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1,nonce_str="n""#,
            "WECHATPAY2-SHA256-RSA2048",
            "",
        ] {
            assert!(parse_authorization(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn response_signature_verifies_and_tamper_fails() {
        let v = v3();
        let r = &v["response_signature"];
        let h = &r["headers"];
        let ts = s(&h["Wechatpay-Timestamp"]);
        let nonce = s(&h["Wechatpay-Nonce"]);
        let sig = s(&h["Wechatpay-Signature"]);
        let body = s(&r["body"]);
        let msg = response_message(ts, nonce, body.as_bytes());
        assert_eq!(msg, s(&r["message"]).as_bytes());
        assert_eq!(s(&h["Wechatpay-Signature-Type"]), AUTH_SCHEME);

        let verifier = provider_verifier();
        assert!(verifier.verify_base64(&msg, sig));

        let bad_body = flip_char(body, 5);
        assert!(!verifier.verify_base64(&response_message(ts, nonce, bad_body.as_bytes()), sig));
        let bad_ts = flip_char(ts, 9);
        assert!(!verifier.verify_base64(&response_message(&bad_ts, nonce, body.as_bytes()), sig));
        assert!(!verifier.verify_base64(&msg, &flip_b64(sig, 100)));
        assert!(!verifier.verify_base64(&msg, &flip_b64(sig, 0)));
        // Malformed signatures are simply false.
        assert!(!verifier.verify_base64(&msg, "not base64!"));
        assert!(!verifier.verify_base64(&msg, ""));
        assert!(!verifier.verify_base64(&msg, &sig[..sig.len() - 4]));
        // The merchant key does not verify a provider signature.
        let merchant = RsaVerifier::from_public_key_pem(MERCHANT_PUBLIC).unwrap();
        assert!(!merchant.verify_base64(&msg, sig));
    }

    #[test]
    fn public_key_forms() {
        // Bare base64 of the SPKI DER, as Alipay hands keys out (with and
        // without line breaks).
        let pem = std::str::from_utf8(PROVIDER_PUBLIC).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let bare = RsaVerifier::from_public_key_pem(body.as_bytes()).unwrap();
        let wrapped: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n");
        let wrapped = RsaVerifier::from_public_key_pem(wrapped.as_bytes()).unwrap();
        let signer = MerchantSigner::from_pem(PROVIDER_PKCS1).unwrap();
        let sig = signer.sign_base64(b"hello");
        assert!(bare.verify_base64(b"hello", &sig));
        assert!(wrapped.verify_base64(b"hello", &sig));
        let der = B64.decode(&body).unwrap();
        assert!(
            RsaVerifier::from_spki_der(&der)
                .unwrap()
                .verify_base64(b"hello", &sig)
        );

        assert!(matches!(
            RsaVerifier::from_public_key_pem(b"@@@"),
            Err(CryptoError::BadKey(_))
        ));
        assert!(matches!(
            RsaVerifier::from_spki_der(b"\x30\x03\x02\x01\x01"),
            Err(CryptoError::BadKey(_))
        ));
        assert!(RsaVerifier::from_public_key_pem(MERCHANT_PKCS8).is_err());
    }

    fn check_notification(n: &Value, expected_aad: &str) {
        let h = &n["headers"];
        let body = s(&n["body"]);
        let msg = response_message(
            s(&h["Wechatpay-Timestamp"]),
            s(&h["Wechatpay-Nonce"]),
            body.as_bytes(),
        );
        assert_eq!(msg, s(&n["signed_message"]).as_bytes());
        let verifier = provider_verifier();
        assert!(verifier.verify_base64(&msg, s(&h["Wechatpay-Signature"])));
        let tampered_body = body.replace("\"id\":\"EV-", "\"id\":\"EW-");
        assert_ne!(tampered_body, body);
        let tampered = response_message(
            s(&h["Wechatpay-Timestamp"]),
            s(&h["Wechatpay-Nonce"]),
            tampered_body.as_bytes(),
        );
        assert!(!verifier.verify_base64(&tampered, s(&h["Wechatpay-Signature"])));

        // The envelope's resource carries the same AEAD parameters.
        let envelope: Value = serde_json::from_str(body).unwrap();
        let res = &envelope["resource"];
        let g = &n["aes_256_gcm"];
        let key = s(&g["key_utf8"]).as_bytes();
        let nonce = s(&g["nonce_utf8"]);
        let aad = s(&g["associated_data_utf8"]);
        let ct = s(&g["ciphertext_b64_is_ct_plus_16_byte_tag"]);
        assert_eq!(aad, expected_aad);
        assert_eq!(s(&res["ciphertext"]), ct);
        assert_eq!(s(&res["nonce"]), nonce);
        assert_eq!(s(&res["associated_data"]), aad);
        assert_eq!(s(&res["algorithm"]), "AEAD_AES_256_GCM");
        assert_eq!(key, s(&v3()["apiv3_key"]).as_bytes());

        let plain = aes_gcm_decrypt(key, nonce, aad, ct).unwrap();
        assert_eq!(plain, s(&g["plaintext"]).as_bytes());
        assert_eq!(aes_gcm_encrypt(key, nonce, aad, &plain).unwrap(), ct);

        // Tampering: ciphertext, tag, nonce, AAD, key.
        let ct_len = B64.decode(ct).unwrap().len();
        assert_eq!(
            aes_gcm_decrypt(key, nonce, aad, &flip_b64(ct, 3)),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            aes_gcm_decrypt(key, nonce, aad, &flip_b64(ct, ct_len - 1)),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            aes_gcm_decrypt(key, &flip_char(nonce, 0), aad, ct),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            aes_gcm_decrypt(key, &nonce[..11], aad, ct),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            aes_gcm_decrypt(key, nonce, &flip_char(aad, 0), ct),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            aes_gcm_decrypt(key, nonce, "", ct),
            Err(CryptoError::Decrypt)
        );
        let mut wrong_key = key.to_vec();
        wrong_key[0] ^= 1;
        assert_eq!(
            aes_gcm_decrypt(&wrong_key, nonce, aad, ct),
            Err(CryptoError::Decrypt)
        );
        // Truncated below the tag size.
        assert_eq!(
            aes_gcm_decrypt(key, nonce, aad, "AAAA"),
            Err(CryptoError::Decrypt)
        );
        assert!(matches!(
            aes_gcm_decrypt(&key[..16], nonce, aad, ct),
            Err(CryptoError::BadKey(_))
        ));
        assert!(matches!(
            aes_gcm_decrypt(key, nonce, aad, "%%%"),
            Err(CryptoError::Encoding(_))
        ));
    }

    #[test]
    fn payment_notification() {
        check_notification(&v3()["payment_notification"], "transaction");
    }

    #[test]
    fn refund_notification() {
        check_notification(&v3()["refund_notification"], "refund");
    }

    #[test]
    fn gcm_empty_aad_round_trip() {
        let key = b"0123456789abcdef0123456789ABCDEF";
        let ct = aes_gcm_encrypt(key, "abcdefghijkl", "", b"{}").unwrap();
        assert_eq!(
            aes_gcm_decrypt(key, "abcdefghijkl", "", &ct).unwrap(),
            b"{}"
        );
        assert!(aes_gcm_encrypt(key, "short", "", b"{}").is_err());
    }

    #[test]
    fn platform_certificate_mode() {
        let v = v3();
        let p = &v["platform_certificate_mode"];
        let entry = &p["response_body"]["data"][0];
        let enc = &entry["encrypt_certificate"];
        assert_eq!(s(&enc["algorithm"]), "AEAD_AES_256_GCM");
        let pem = aes_gcm_decrypt(
            s(&v["apiv3_key"]).as_bytes(),
            s(&enc["nonce"]),
            s(&enc["associated_data"]),
            s(&enc["ciphertext"]),
        )
        .unwrap();
        assert_eq!(pem, PLATFORM_CERT);

        let cert = PlatformCertificate::from_pem(&pem).unwrap();
        assert_eq!(cert.serial_no, "6F2A8D4C1B3E5A7F9081726354ABCDEF12345678");
        assert!(serial_eq(&cert.serial_no, s(&p["serial_no"])));
        assert!(serial_eq(&cert.serial_no, s(&entry["serial_no"])));
        assert!(serial_eq(
            &cert.serial_no,
            "6f2a8d4c1b3e5a7f9081726354abcdef12345678"
        ));
        assert!(!serial_eq(
            &cert.serial_no,
            "6F2A8D4C1B3E5A7F9081726354ABCDEF12345679"
        ));
        // effective_time / expire_time of the listing: 2024-01-01T00:00:00Z and
        // 2034-01-01T00:00:00Z.
        assert_eq!(cert.not_before_unix, 1_704_067_200);
        assert_eq!(cert.not_after_unix, 2_019_686_400);
        assert!(cert.is_valid_at(1_704_067_200));
        assert!(!cert.is_valid_at(1_700_000_000));

        let signer = MerchantSigner::from_pem(PROVIDER_PKCS8).unwrap();
        let sig = signer.sign_base64(b"1700000000\nnonce\n{}\n");
        assert!(
            cert.verifier
                .verify_base64(b"1700000000\nnonce\n{}\n", &sig)
        );
        assert!(
            !cert
                .verifier
                .verify_base64(b"1700000000\nnonce\n{ }\n", &sig)
        );
        // The response signature of the vectors verifies with the cert's key too.
        let r = &v["response_signature"];
        let msg = s(&r["message"]).as_bytes();
        assert!(
            cert.verifier
                .verify_base64(msg, s(&r["headers"]["Wechatpay-Signature"]))
        );

        assert!(
            PlatformCertificate::from_pem(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
        assert!(PlatformCertificate::from_pem(PROVIDER_PUBLIC).is_err());
    }

    #[test]
    fn serial_formatting() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8F01");
        assert_eq!(serial_hex(&[0x0a, 0xbc]), "ABC");
        assert_eq!(serial_hex(&[0x00]), "0");
        assert!(serial_eq("0ABC", "abc"));
    }

    #[test]
    fn nonce_str_shape() {
        let a = nonce_str();
        let b = nonce_str();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn v2_official_doc_example() {
        let v = v2();
        let ex = &v["official_doc_example"];
        let p = params(&ex["params"]);
        let key = s(&ex["api_key"]);
        assert_eq!(v2_string_to_sign(&p, key), s(&ex["stringSignTemp"]));
        assert!(s(&ex["stringSignTemp"]).starts_with(s(&ex["stringA"])));
        assert_eq!(v2_sign(&p, key, V2SignType::Md5), s(&ex["sign_md5"]));
        assert_eq!(
            v2_sign(&p, key, V2SignType::HmacSha256),
            s(&ex["sign_hmac_sha256"])
        );

        // Empty fields and `sign` are excluded.
        let mut with_extra = p.clone();
        with_extra.insert("attach".into(), String::new());
        with_extra.insert("sign".into(), "whatever".into());
        assert_eq!(
            v2_sign(&with_extra, key, V2SignType::Md5),
            s(&ex["sign_md5"])
        );

        let mut signed = p.clone();
        signed.insert("sign".into(), s(&ex["sign_md5"]).into());
        assert!(v2_verify(&signed, key, None));
        assert!(v2_verify(&signed, key, Some(V2SignType::Md5)));
        assert!(!v2_verify(&signed, key, Some(V2SignType::HmacSha256)));
        assert!(!v2_verify(&signed, "wrong", None));
        // Lower-case hex is accepted.
        signed.insert("sign".into(), s(&ex["sign_md5"]).to_ascii_lowercase());
        assert!(v2_verify(&signed, key, None));
        // An unknown sign_type fails unless the caller says what to expect.
        signed.insert("sign_type".into(), "SHA1".into());
        assert!(!v2_verify(&signed, key, None));
        signed.remove("sign");
        assert!(!v2_verify(&signed, key, Some(V2SignType::Md5)));
    }

    #[test]
    fn v2_unifiedorder_request_sign() {
        let v = v2();
        let uo = &v["unifiedorder_native_request"];
        let p = params(&uo["params"]);
        let key = s(&uo["api_key"]);
        assert_eq!(v2_string_to_sign(&p, key), s(&uo["stringSignTemp"]));
        let sign_type = V2SignType::parse(p.get("sign_type").map(String::as_str)).unwrap();
        assert_eq!(sign_type, V2SignType::HmacSha256);
        assert_eq!(v2_sign(&p, key, sign_type), s(&uo["sign"]));
        let mut signed = p.clone();
        signed.insert("sign".into(), s(&uo["sign"]).into());
        assert!(v2_verify(&signed, key, None));
        assert!(!v2_verify(&signed, key, Some(V2SignType::Md5)));
    }

    #[test]
    fn v2_payment_notify_sign() {
        let v = v2();
        let n = &v["payment_notify"];
        let key = s(&n["api_key"]);
        let p = super::super::xml::parse_xml(s(&n["xml"]).as_bytes()).unwrap();
        assert_eq!(p.get("sign").map(String::as_str), Some(s(&n["sign"])));
        assert_eq!(v2_string_to_sign(&p, key), s(&n["stringSignTemp"]));
        assert_eq!(
            V2SignType::parse(Some(s(&n["sign_type"]))),
            Some(V2SignType::Md5)
        );
        assert_eq!(v2_sign(&p, key, V2SignType::Md5), s(&n["sign"]));
        assert!(v2_verify(&p, key, None));
        assert!(v2_verify(&p, key, Some(V2SignType::Md5)));
        let mut changed = p.clone();
        changed.insert("total_fee".into(), "1".into());
        assert!(!v2_verify(&changed, key, None));
    }

    #[test]
    fn v2_sign_type_names() {
        assert_eq!(V2SignType::parse(None), Some(V2SignType::Md5));
        assert_eq!(V2SignType::parse(Some("MD5")), Some(V2SignType::Md5));
        assert_eq!(
            V2SignType::parse(Some("HMAC-SHA256")),
            Some(V2SignType::HmacSha256)
        );
        assert_eq!(V2SignType::parse(Some("md5")), None);
        assert_eq!(V2SignType::parse(Some("")), None);
        for t in [V2SignType::Md5, V2SignType::HmacSha256] {
            assert_eq!(V2SignType::parse(Some(t.as_str())), Some(t));
        }
    }

    #[test]
    fn v2_req_info_round_trip() {
        let key = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6";
        let xml = "<root><out_refund_no><![CDATA[REFUND20240001]]></out_refund_no>\
                   <refund_status><![CDATA[SUCCESS]]></refund_status><note>退款</note></root>";
        let enc = v2_encrypt_req_info(xml, key);
        assert_eq!(B64.decode(&enc).unwrap().len() % 16, 0);
        assert_eq!(v2_decrypt_req_info(&enc, key).unwrap(), xml);
        assert_eq!(
            v2_decrypt_req_info(&enc, "192006250b4c09247ec02edce69f6a2d"),
            Err(CryptoError::Decrypt)
        );
        assert!(matches!(
            v2_decrypt_req_info("%%%", key),
            Err(CryptoError::Encoding(_))
        ));
        // Not a whole number of blocks.
        assert_eq!(
            v2_decrypt_req_info(&B64.encode([1u8; 20]), key),
            Err(CryptoError::Decrypt)
        );
        // Key derivation: lower-case hex MD5 of the API key.
        assert_eq!(
            &req_info_key("192006250b4c09247ec02edce69f6a2d"),
            hex_upper(&Md5::digest(b"192006250b4c09247ec02edce69f6a2d"))
                .to_ascii_lowercase()
                .as_bytes()
        );
        // Empty plaintext is one full padding block.
        let empty = v2_encrypt_req_info("", key);
        assert_eq!(B64.decode(&empty).unwrap().len(), 16);
        assert_eq!(v2_decrypt_req_info(&empty, key).unwrap(), "");
    }

    #[test]
    fn errors_do_not_leak() {
        let e = CryptoError::BadKey("x".into());
        assert_eq!(e.to_string(), "bad key: x");
        // A PEM with a mangled line must not echo the line back.
        let mangled = String::from_utf8(MERCHANT_PKCS8.to_vec())
            .unwrap()
            .replace("-----END PRIVATE KEY-----", "");
        if let Err(e) = MerchantSigner::from_pem(mangled.as_bytes()) {
            let text = format!("{e} {e:?}");
            assert!(!text.contains("MIIE"), "{text}");
        }
    }
}
