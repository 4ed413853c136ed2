//! Discord's webhook dialect: the message we send, its limits, and what each answer
//! means. Facts from Discord's docs (shared/notes/domain-facts.md §4.3).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bounds::wait_from_secs;

/// Discord's documented limits.
pub mod limits {
    pub const EMBEDS: usize = 10;
    pub const TITLE: usize = 256;
    pub const DESCRIPTION: usize = 4096;
    pub const FIELDS: usize = 25;
    pub const FIELD_NAME: usize = 256;
    pub const FIELD_VALUE: usize = 1024;
    pub const FOOTER: usize = 2048;
    /// Sum of all titles, descriptions, field names and values, footers of a message.
    pub const TOTAL: usize = 6000;
    pub const CONTENT: usize = 2000;
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeds: Vec<Embed>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Embed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footer: Option<Footer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub inline: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Footer {
    pub text: String,
}

/// Cuts `s` to `max` characters, marking the cut with an ellipsis.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl Embed {
    fn text_len(&self) -> usize {
        let n = |s: &Option<String>| s.as_ref().map_or(0, |s| s.chars().count());
        n(&self.title)
            + n(&self.description)
            + self.footer.as_ref().map_or(0, |f| f.text.chars().count())
            + self
                .fields
                .iter()
                .map(|f| f.name.chars().count() + f.value.chars().count())
                .sum::<usize>()
    }
}

impl Message {
    /// Total text Discord counts against the 6,000 limit.
    pub fn text_len(&self) -> usize {
        self.embeds.iter().map(Embed::text_len).sum()
    }

    /// Brings the message within every limit, truncating visibly rather than failing:
    /// per-field limits first, then whole embeds and fields beyond the counts, then
    /// descriptions and field values until the total fits.
    pub fn fit(mut self) -> Self {
        if let Some(c) = &self.content {
            self.content = Some(truncate(c, limits::CONTENT));
        }
        let dropped_embeds = self.embeds.len().saturating_sub(limits::EMBEDS);
        self.embeds.truncate(limits::EMBEDS);
        for e in &mut self.embeds {
            e.title = e.title.as_deref().map(|t| truncate(t, limits::TITLE));
            e.description = e
                .description
                .as_deref()
                .map(|d| truncate(d, limits::DESCRIPTION));
            if e.fields.len() > limits::FIELDS {
                let extra = e.fields.len() - (limits::FIELDS - 1);
                e.fields.truncate(limits::FIELDS - 1);
                e.fields.push(Field {
                    name: "…".into(),
                    value: format!("{extra} more fields not shown"),
                    inline: false,
                });
            }
            for f in &mut e.fields {
                f.name = truncate(&f.name, limits::FIELD_NAME);
                f.value = truncate(&f.value, limits::FIELD_VALUE);
            }
            if let Some(footer) = &mut e.footer {
                footer.text = truncate(&footer.text, limits::FOOTER);
            }
        }
        if dropped_embeds > 0
            && let Some(last) = self.embeds.last_mut()
        {
            last.footer = Some(Footer {
                text: format!("{dropped_embeds} more embeds not shown"),
            });
        }
        // Shrink the longest text of the message until the total fits: each pass cuts
        // the longest by the overage (or to one character), so it ends within one
        // pass per text.
        while self.text_len() > limits::TOTAL {
            let over = self.text_len() - limits::TOTAL;
            let Some(longest) = self
                .embeds
                .iter_mut()
                .flat_map(|e| {
                    e.title
                        .iter_mut()
                        .chain(e.description.iter_mut())
                        .chain(e.footer.iter_mut().map(|f| &mut f.text))
                        .chain(
                            e.fields
                                .iter_mut()
                                .flat_map(|f| [&mut f.name, &mut f.value]),
                        )
                })
                .max_by_key(|s| s.chars().count())
            else {
                break;
            };
            let len = longest.chars().count();
            if len <= 1 {
                break;
            }
            *longest = truncate(longest, len.saturating_sub(over).max(1));
        }
        self
    }
}

/// Rate-limit state Discord reports on every answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimit {
    pub bucket: Option<String>,
    pub remaining: Option<i64>,
    pub reset_after: Option<Duration>,
}

/// What one execute-webhook request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Sent(RateLimit),
    /// 429: wait `retry_after` (from the body, else the Retry-After header).
    RateLimited {
        retry_after: Duration,
        rate: RateLimit,
    },
    /// 404: the webhook was deleted; stop using it.
    Gone,
    /// 400 and other 4xx (and 3xx): the request is wrong and will stay wrong. Only Discord's
    /// numeric error code is kept, never the body: the URL is a tenant's, and what
    /// answers there need not be Discord.
    Rejected {
        status: u16,
        code: Option<i64>,
    },
    /// 5xx: Discord's problem; try again later.
    Unavailable {
        status: u16,
    },
}

#[derive(Debug, Deserialize)]
struct RateLimitedBody {
    retry_after: f64,
}

/// Discord's error body: `{"code": 50035, "message": "..."}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: i64,
}

/// Bodies read from the other side are cut at this size (a tenant's URL may answer
/// with anything, of any length).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

async fn small_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    body
}

fn header<T: std::str::FromStr>(response: &reqwest::Response, name: &str) -> Option<T> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// Executes a webhook. The URL carries the webhook's token: it never appears in an
/// error (reqwest's errors are stripped of it) or a log line. Every wait the answer
/// asks for is cut to `max_wait`.
pub async fn execute(
    http: &reqwest::Client,
    url: &str,
    message: &Message,
    max_wait: Duration,
) -> Result<Delivery, reqwest::Error> {
    let response = http
        .post(url)
        .query(&[("wait", "true")])
        .json(message)
        .send()
        .await
        .map_err(reqwest::Error::without_url)?;
    let status = response.status().as_u16();
    let rate = RateLimit {
        bucket: header(&response, "x-ratelimit-bucket"),
        remaining: header(&response, "x-ratelimit-remaining"),
        reset_after: header::<f64>(&response, "x-ratelimit-reset-after")
            .map(|s| wait_from_secs(s, max_wait)),
    };
    let retry_header: Option<f64> = header(&response, "retry-after");
    Ok(match status {
        200..=299 => Delivery::Sent(rate),
        429 => {
            let body = small_body(response).await;
            let body: Option<RateLimitedBody> = serde_json::from_slice(&body).ok();
            let secs = body.map(|b| b.retry_after).or(retry_header).unwrap_or(1.0);
            Delivery::RateLimited {
                retry_after: wait_from_secs(secs, max_wait),
                rate,
            }
        }
        404 => Delivery::Gone,
        // A redirect is refused like a 4xx: it is never followed (the URL is a
        // tenant's), and Discord never sends one.
        300..=499 => Delivery::Rejected {
            status,
            code: serde_json::from_slice::<ErrorBody>(&small_body(response).await)
                .ok()
                .map(|b| b.code),
        },
        _ => Delivery::Unavailable { status },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(n: usize) -> String {
        "x".repeat(n)
    }

    #[test]
    fn every_limit_holds_after_fit_and_cuts_are_visible() {
        let embed = Embed {
            title: Some(long(300)),
            description: Some(long(5000)),
            fields: (0..40)
                .map(|i| Field {
                    name: format!("field {i} {}", long(300)),
                    value: long(2000),
                    inline: false,
                })
                .collect(),
            footer: Some(Footer { text: long(3000) }),
            ..Default::default()
        };
        let message = Message {
            content: None,
            embeds: vec![embed; 12],
        }
        .fit();
        assert_eq!(message.embeds.len(), limits::EMBEDS);
        assert!(
            message.text_len() <= limits::TOTAL,
            "{}",
            message.text_len()
        );
        for e in &message.embeds {
            assert!(e.title.as_ref().unwrap().chars().count() <= limits::TITLE);
            assert!(e.title.as_ref().unwrap().ends_with('…'));
            assert!(e.fields.len() <= limits::FIELDS);
            for f in &e.fields {
                assert!(f.name.chars().count() <= limits::FIELD_NAME);
                assert!(f.value.chars().count() <= limits::FIELD_VALUE);
            }
        }
        assert!(
            message.embeds[9]
                .footer
                .as_ref()
                .unwrap()
                .text
                .contains("2 more embeds")
        );
    }

    #[test]
    fn a_message_within_limits_is_unchanged() {
        let message = Message {
            content: Some("hi".into()),
            embeds: vec![Embed {
                title: Some("Order filled".into()),
                fields: vec![Field {
                    name: "Qty".into(),
                    value: "10".into(),
                    inline: true,
                }],
                ..Default::default()
            }],
        };
        assert_eq!(message.clone().fit(), message);
    }
}
