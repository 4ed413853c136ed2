//! Webhook signatures, checked on the raw body before anything is parsed or stored.
//! Comparisons are constant-time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature")]
    Missing,
    #[error("malformed signature header")]
    Malformed,
    #[error("timestamp outside the tolerance")]
    Expired,
    #[error("no signature matches")]
    Mismatch,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// Stripe's scheme: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, each v1 an
/// HMAC-SHA256 of `"{t}.{raw body}"` under an endpoint secret. Any v1 matching any
/// of `secrets` (several during a rotation) passes; other schemes are ignored; a
/// timestamp older than `tolerance_secs` fails (as in Stripe's own libraries, a
/// timestamp ahead of our clock does not).
pub fn verify_stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" => timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => {
                if let Ok(sig) = hex::decode(v) {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // Saturating: `t` is the sender's, and any i64 parses.
    if now.saturating_sub(timestamp) > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    for secret in secrets {
        let mut signed = mac(secret.as_bytes());
        signed.update(timestamp.to_string().as_bytes());
        signed.update(b".");
        signed.update(body);
        for sig in &signatures {
            if signed.clone().verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// The watcher-sync scheme: `x-hmac-sha256: <hex HMAC-SHA256 of the raw body>`.
pub fn verify_hex_hmac(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let sig = hex::decode(header.trim()).map_err(|_| SignatureError::Mismatch)?;
    let mut signed = mac(secret.as_bytes());
    signed.update(body);
    signed
        .verify_slice(&sig)
        .map_err(|_| SignatureError::Mismatch)
}

/// `t=...,v1=...` for `body` (tests and local tools sign with this).
pub fn stripe_header(secret: &str, body: &[u8], timestamp: i64) -> String {
    format!("t={timestamp},v1={}", stripe_v1(secret, body, timestamp))
}

pub fn stripe_v1(secret: &str, body: &[u8], timestamp: i64) -> String {
    let mut signed = mac(secret.as_bytes());
    signed.update(timestamp.to_string().as_bytes());
    signed.update(b".");
    signed.update(body);
    hex::encode(signed.finalize().into_bytes())
}

pub fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let mut signed = mac(secret.as_bytes());
    signed.update(body);
    hex::encode(signed.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    const NOW: i64 = 1_790_000_000;

    #[test]
    fn a_valid_stripe_signature_passes() {
        let header = stripe_header("whsec_a", BODY, NOW);
        assert_eq!(
            verify_stripe(Some(&header), BODY, &["whsec_a"], 300, NOW + 10),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_fails() {
        let header = stripe_header("whsec_a", BODY, NOW);
        let tampered = br#"{"id":"evt_1","type":"invoice.paid","x":1}"#;
        assert_eq!(
            verify_stripe(Some(&header), tampered, &["whsec_a"], 300, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn an_old_timestamp_fails_even_when_signed() {
        let header = stripe_header("whsec_a", BODY, NOW - 301);
        assert_eq!(
            verify_stripe(Some(&header), BODY, &["whsec_a"], 300, NOW),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn during_a_rotation_either_secret_passes() {
        let old = stripe_header("whsec_old", BODY, NOW);
        let new = stripe_header("whsec_new", BODY, NOW);
        for header in [old, new] {
            assert_eq!(
                verify_stripe(Some(&header), BODY, &["whsec_new", "whsec_old"], 300, NOW),
                Ok(())
            );
        }
        let other = stripe_header("whsec_other", BODY, NOW);
        assert_eq!(
            verify_stripe(Some(&other), BODY, &["whsec_new", "whsec_old"], 300, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn one_matching_v1_among_several_passes_and_other_schemes_are_ignored() {
        let good = stripe_v1("whsec_a", BODY, NOW);
        let header = format!("t={NOW},v1={},v0=deadbeef,v1={good}", "00".repeat(32));
        assert_eq!(
            verify_stripe(Some(&header), BODY, &["whsec_a"], 300, NOW),
            Ok(())
        );
    }

    #[test]
    fn a_header_without_v1_or_t_is_malformed_and_none_is_missing() {
        assert_eq!(
            verify_stripe(Some("t=1"), BODY, &["s"], 300, 1),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_stripe(Some("v1=00"), BODY, &["s"], 300, 1),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_stripe(None, BODY, &["s"], 300, 1),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_watcher_hmac_is_hex_of_the_raw_body() {
        let sig = hex_hmac("shared", BODY);
        assert_eq!(verify_hex_hmac(Some(&sig), BODY, "shared"), Ok(()));
        assert_eq!(
            verify_hex_hmac(Some(&sig), b"{}", "shared"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_hex_hmac(Some("zz"), BODY, "shared"),
            Err(SignatureError::Mismatch)
        );
    }
}
