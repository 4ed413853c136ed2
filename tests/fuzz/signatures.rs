//! The webhook signature checks: any header and body, no panic; a signature made with
//! the secret always passes, and any other body or secret never does.

use proptest::prelude::*;
use pulse_fleet::web::signature::{
    SignatureError, hex_hmac, stripe_header, verify_hex_hmac, verify_stripe,
};

const NOW: i64 = 1_800_000_000;

/// Headers in Stripe's shape with hostile parts: any `t` (i64 extremes included),
/// hex or not, extra schemes, separators.
fn stripe_headers() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), Just(0)]
            .prop_map(|t| format!("t={t}")),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| format!("v1={}", hex::encode(b))),
        any::<String>().prop_map(|s| format!("v1={s}")),
        any::<String>(),
        Just("t=".to_string()),
        Just("v0=00".to_string()),
    ];
    prop::collection::vec(part, 0..6).prop_map(|parts| parts.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn stripe_any_header_and_body_never_panics_and_never_passes_unsigned(
        header in stripe_headers(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let verdict = verify_stripe(Some(&header), &body, &["whsec_test"], 300, NOW);
        prop_assert!(verdict.is_err(), "an unsigned header passed: {header}");
    }

    #[test]
    fn stripe_a_signed_body_passes_and_any_change_fails(
        body in prop::collection::vec(any::<u8>(), 0..256),
        age in 0i64..300,
        flip in any::<prop::sample::Index>(),
    ) {
        let header = stripe_header("whsec_test", &body, NOW - age);
        prop_assert!(verify_stripe(Some(&header), &body, &["whsec_old", "whsec_test"], 300, NOW).is_ok());
        prop_assert!(verify_stripe(Some(&header), &body, &["whsec_other"], 300, NOW).is_err());
        if !body.is_empty() {
            let mut changed = body.clone();
            changed[flip.index(body.len())] ^= 1;
            prop_assert!(verify_stripe(Some(&header), &changed, &["whsec_test"], 300, NOW).is_err());
        }
    }

    #[test]
    fn hex_hmac_any_header_never_panics_and_only_the_signature_passes(
        header in any::<String>(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let good = hex_hmac("secret", &body);
        prop_assert_eq!(verify_hex_hmac(Some(&header), &body, "secret").is_ok(), header.trim() == good);
        prop_assert!(verify_hex_hmac(Some(&good), &body, "secret").is_ok());
    }
}

/// Found by the target above once its timestamps included i64's ends: `t` at the bottom
/// of i64 made
/// `now - t` overflow (a panic in a debug build, a wrap that skipped the tolerance
/// check in a release build).
#[test]
fn a_stripe_timestamp_at_the_ends_of_i64_is_refused_not_overflowed() {
    for t in [i64::MIN, i64::MAX, -1] {
        let header = format!("t={t},v1=00");
        assert!(matches!(
            verify_stripe(Some(&header), b"{}", &["whsec_test"], 300, NOW),
            Err(SignatureError::Expired | SignatureError::Mismatch)
        ));
    }
}
