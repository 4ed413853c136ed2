//! An intent's status from its legs, once it has been submitted: `submitted` →
//! `partially_filled` → `filled`, or `cancelled` / `failed` with the reason when its
//! legs end otherwise. Only intents the OMS has handed over (`submitted`,
//! `partially_filled`) move here; a failing intent is the OMS's (it unwinds), and
//! closing orders of an unwind (leg index 1000 and up) are not the intent's legs.
//!
//! A multi-leg intent one of whose legs the venue ended (rejected, cancelled,
//! expired) after accepting it, while another leg still works or has fills, is not
//! rolled up: it is no longer hedged, so the OMS is asked to unwind it
//! (`request_unwind`), and fails it when done.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// Rolls `intents` up from their legs; each change is audited (`intent_filled`,
/// `intent_partially_filled`, `intent_cancelled`, `intent_failed`).
pub async fn roll_up(tx: &mut Transaction<'_, Postgres>, intents: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query!(
        r#"WITH raw_legs AS (
               SELECT intent_id,
                      bool_and(status = 'filled') AS all_filled,
                      bool_and(status IN ('filled', 'cancelled', 'expired', 'rejected')) AS all_ended,
                      bool_or(filled_quantity > 0) AS any_fill,
                      min(leg_index) FILTER (WHERE status = 'rejected') AS rejected_leg,
                      min(leg_index) FILTER (WHERE status = 'rejected' AND venue_order_id IS NOT NULL)
                          AS late_rejected_leg,
                      (array_agg(reject_reason ORDER BY leg_index)
                          FILTER (WHERE status = 'rejected'))[1] AS rejected_reason,
                      min(leg_index) FILTER (WHERE status IN ('cancelled', 'expired')) AS ended_leg,
                      sum(filled_quantity) AS filled, sum(quantity) AS ordered,
                      count(*) > 1
                        AND bool_or(status IN ('rejected', 'cancelled', 'expired'))
                        AND (bool_or(status NOT IN ('filled', 'cancelled', 'expired', 'rejected'))
                             OR bool_or(filled_quantity > 0)) AS unhedged
               FROM orders WHERE intent_id = ANY($1) AND leg_index < 1000
               GROUP BY intent_id),
           legs AS (
               -- Which leg the venue refused, how, and in its words when it said them.
               SELECT r.*,
                      CASE WHEN r.late_rejected_leg IS NOT NULL
                           THEN 'leg ' || r.late_rejected_leg || ' was rejected by the venue after it was accepted'
                           ELSE 'leg ' || r.rejected_leg || ' was rejected by the venue'
                                || coalesce(' (' || r.rejected_reason || ')', '') END AS rejection
               FROM raw_legs r),
           unwinding AS (
               SELECT count(request_unwind(l.intent_id,
                          CASE WHEN l.rejected_leg IS NOT NULL THEN l.rejection
                               ELSE 'leg ' || l.ended_leg || ' ended at the venue unfilled' END
                          || '; the other legs are unwound')) AS n
               FROM legs l JOIN multi_leg_intents i ON i.id = l.intent_id
               WHERE l.unhedged AND i.status IN ('submitted', 'partially_filled')),
           next AS (
               SELECT i.id, i.status AS was,
                      CASE WHEN l.all_filled THEN 'filled'
                           WHEN l.all_ended AND l.rejected_leg IS NOT NULL THEN 'failed'
                           WHEN l.all_ended THEN 'cancelled'
                           WHEN l.any_fill THEN 'partially_filled'
                           ELSE 'submitted' END::intent_status AS status,
                      CASE WHEN l.all_filled OR NOT l.all_ended THEN NULL
                           WHEN l.rejected_leg IS NOT NULL THEN l.rejection
                           ELSE 'leg ' || l.ended_leg || ' ended at the venue unfilled; '
                                || l.filled::float8 || ' of ' || l.ordered::float8 || ' filled' END AS reason
               FROM multi_leg_intents i JOIN legs l ON l.intent_id = i.id
               WHERE i.status IN ('submitted', 'partially_filled') AND NOT l.unhedged),
           moved AS (
               UPDATE multi_leg_intents i SET status = n.status, reason = coalesce(n.reason, i.reason),
                                              updated_at = now()
               FROM next n WHERE i.id = n.id AND n.status <> n.was
               RETURNING i.id, n.status, n.reason)
           SELECT audit_append('intent_' || m.status::text, 'intent', m.id::text,
                               jsonb_build_object('reason', m.reason)) AS "appended"
           FROM moved m WHERE (SELECT n FROM unwinding) >= 0"#,
        intents,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(())
}
