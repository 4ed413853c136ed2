//! Bounds on what comes from outside: durations a vendor (or a tenant's endpoint
//! pretending to be one) asks us to wait, and the URLs tenants store. Nothing from
//! outside reaches date arithmetic or an HTTP request before it passes here.

use std::time::Duration;

/// The longest wait any answer from outside can impose (a `retry_after`, a rate-limit
/// reset), unless configured otherwise.
pub const DEFAULT_MAX_EXTERNAL_WAIT: Duration = Duration::from_secs(3600);

/// Seconds as a vendor sent them, as a duration within `[0, max]`: NaN, infinities
/// and negative values never panic (`Duration::from_secs_f64` would), huge values are
/// cut to `max`.
pub fn wait_from_secs(secs: f64, max: Duration) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max))
}

/// Which URLs alert webhooks may point at. Tenants store their own webhook URL, and a
/// worker POSTs to it: anything but Discord's webhook endpoint would let a tenant make
/// the fleet call internal services (SSRF).
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    /// Extra origins allowed besides Discord (`http://127.0.0.1:8090` for the local
    /// Discord-dialect sink); an entry without a port allows any port of that host.
    pub extra_origins: Vec<String>,
}

/// Discord's hosts for webhook execution.
const DISCORD_HOSTS: &[&str] = &[
    "discord.com",
    "discordapp.com",
    "canary.discord.com",
    "ptb.discord.com",
];

impl WebhookPolicy {
    /// Checks a webhook URL: https on one of Discord's hosts (default port) with the
    /// path `/api/webhooks/{numeric id}/{token}` (optionally `/api/v{N}/...`), no
    /// credentials, query or fragment; or any path on an explicitly allowed origin.
    pub fn check(&self, raw: &str) -> Result<reqwest::Url, &'static str> {
        let url = reqwest::Url::parse(raw).map_err(|_| "not a URL")?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("URL carries credentials");
        }
        let host = url
            .host_str()
            .ok_or("URL has no host")?
            .to_ascii_lowercase();
        if self.extra_origins.iter().any(|o| origin_matches(o, &url)) {
            return Ok(url);
        }
        if url.scheme() != "https" {
            return Err("only https Discord webhook URLs are allowed");
        }
        if !DISCORD_HOSTS.contains(&host.as_str()) || url.port().is_some() {
            return Err("only Discord's webhook hosts are allowed");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a Discord webhook URL has no query or fragment");
        }
        let segments: Vec<&str> = url.path_segments().ok_or("no path")?.collect();
        let rest = match segments.as_slice() {
            ["api", "webhooks", rest @ ..] => rest,
            ["api", version, "webhooks", rest @ ..]
                if version.len() > 1
                    && version.starts_with('v')
                    && version[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                rest
            }
            _ => return Err("the path must be /api/webhooks/{id}/{token}"),
        };
        match rest {
            [id, token]
                if !id.is_empty()
                    && id.len() <= 20
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && !token.is_empty()
                    && token.len() <= 128
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(url)
            }
            _ => Err("the path must be /api/webhooks/{id}/{token}"),
        }
    }
}

/// Replaces every NUL character in the strings (and keys) of a JSON document with
/// U+FFFD. PostgreSQL's jsonb refuses `\u0000`, so a signed webhook body containing
/// one could otherwise never be stored (and its sender would retry for days).
/// Returns whether anything was replaced.
pub fn strip_nul(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    fn clean(s: &str) -> String {
        s.replace('\0', "\u{FFFD}")
    }
    match value {
        Value::String(s) if s.contains('\0') => {
            *s = clean(s);
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |any, v| strip_nul(v) | any),
        Value::Object(map) => {
            let mut changed = false;
            if map.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(map);
                *map = entries.into_iter().map(|(k, v)| (clean(&k), v)).collect();
                changed = true;
            }
            map.values_mut().fold(changed, |any, v| strip_nul(v) | any)
        }
        _ => false,
    }
}

fn origin_matches(origin: &str, url: &reqwest::Url) -> bool {
    let Ok(allowed) = reqwest::Url::parse(origin) else {
        return false;
    };
    allowed.scheme() == url.scheme()
        && allowed.host_str().map(str::to_ascii_lowercase)
            == url.host_str().map(str::to_ascii_lowercase)
        && (allowed.port().is_none() || allowed.port() == url.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_from_outside_are_bounded_and_never_panic() {
        let max = Duration::from_secs(3600);
        assert_eq!(wait_from_secs(9e12, max), max);
        assert_eq!(wait_from_secs(f64::INFINITY, max), max);
        assert_eq!(wait_from_secs(1e300, max), max);
        assert_eq!(wait_from_secs(f64::NAN, max), Duration::ZERO);
        assert_eq!(wait_from_secs(-5.0, max), Duration::ZERO);
        assert_eq!(wait_from_secs(1.5, max), Duration::from_millis(1500));
    }

    #[test]
    fn nul_characters_are_replaced_everywhere_in_a_document() {
        let mut doc = serde_json::json!({"a\0": ["x\0y", {"k": "\0"}], "n": 1});
        assert!(strip_nul(&mut doc));
        assert_eq!(
            doc,
            serde_json::json!({"a\u{FFFD}": ["x\u{FFFD}y", {"k": "\u{FFFD}"}], "n": 1})
        );
        assert!(!strip_nul(&mut doc));
    }

    #[test]
    fn only_discord_webhook_urls_pass_unless_an_origin_is_allowed() {
        let policy = WebhookPolicy::default();
        for ok in [
            "https://discord.com/api/webhooks/123456/abc-DEF_9",
            "https://discordapp.com/api/v10/webhooks/1/t",
        ] {
            assert!(policy.check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://discord.com/api/webhooks/1/t",
            "https://discord.com.evil.example/api/webhooks/1/t",
            "https://discord.com:8443/api/webhooks/1/t",
            "https://user:pw@discord.com/api/webhooks/1/t",
            "https://discord.com/api/webhooks/1/t?x=1",
            "https://discord.com/api/webhooks/abc/t",
            "https://discord.com/api/webhooks/1/t/extra",
            "https://discord.com/api/oauth2/token",
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:5432/",
            "not a url",
        ] {
            assert!(policy.check(bad).is_err(), "{bad}");
        }
        let local = WebhookPolicy {
            extra_origins: vec!["http://127.0.0.1".into()],
        };
        assert!(
            local
                .check("http://127.0.0.1:8090/api/webhooks/1/t")
                .is_ok()
        );
        assert!(local.check("http://localhost:8090/x").is_err());
        let exact = WebhookPolicy {
            extra_origins: vec!["http://127.0.0.1:8090".into()],
        };
        assert!(exact.check("http://127.0.0.1:8090/anything").is_ok());
        assert!(exact.check("http://127.0.0.1:8091/anything").is_err());
    }
}
