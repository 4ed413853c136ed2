//! Submitting: releasing an intent's legs (kill switches and entry locks checked),
//! sending each leg or looking it up first when it may exist at the venue, and the
//! attempt's walk through the legs (`submit_all`).

use super::*;

/// What planning already loaded, so the first attempt needs no extra transactions.
pub(super) struct Prepared {
    pub(super) legs: Vec<OrderRow>,
    pub(super) clients: Clients,
}

/// What submitting (or looking up) one leg came to.
pub(super) enum LegOutcome {
    Accepted(VenueOrder),
    Rejected(String),
    Unknown(String),
    /// Never reached the venue (not sent, or looked up and not there): nothing to
    /// undo, its reservation goes back.
    NotPlaced,
}

/// Releases an intent's unsent legs for submission, in one transaction that checks
/// that no kill switch of the tenant or of the legs' accounts is engaged and that the
/// intent still holds every one of its entry locks (renewing them), and marks the
/// orders `sent` before any request goes out, so any later attempt looks them up
/// before sending anything. (The first attempt is released by planning itself, in the
/// transaction that checked the switches and took the locks.) Returns the legs sent for
/// the first time (any other may exist at the venue already and is looked up before
/// anything is sent), or why the intent must stop: a kill switch of the tenant or of
/// a leg's account is engaged, or the intent no longer holds all its entry locks (they
/// expired and may have been taken), so it must not trade on them.
pub(super) async fn release_legs(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    legs: &[&OrderRow],
    locks: i64,
) -> Result<Result<BTreeSet<Uuid>, Halt>, JobError> {
    let ids: Vec<Uuid> = legs.iter().map(|o| o.id).collect();
    let accounts: Vec<Uuid> = legs.iter().map(|o| o.account_id).collect();
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let released = sqlx::query!(
        r#"WITH ks AS (
             SELECT coalesce(reason, 'no reason given') AS reason,
                    CASE WHEN account_id IS NULL THEN 'the tenant' ELSE 'account ' || account_id END AS scope
             FROM kill_switches WHERE engaged AND (account_id IS NULL OR account_id = ANY($2))
             ORDER BY account_id NULLS FIRST LIMIT 1),
         locks AS (
             UPDATE entry_locks SET expires_at = now() + make_interval(secs => $5)
             WHERE owner_token = $1 RETURNING 1),
         sent AS (
             UPDATE orders SET status = 'sent', updated_at = now()
             WHERE id = ANY($3) AND status = 'pending_submit'
               AND NOT EXISTS (SELECT 1 FROM ks) AND (SELECT count(*) FROM locks) = $4
             RETURNING id)
         SELECT (SELECT 'kill switch engaged for ' || scope || ': ' || reason FROM ks) AS killed,
                (SELECT count(*) FROM locks) AS "held!", ARRAY(SELECT id FROM sent) AS "fresh!""#,
        intent,
        &accounts,
        &ids,
        locks,
        LOCK_TTL_SECS,
    )
    .fetch_one(&mut *tx)
    .await?;
    let (killed, held, fresh) = (released.killed, released.held, released.fresh);
    tx.commit().await?;
    Ok(match killed {
        Some(reason) => Err(Halt::Stopped {
            event: "kill_switch_blocked",
            reason,
        }),
        None if held != locks => Err(Halt::Stopped {
            event: "entry_lock_lost",
            reason: "the intent lost its entry locks before all legs were sent".into(),
        }),
        None => Ok(fresh.into_iter().collect()),
    })
}

/// How many entry locks an intent holds while it runs: one per (account, symbol).
pub(super) fn lock_count(legs: &[OrderRow]) -> i64 {
    legs.iter()
        .filter(|o| o.leg_index < UNWIND_BASE)
        .map(|o| (o.account_id, o.symbol.as_str()))
        .collect::<BTreeSet<_>>()
        .len() as i64
}

/// A rate limit or a ban (refused unprocessed: nothing was sent) waits its time;
/// anything else is the leg's outcome.
pub(super) fn snooze_or(
    e: VenueError,
    otherwise: impl FnOnce(VenueError) -> LegOutcome,
) -> Result<LegOutcome, JobError> {
    match e.wait() {
        Some(wait) => Err(JobError::Snooze(wait)),
        None => Ok(otherwise(e)),
    }
}

/// Submits one order; when it may have been sent before (`look_up_first`), it is
/// looked up by client order id first and never resent blindly.
pub(super) async fn submit_one(
    venue: &VenueClient,
    look_up_first: bool,
    order: &OrderRow,
) -> Result<LegOutcome, JobError> {
    if look_up_first {
        match venue
            .get_order_by_client_id(&order.symbol, &order.client_order_id)
            .await
        {
            Ok(found) => return Ok(LegOutcome::Accepted(found)),
            Err(VenueError::NotFound) => {}
            Err(e) => return snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
        }
    }
    match venue.create_order(&order.request()).await {
        Ok(accepted) => Ok(LegOutcome::Accepted(accepted)),
        // Sent by an attempt this one cannot know about (its record was lost): adopt it.
        Err(VenueError::DuplicateClientOrderId) => {
            match venue
                .get_order_by_client_id(&order.symbol, &order.client_order_id)
                .await
            {
                Ok(found) => Ok(LegOutcome::Accepted(found)),
                Err(e) => snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
            }
        }
        Err(
            e @ (VenueError::Rejected { .. } | VenueError::Unauthorized | VenueError::NotFound),
        ) => Ok(LegOutcome::Rejected(e.to_string())),
        Err(e) => snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
    }
}

/// Finds out what became of a leg without sending anything: for an intent that is
/// being unwound, where no new order may go out.
pub(super) async fn resolve(venue: &VenueClient, order: &OrderRow) -> Result<LegOutcome, JobError> {
    if !order.may_exist_at_venue() {
        return Ok(LegOutcome::NotPlaced);
    }
    match venue
        .get_order_by_client_id(&order.symbol, &order.client_order_id)
        .await
    {
        Ok(found) => Ok(LegOutcome::Accepted(found)),
        Err(VenueError::NotFound) => Ok(LegOutcome::NotPlaced),
        Err(e) => snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
    }
}

/// Why an attempt stopped going through the legs.
pub(super) enum Halt {
    /// A leg was rejected for good (the venue's words, when this attempt heard them):
    /// the intent unwinds.
    Rejected(i32, Option<String>),
    /// A kill switch, or a lost entry lock: the intent stops and unwinds.
    Stopped { event: &'static str, reason: String },
    /// The venue's rate limit: what was learnt is recorded, then the job snoozes.
    Snooze(Duration),
}

pub(super) async fn submit_all(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    prepared: Option<Prepared>,
) -> Result<(), JobError> {
    let (legs, ready) = match prepared {
        Some(p) => (p.legs, Some(p.clients)),
        None => (orders(ctx, tenant, intent).await?, None),
    };
    let pending: Vec<&OrderRow> = legs
        .iter()
        .filter(|o| !o.submitted() && o.leg_index < UNWIND_BASE)
        .collect();
    // A leg rejected by an earlier attempt: nothing new goes out, what is pending is
    // only looked up, and the intent unwinds.
    let mut halt = legs
        .iter()
        .find(|o| o.status == OrderStatus::Rejected && o.leg_index < UNWIND_BASE)
        .map(|o| Halt::Rejected(o.leg_index, None));
    let locks = lock_count(&legs);
    let mut outcomes = Vec::with_capacity(pending.len());
    if !pending.is_empty() {
        let (clients, fresh) = match ready {
            // Released by planning a moment ago: every leg goes out for the first time.
            Some(c) => (c, pending.iter().map(|o| o.id).collect()),
            None => {
                let c = clients(ctx, tenant, intent, &pending).await?;
                if let Some(wait) = take_budgets(ctx, tenant, &budget_wants(&pending)).await? {
                    return Err(JobError::Snooze(wait));
                }
                let fresh = if halt.is_some() {
                    BTreeSet::new()
                } else {
                    release_legs(ctx, tenant, intent, &pending, locks)
                        .await?
                        .unwrap_or_else(|stop| {
                            halt = Some(stop);
                            BTreeSet::new()
                        })
                };
                (c, fresh)
            }
        };
        let mut renewed = std::time::Instant::now();
        for leg in &pending {
            if renewed.elapsed().as_secs_f64() > LOCK_TTL_SECS / 3.0 {
                let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
                renew_locks(&mut tx, intent).await?;
                tx.commit().await?;
                renewed = std::time::Instant::now();
            }
            let venue = match &clients[&leg.account_id] {
                Ok(venue) => venue,
                Err(reason) if halt.is_none() => {
                    outcomes.push((*leg, LegOutcome::Rejected(reason.clone())));
                    halt = Some(Halt::Rejected(leg.leg_index, Some(reason.clone())));
                    continue;
                }
                Err(reason) => return Err(JobError::retryable(reason.clone())),
            };
            // Once the intent is stopping, nothing new goes out: legs are only looked up.
            let outcome = if halt.is_some() {
                resolve(venue, leg).await
            } else {
                submit_one(venue, !fresh.contains(&leg.id), leg).await
            };
            match outcome {
                Ok(outcome) => {
                    if halt.is_none()
                        && let LegOutcome::Rejected(why) = &outcome
                    {
                        halt = Some(Halt::Rejected(leg.leg_index, Some(why.clone())));
                    }
                    outcomes.push((*leg, outcome));
                }
                Err(JobError::Snooze(wait)) => {
                    // Keep what the venue already answered: record it, then wait.
                    halt = Some(Halt::Snooze(wait));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let unknown = outcomes.iter().find_map(|(l, o)| match o {
        LegOutcome::Unknown(e) => Some(format!(
            "leg {}: outcome unknown ({e}); will look it up by client order id",
            l.leg_index
        )),
        _ => None,
    });
    // The venue's answers for accepted legs, apart from the others.
    let mut accepted: Vec<(Uuid, VenueOrder)> = vec![];
    let mut others = vec![];
    for (leg, outcome) in outcomes {
        match outcome {
            LegOutcome::Accepted(v) => accepted.push((leg.id, v)),
            other => others.push((leg, other)),
        }
    }
    if halt.is_none() && unknown.is_none() {
        // Every leg accepted: recorded in a batch with the tenant's other intents.
        let settlement = Settlement {
            intent,
            accepted,
            legs: legs.len(),
        };
        let pool = ctx.pool.clone();
        return ctx
            .intent_batches
            .settle
            .submit(tenant, settlement, move |batch: Vec<Settlement>| {
                let pool = pool.clone();
                async move {
                    let n = batch.len();
                    match settle_batch(&pool, tenant, &batch).await {
                        Ok(()) => (0..n).map(|_| Ok(())).collect(),
                        Err(e) => (0..n).map(|_| Err(e.to_string())).collect(),
                    }
                }
            })
            .await
            .map_err(JobError::retryable);
    }
    // Every outcome in one transaction.
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let accepted: Vec<(Uuid, &VenueOrder)> = accepted.iter().map(|(id, v)| (*id, v)).collect();
    record_accepted(&mut tx, &accepted).await?;
    for (leg, outcome) in &others {
        record(&mut tx, tenant, intent, leg, outcome).await?;
    }
    tx.commit().await?;
    match halt {
        Some(Halt::Snooze(wait)) => Err(JobError::Snooze(wait)),
        Some(Halt::Rejected(leg, why)) => {
            let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
            let reason = format!(
                "leg {leg} was rejected by the venue{why}; the other legs were cancelled or closed"
            );
            unwind(ctx, tenant, intent, "intent_unwound", &reason).await
        }
        Some(Halt::Stopped { event, reason }) => {
            let reason = format!("{reason}; the legs sent were cancelled or closed");
            unwind(ctx, tenant, intent, event, &reason).await
        }
        None => Err(JobError::retryable(unknown.unwrap_or_default())),
    }
}
