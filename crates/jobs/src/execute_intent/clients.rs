//! The venue clients of an intent's accounts (credentials resolved, one client per
//! account) and the entry locks an intent renews while it runs.

use super::*;
use crate::venue_budget::BanWatch;

pub(super) type Credentials = Vec<(Uuid, Option<String>, String)>;
/// The client the OMS speaks to a venue with.
pub(super) type VenueClient = std::sync::Arc<dyn Venue>;
pub(super) type Clients = HashMap<Uuid, Result<VenueClient, String>>;

pub(super) async fn load_credentials(
    tx: &mut Transaction<'_, Postgres>,
    legs: &[&OrderRow],
) -> sqlx::Result<Credentials> {
    let accounts: Vec<Uuid> = legs
        .iter()
        .map(|o| o.account_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = sqlx::query!(
        "SELECT account_id, identifier, secret_ref FROM account_credentials
         WHERE account_id = ANY($1) AND credential_type = 'api_key'",
        &accounts,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.account_id, r.identifier, r.secret_ref))
        .collect())
}

/// The venue clients of the legs' accounts (each recording a ban the venue says,
/// `crate::venue_budget::BanWatch`); an account whose client cannot be built maps to
/// the reason.
pub(super) fn build_clients(
    (pool, services): (&sqlx::PgPool, &Services),
    tenant: Uuid,
    creds: &Credentials,
    legs: &[&OrderRow],
) -> Clients {
    let mut out = HashMap::new();
    for leg in legs {
        if out.contains_key(&leg.account_id) {
            continue;
        }
        let client = creds
            .iter()
            .find(|c| c.0 == leg.account_id)
            .ok_or_else(|| format!("account {} has no api_key credential", leg.account_id))
            .and_then(|(_, key_id, secret_ref)| {
                services.venue_client(leg.account_id, &leg.venue_id, key_id.as_deref(), secret_ref)
            })
            .map(|c| BanWatch::wrap(c, pool.clone(), tenant, leg.account_id));
        out.insert(leg.account_id, client);
    }
    out
}

/// The venue clients of `legs`, for an attempt that goes on with an intent planned
/// earlier; the intent's entry locks are renewed in the same transaction.
pub(super) async fn clients(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    legs: &[&OrderRow],
) -> Result<Clients, JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    renew_locks(&mut tx, intent).await?;
    let creds = load_credentials(&mut tx, legs).await?;
    tx.commit().await?;
    Ok(build_clients(
        (&ctx.pool, &ctx.services),
        tenant,
        &creds,
        legs,
    ))
}

/// An intent holds its entry locks from planning until it settles, over any number
/// of attempts; each attempt, and each `LOCK_TTL_SECS / 3` within a long one, pushes
/// their expiry forward, so only a dead holder's locks expire.
pub(super) async fn renew_locks(
    tx: &mut Transaction<'_, Postgres>,
    intent: Uuid,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE entry_locks SET expires_at = now() + make_interval(secs => $2) WHERE owner_token = $1",
        intent,
        LOCK_TTL_SECS,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
