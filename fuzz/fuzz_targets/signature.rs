//! Standard Webhooks verification: header values, keys and body as an attacker sends them.
//! Input: `keys\nwebhook-id\nwebhook-timestamp\nwebhook-signature\nbody` (keys space-separated).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zulip_listeners::verification::{SignedHeaders, SigningKey, verify};

const TOLERANCE: i64 = 300;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut text = || std::str::from_utf8(parts.next().unwrap_or_default()).ok();
    let (Some(keys), Some(id), Some(timestamp), Some(signature)) = (text(), text(), text(), text())
    else {
        return;
    };
    let body = parts.next().unwrap_or_default();
    let keys: Vec<SigningKey> = keys
        .split(' ')
        .filter_map(|k| SigningKey::parse(k).ok())
        .collect();
    let headers = SignedHeaders {
        id: Some(id),
        timestamp: Some(timestamp),
        signature: Some(signature),
    };
    let sent = timestamp.parse::<i64>().ok();
    // A clock near the sent time (inside and outside the tolerance), and the extremes.
    let near = sent
        .unwrap_or(0)
        .wrapping_add(i64::try_from(body.len() % 700).unwrap_or(0) - 350);
    for now in [near, 0, i64::MIN, i64::MAX] {
        for tolerance in [TOLERANCE, 0, i64::MAX] {
            match verify(&keys, headers, body, now, tolerance) {
                Ok(verified) => assert_eq!(verified, id),
                Err(e) => {
                    assert!(!e.code().is_empty());
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
    // Leaving any header out is refused.
    for partial in [
        SignedHeaders {
            id: None,
            ..headers
        },
        SignedHeaders {
            timestamp: None,
            ..headers
        },
        SignedHeaders {
            signature: None,
            ..headers
        },
    ] {
        assert!(verify(&keys, partial, body, near, TOLERANCE).is_err());
    }
    // What we sign ourselves verifies, for every id the verifier accepts.
    if let (Some(key), Some(sent)) = (keys.first(), sent) {
        let good = key.sign(id, sent, body);
        let signed = SignedHeaders {
            signature: Some(&good),
            ..headers
        };
        let result = verify(&keys, signed, body, sent, TOLERANCE);
        let valid_id = !id.is_empty() && id.len() <= 256 && !id.contains('.');
        if valid_id && timestamp == sent.to_string() {
            assert_eq!(result, Ok(id));
        }
        // The same signature over another body never verifies.
        let mut other = body.to_vec();
        other.push(b'x');
        assert!(verify(&keys, signed, &other, sent, TOLERANCE).is_err());
    }
});
