//! Credentials' `secret_ref`: where a secret lives, never the secret itself.
//!
//! - `env:NAME`: the environment variable NAME.
//! - `enc:v1:<base64>`: nonce (12 bytes) then AES-256-GCM ciphertext and tag, sealed
//!   under the key in `PULSE_SECRETS_KEY` (32 bytes, base64). `pulse-fleet secrets
//!   seal` makes one.
//!
//! A resolved [`Secret`] prints as `[redacted]`; errors name the reference's scheme
//! or variable, never its value.

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};

/// The environment variable holding the sealing key.
pub const KEY_VAR: &str = "PULSE_SECRETS_KEY";
const AAD: &[u8] = b"pulse-fleet secret_ref v1";

/// A secret value. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret_ref has an unknown scheme (expected env: or enc:v1:)")]
    UnknownScheme,
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("{KEY_VAR} is not set or is not 32 bytes of base64")]
    NoKey,
    #[error("enc:v1 secret_ref is malformed")]
    Malformed,
    #[error("enc:v1 secret_ref does not open with this key (wrong key or tampered)")]
    Decrypt,
}

/// The sealing key from the environment.
pub fn key_from_env() -> Result<[u8; 32], SecretError> {
    let raw = std::env::var(KEY_VAR).map_err(|_| SecretError::NoKey)?;
    let bytes = STANDARD
        .decode(raw.trim())
        .map_err(|_| SecretError::NoKey)?;
    bytes.try_into().map_err(|_| SecretError::NoKey)
}

/// Seals `plaintext` as an `enc:v1:` reference.
pub fn seal(plaintext: &str, key: &[u8; 32]) -> String {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).expect("the OS random source");
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: AAD,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer");
    let mut out = nonce.to_vec();
    out.extend(sealed);
    format!("enc:v1:{}", STANDARD.encode(out))
}

/// Resolves a reference; `env` reads environment variables (injectable for tests).
pub fn resolve_with(
    secret_ref: &str,
    env: impl Fn(&str) -> Option<String>,
    key: impl FnOnce() -> Result<[u8; 32], SecretError>,
) -> Result<Secret, SecretError> {
    if let Some(name) = secret_ref.strip_prefix("env:") {
        return env(name)
            .map(Secret)
            .ok_or_else(|| SecretError::MissingEnv(name.to_owned()));
    }
    let Some(blob) = secret_ref.strip_prefix("enc:v1:") else {
        return Err(SecretError::UnknownScheme);
    };
    let bytes = STANDARD.decode(blob).map_err(|_| SecretError::Malformed)?;
    if bytes.len() < 12 + 16 {
        return Err(SecretError::Malformed);
    }
    let (nonce, sealed) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| SecretError::Malformed)?;
    let key = key()?;
    let plain = Aes256Gcm::new((&key).into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: sealed,
                aad: AAD,
            },
        )
        .map_err(|_| SecretError::Decrypt)?;
    String::from_utf8(plain)
        .map(Secret)
        .map_err(|_| SecretError::Malformed)
}

/// Resolves against the process environment.
pub fn resolve(secret_ref: &str) -> Result<Secret, SecretError> {
    resolve_with(secret_ref, |name| std::env::var(name).ok(), key_from_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn a_sealed_secret_opens_with_its_key_only() {
        let sealed = seal("alpaca-secret-xyz", &KEY);
        assert!(sealed.starts_with("enc:v1:"));
        assert!(!sealed.contains("alpaca-secret-xyz"));
        let opened = resolve_with(&sealed, |_| None, || Ok(KEY)).unwrap();
        assert_eq!(opened.expose(), "alpaca-secret-xyz");
        assert_eq!(
            resolve_with(&sealed, |_| None, || Ok([8; 32])),
            Err(SecretError::Decrypt)
        );
        let mut tampered = sealed.clone();
        tampered.replace_range(tampered.len() - 4.., "AAAA");
        assert!(resolve_with(&tampered, |_| None, || Ok(KEY)).is_err());
    }

    #[test]
    fn env_references_read_the_variable_and_errors_never_show_values() {
        let env = |name: &str| (name == "ALPACA_SECRET").then(|| "s3cr3t".to_string());
        assert_eq!(
            resolve_with("env:ALPACA_SECRET", env, || Err(SecretError::NoKey))
                .unwrap()
                .expose(),
            "s3cr3t"
        );
        let missing = resolve_with("env:OTHER", env, || Err(SecretError::NoKey)).unwrap_err();
        assert_eq!(missing.to_string(), "environment variable OTHER is not set");
        assert_eq!(
            resolve_with("vault://x", env, || Ok(KEY)),
            Err(SecretError::UnknownScheme)
        );
        let secret = resolve_with("env:ALPACA_SECRET", env, || Ok(KEY)).unwrap();
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    }
}
