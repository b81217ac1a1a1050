//! Verification of who sent a request: the constant-time check of an outgoing webhook's
//! `token`, and Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) on forwarder batches.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, Secret};

/// Compares a received token with the configured one in constant time.
pub fn token_matches(expected: &Secret, received: &str) -> bool {
    let expected = expected.expose().as_bytes();
    let received = received.as_bytes();
    // `ct_eq` on slices of different lengths returns false without comparing; the length of
    // a token is not secret (Zulip's are always 32 characters).
    !expected.is_empty() && bool::from(expected.ct_eq(received))
}

/// The forwarder's signing keys (`forwarder.secrets`, after `secrets_file`), or an error
/// naming the first that cannot be read, as `forwarder.secrets[N]`.
pub fn signing_keys(secrets: &[Secret]) -> Result<Vec<SigningKey>, ConfigError> {
    secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| {
            SigningKey::parse(secret.expose()).map_err(|problem| ConfigError::Invalid {
                key: format!("forwarder.secrets[{i}]"),
                problem: problem.to_string(),
            })
        })
        .collect()
}

/// A Standard Webhooks signing key (`whsec_<base64>`).
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Shortest signing key accepted, in bytes (the message of [`KeyError::TooShort`]).
pub const MIN_KEY_BYTES: usize = 24;

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "is not base64 after the `whsec_` prefix: use a secret as `zulip-listeners gen-secret` prints it"
    )]
    NotBase64,
    #[error(
        "does not start with `whsec_`: a forwarder secret is `whsec_` followed by base64, as `zulip-listeners gen-secret` prints it"
    )]
    NoPrefix,
    #[error("is too short: use at least 24 random bytes (`zulip-listeners gen-secret`)")]
    TooShort,
}

impl SigningKey {
    /// Reads `whsec_<base64>` (the prefix may be left out of a valid key, as in the reference
    /// libraries; a text that is not one is refused as lacking the prefix).
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let secret = secret.trim();
        let Some(encoded) = secret.strip_prefix("whsec_") else {
            // Bare base64 of a long enough key is still read, as the reference libraries do;
            // anything else is most likely a password where a generated secret belongs.
            return match BASE64.decode(secret) {
                Ok(bytes) if bytes.len() >= MIN_KEY_BYTES => Ok(SigningKey(bytes)),
                _ => Err(KeyError::NoPrefix),
            };
        };
        let bytes = BASE64.decode(encoded).map_err(|_| KeyError::NotBase64)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort);
        }
        Ok(SigningKey(bytes))
    }

    /// Makes a new random key, as `whsec_<base64 of 32 bytes>`.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("whsec_{}", BASE64.encode(bytes))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        // A key of any length is valid for HMAC; `new_from_slice` cannot fail here.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of a message: what the webhooks listeners send carry
    /// (`handlers::webhooks`), and what tests and the benchmark's signer send.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }
}

/// Why a signed request was refused. Every variant is answered with 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("header `{0}` is not valid")]
    InvalidHeader(&'static str),
    #[error("timestamp is {0} s away from this server's clock (tolerance {1} s)")]
    OutsideTolerance(i64, i64),
    #[error("no signature matches any configured secret")]
    NoMatch,
}

impl SignatureError {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::MissingHeader(_) => "missing_signature_header",
            SignatureError::InvalidHeader(_) => "invalid_signature_header",
            SignatureError::OutsideTolerance(..) => "stale_timestamp",
            SignatureError::NoMatch => "invalid_signature",
        }
    }
}

/// The three Standard Webhooks headers as received (`None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies a Standard Webhooks request against every configured key, with the current time
/// given (so that tests can fix it). Returns the verified `webhook-id`.
pub fn verify<'a>(
    keys: &[SigningKey],
    headers: SignedHeaders<'a>,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<&'a str, SignatureError> {
    let id = headers
        .id
        .ok_or(SignatureError::MissingHeader("webhook-id"))?;
    let timestamp = headers
        .timestamp
        .ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
    let signatures = headers
        .signature
        .ok_or(SignatureError::MissingHeader("webhook-signature"))?;
    if id.is_empty() || id.len() > 256 || id.contains('.') {
        return Err(SignatureError::InvalidHeader("webhook-id"));
    }
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::InvalidHeader("webhook-timestamp"))?;
    let skew = now_unix.saturating_sub(sent);
    if skew.saturating_abs() > tolerance_secs {
        return Err(SignatureError::OutsideTolerance(skew, tolerance_secs));
    }
    let tags: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter_map(|token| token.strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .collect();
    if tags.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    for key in keys {
        let mac = key.mac(id, timestamp, body);
        for tag in &tags {
            // `verify_slice` compares in constant time.
            if mac.clone().verify_slice(tag).is_ok() {
                return Ok(id);
            }
        }
    }
    Err(SignatureError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published Standard Webhooks test vectors (reference libraries).
    const V1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const V1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const V1_TS: i64 = 1614265330;
    const V1_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const V1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const V2_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const V2_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const V2_TS: i64 = 1649367553;
    const V2_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const V2_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    const V1A_SIG: &str = "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==";

    fn key(s: &str) -> SigningKey {
        SigningKey::parse(s).expect("valid key")
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn signs_the_published_vectors() {
        assert_eq!(key(V1_SECRET).sign(V1_ID, V1_TS, V1_BODY), V1_SIG);
        assert_eq!(key(V2_SECRET).sign(V2_ID, V2_TS, V2_BODY), V2_SIG);
    }

    #[test]
    fn verifies_the_published_vectors() {
        let ts = V1_TS.to_string();
        assert_eq!(
            verify(
                &[key(V1_SECRET)],
                headers(V1_ID, &ts, V1_SIG),
                V1_BODY,
                V1_TS,
                300
            ),
            Ok(V1_ID)
        );
        let ts = V2_TS.to_string();
        assert_eq!(
            verify(
                &[key(V2_SECRET)],
                headers(V2_ID, &ts, V2_SIG),
                V2_BODY,
                V2_TS,
                300
            ),
            Ok(V2_ID)
        );
    }

    #[test]
    fn accepts_any_of_several_signatures_and_keys() {
        let ts = V1_TS.to_string();
        let rotated = format!("{V1A_SIG} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {V1_SIG}");
        let keys = [key(V2_SECRET), key(V1_SECRET)];
        assert_eq!(
            verify(&keys, headers(V1_ID, &ts, &rotated), V1_BODY, V1_TS, 300),
            Ok(V1_ID)
        );
    }

    #[test]
    fn rejects_the_published_negative_cases() {
        let keys = [key(V1_SECRET)];
        let ts = V1_TS.to_string();
        // Only the prefix.
        assert_eq!(
            verify(&keys, headers(V1_ID, &ts, "v1,"), V1_BODY, V1_TS, 300),
            Err(SignatureError::NoMatch)
        );
        // The first eight characters of a valid signature.
        assert_eq!(
            verify(
                &keys,
                headers(V1_ID, &ts, &V1_SIG[..8]),
                V1_BODY,
                V1_TS,
                300
            ),
            Err(SignatureError::NoMatch)
        );
        // Well-formed but wrong signatures.
        let wrong = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        assert_eq!(
            verify(&keys, headers(V1_ID, &ts, wrong), V1_BODY, V1_TS, 300),
            Err(SignatureError::NoMatch)
        );
        // The asymmetric signature alone is not accepted by a symmetric verifier.
        assert_eq!(
            verify(&keys, headers(V1_ID, &ts, V1A_SIG), V1_BODY, V1_TS, 300),
            Err(SignatureError::NoMatch)
        );
        // Timestamps just outside the tolerance, both directions.
        assert!(matches!(
            verify(
                &keys,
                headers(V1_ID, &ts, V1_SIG),
                V1_BODY,
                V1_TS + 301,
                300
            ),
            Err(SignatureError::OutsideTolerance(301, 300))
        ));
        assert!(matches!(
            verify(
                &keys,
                headers(V1_ID, &ts, V1_SIG),
                V1_BODY,
                V1_TS - 301,
                300
            ),
            Err(SignatureError::OutsideTolerance(-301, 300))
        ));
        // Tampered body.
        assert_eq!(
            verify(
                &keys,
                headers(V1_ID, &ts, V1_SIG),
                br#"{"test": 2432232315}"#,
                V1_TS,
                300
            ),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn rejects_missing_headers() {
        let keys = [key(V1_SECRET)];
        let ts = V1_TS.to_string();
        let full = headers(V1_ID, &ts, V1_SIG);
        for (missing, h) in [
            ("webhook-id", SignedHeaders { id: None, ..full }),
            (
                "webhook-timestamp",
                SignedHeaders {
                    timestamp: None,
                    ..full
                },
            ),
            (
                "webhook-signature",
                SignedHeaders {
                    signature: None,
                    ..full
                },
            ),
        ] {
            assert_eq!(
                verify(&keys, h, V1_BODY, V1_TS, 300),
                Err(SignatureError::MissingHeader(missing))
            );
        }
        assert_eq!(
            verify(&keys, headers(V1_ID, "soon", V1_SIG), V1_BODY, V1_TS, 300),
            Err(SignatureError::InvalidHeader("webhook-timestamp"))
        );
    }

    #[test]
    fn keys_must_be_base64_and_long_enough() {
        assert_eq!(
            SigningKey::parse("whsec_!!!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            SigningKey::parse("whsec_AAAA").unwrap_err(),
            KeyError::TooShort
        );
        // A password where a generated secret belongs: the message names the prefix.
        let error = SigningKey::parse("correct horse battery staple").unwrap_err();
        assert_eq!(error, KeyError::NoPrefix);
        assert!(error.to_string().contains("start with `whsec_`"), "{error}");
        assert!(error.to_string().contains("gen-secret"), "{error}");
        let generated = SigningKey::generate();
        assert!(generated.starts_with("whsec_"));
        assert!(SigningKey::parse(&generated).is_ok());
    }

    #[test]
    fn token_comparison() {
        let secret = Secret::new("xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ0");
        assert!(token_matches(&secret, "xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ0"));
        assert!(!token_matches(&secret, "xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ1"));
        assert!(!token_matches(&secret, ""));
        assert!(!token_matches(&Secret::new(""), ""));
    }
}
