//! The trading facts jobs count in the process's metrics (flushed with the queue's,
//! exposed by `/metrics`): fills recorded and how long after the venue made them, and
//! fills that cost more than their account had (a capital invariant violation the
//! ledger did not have to refuse, because the fill was booked short).

use chrono::Utc;
use pulse_domain::{lifecycle::Applied, venue::Fill};

use crate::JobContext;

/// Counts what applying `fill` through path `source` did.
pub(crate) fn fill_applied(ctx: &JobContext, source: &str, fill: &Fill, applied: &Applied) {
    let m = &ctx.services.metrics;
    if applied.fill_recorded {
        m.add("fills_recorded", source, "", 1.0);
        let seconds = (Utc::now() - fill.at)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64
            / 1e6;
        m.observe("fill_to_database_seconds", source, seconds.max(0.0));
    }
    if applied.shortfall {
        m.add("capital_invariant_violations", "fill_shortfall", "", 1.0);
    }
}
