//! Instruments: a leg's symbol in the venue's own spelling, and the venue's precision
//! and minimums enforced before anything is sent. A leg may name the normalised symbol
//! (`BTC/USD`) or the venue's (`BTCUSD`); a symbol the venue has no instrument row for
//! goes as written (equities need none).

use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};

use super::plan::{Known, Leg, Verdict, refused};

struct Instrument {
    venue_id: String,
    symbol: String,
    venue_symbol: String,
    tick_size: Decimal,
    lot_size: Decimal,
    min_quantity: Decimal,
    min_notional: Decimal,
}

/// Why `leg` does not fit `instrument`, if it does not.
fn misfit(label: usize, leg: &Leg, i: &Instrument) -> Option<String> {
    let at = |what: String| {
        Some(format!(
            "leg {label}: {what} ({} at {})",
            i.venue_symbol, i.venue_id
        ))
    };
    if leg.quantity < i.min_quantity {
        return at(format!(
            "quantity {} is under the minimum {}",
            leg.quantity,
            i.min_quantity.normalize()
        ));
    }
    if !(leg.quantity % i.lot_size).is_zero() {
        return at(format!(
            "quantity {} is not a multiple of the lot size {}",
            leg.quantity,
            i.lot_size.normalize()
        ));
    }
    if let Some(limit) = leg.limit_price
        && !(limit % i.tick_size).is_zero()
    {
        return at(format!(
            "limit price {limit} is not a multiple of the tick size {}",
            i.tick_size.normalize()
        ));
    }
    None
}

/// Maps every candidate's legs onto their venues' instruments; an intent with a leg
/// that does not fit is refused (its verdict set) and left out.
pub(super) async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    candidates: Vec<(usize, Vec<Leg>)>,
    known: &Known,
    verdicts: &mut [Option<Verdict>],
) -> sqlx::Result<Vec<(usize, Vec<Leg>)>> {
    let venue_of = |account| known.iter().find(|k| k.0 == account).map(|k| k.1.clone());
    let mut venues = vec![];
    let mut symbols = vec![];
    for leg in candidates.iter().flat_map(|(_, legs)| legs) {
        if let Some(v) = venue_of(leg.account_id) {
            venues.push(v);
            symbols.push(leg.symbol.clone());
        }
    }
    let found = sqlx::query_as!(
        Instrument,
        "SELECT venue_id, symbol, venue_symbol, tick_size, lot_size, min_quantity, min_notional
         FROM instruments i
         WHERE (i.venue_id, i.symbol) IN (SELECT * FROM unnest($1::text[], $2::text[]))
            OR (i.venue_id, i.venue_symbol) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        &venues,
        &symbols,
    )
    .fetch_all(&mut **tx)
    .await?;
    if found.is_empty() {
        return Ok(candidates);
    }
    let mut kept = vec![];
    'intents: for (i, mut legs) in candidates {
        for (n, leg) in legs.iter_mut().enumerate() {
            let Some(venue) = venue_of(leg.account_id) else {
                continue;
            };
            let Some(instrument) = found.iter().find(|f| {
                f.venue_id == venue && (f.symbol == leg.symbol || f.venue_symbol == leg.symbol)
            }) else {
                continue;
            };
            if let Some(reason) = misfit(n, leg, instrument) {
                verdicts[i] = Some(refused("intent_rejected", reason));
                continue 'intents;
            }
            leg.symbol = instrument.venue_symbol.clone();
            leg.min_notional =
                (instrument.min_notional > Decimal::ZERO).then_some(instrument.min_notional);
        }
        kept.push((i, legs));
    }
    Ok(kept)
}
