//! `sync_watcher`: applies one change of a `user_symbols` row to `watchers`.
//!
//! Enqueued by the trigger on `watcher_events`, which both paths fill: the signed
//! webhook (two-database deployments, `POST /webhooks/watchers`) and the trigger on
//! `user_symbols` (one database). Keyed by source row + version. Idempotent and safe
//! in any order: `watcher_sources` keeps the newest version applied per source row
//! (deletes included), and an event at or below it changes nothing. An UPDATE that
//! changes the symbol or timeframe moves the watcher. A record without user_id,
//! symbol or timeframe is a permanent failure.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Job, JobContext, JobError};
use pulse_contract::{RetentionHook, retention_hook};
use pulse_domain::watcher::Operation;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncWatcher {
    pub event_id: i64,
}

struct EventRow {
    source_id: i64,
    source_version: i64,
    kind: Operation,
    record: Option<Value>,
    old_record: Option<Value>,
}

/// The watcher a source row maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    user_id: String,
    symbol: String,
    timeframe: String,
}

fn text(record: &Value, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn key_of(record: &Value) -> Option<Key> {
    Some(Key {
        user_id: text(record, "user_id")?,
        symbol: text(record, "symbol")?,
        timeframe: text(record, "timeframe")?,
    })
}

impl Job for SyncWatcher {
    const NAME: &'static str = "sync_watcher";
    const MAX_ATTEMPTS: i32 = 10;

    /// Changes received longer than `keep` ago go: `watcher_sources` keeps the newest
    /// version applied per source row, so an old change cannot come back to life.
    fn retention() -> Option<RetentionHook> {
        Some(retention_hook(|pool, keep| async move {
            let deleted = sqlx::query!(
                "DELETE FROM watcher_events WHERE received_at < now() - make_interval(secs => $1)",
                keep.as_secs_f64(),
            )
            .execute(&pool)
            .await?;
            Ok(deleted.rows_affected())
        }))
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = ctx.pool.begin().await?;
        let event = sqlx::query_as!(
            EventRow,
            r#"SELECT source_id, source_version, type AS "kind: Operation", record, old_record
               FROM watcher_events WHERE id = $1"#,
            self.event_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(EventRow {
            source_id,
            source_version: version,
            kind,
            record,
            old_record,
        }) = event
        else {
            return Err(JobError::permanent(format!(
                "no watcher event {}",
                self.event_id
            )));
        };
        // Serialise the changes of one source row, then compare versions.
        // The inbox is platform-level; from here on the job works as its tenant.
        let tenant = [&record, &old_record]
            .into_iter()
            .flatten()
            .find_map(|r| r.get("tenant_id").and_then(Value::as_str))
            .and_then(|t| t.parse::<uuid::Uuid>().ok())
            .ok_or_else(|| {
                JobError::permanent(format!(
                    "watcher event {} names no tenant_id (record.tenant_id must be a uuid)",
                    self.event_id
                ))
            })?;
        pulse_domain::tenancy::enter(&mut tx, tenant).await?;
        sqlx::query!(
            "INSERT INTO watcher_sources (tenant_id, source_id, source_version) VALUES ($1, $2, 0)
             ON CONFLICT (tenant_id, source_id) DO NOTHING",
            tenant,
            source_id,
        )
        .execute(&mut *tx)
        .await?;
        let source = sqlx::query!(
            "SELECT source_version, user_id, symbol, timeframe FROM watcher_sources
                 WHERE source_id = $1 FOR UPDATE",
            source_id,
        )
        .fetch_one(&mut *tx)
        .await?;
        let (applied, user_id, symbol, timeframe) = (
            source.source_version,
            source.user_id,
            source.symbol,
            source.timeframe,
        );
        if version <= applied {
            tracing::info!(
                source.id = source_id,
                version,
                applied,
                "stale watcher change of source {source_id} ignored"
            );
            return Ok(());
        }
        let current = match (user_id, symbol, timeframe) {
            (Some(user_id), Some(symbol), Some(timeframe)) => Some(Key {
                user_id,
                symbol,
                timeframe,
            }),
            _ => None,
        };
        let previous = current.or_else(|| old_record.as_ref().and_then(key_of));
        let bad =
            |what: &str| JobError::permanent(format!("watcher event {} {what}", self.event_id));

        let deleted = match kind {
            Operation::Insert | Operation::Update => {
                let record = record.ok_or_else(|| bad("has no record"))?;
                let key =
                    key_of(&record).ok_or_else(|| bad("lacks user_id, symbol or timeframe"))?;
                if let Some(old) = previous.as_ref().filter(|old| **old != key) {
                    delete(&mut tx, old).await?;
                }
                let strategy = record
                    .get("strategy")
                    .cloned()
                    .filter(|s| !s.is_null())
                    .unwrap_or(Value::Object(Default::default()));
                let active = record
                    .get("active")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                sqlx::query!(
                    "INSERT INTO watchers (tenant_id, user_id, symbol, timeframe, strategy, active)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (tenant_id, user_id, symbol, timeframe) DO UPDATE SET
                         strategy = excluded.strategy, active = excluded.active, updated_at = now()",
                    tenant,
                    &key.user_id,
                    &key.symbol,
                    &key.timeframe,
                    &strategy,
                    active,
                )
                .execute(&mut *tx)
                .await?;
                record_source(&mut tx, source_id, version, Some(&key), false).await?;
                false
            }
            Operation::Delete => {
                if let Some(old) = &previous {
                    delete(&mut tx, old).await?;
                }
                record_source(&mut tx, source_id, version, previous.as_ref(), true).await?;
                true
            }
        };
        tx.commit().await?;
        tracing::info!(
            source.id = source_id,
            version,
            deleted,
            "watcher of source {source_id} synced to version {version}"
        );
        Ok(())
    }
}

async fn delete(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, key: &Key) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM watchers WHERE user_id = $1 AND symbol = $2 AND timeframe = $3",
        &key.user_id,
        &key.symbol,
        &key.timeframe,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn record_source(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    source_id: i64,
    version: i64,
    key: Option<&Key>,
    deleted: bool,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE watcher_sources SET source_version = $2, user_id = $3, symbol = $4, timeframe = $5,
                deleted = $6, updated_at = now()
         WHERE source_id = $1",
        source_id,
        version,
        key.map(|k| k.user_id.as_str()),
        key.map(|k| k.symbol.as_str()),
        key.map(|k| k.timeframe.as_str()),
        deleted,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
