//! The matching engine: every few milliseconds it looks at the working orders. A
//! market order fills once its delay is over, at the ask (buy) or the bid (sell),
//! in parts of at most `partial_fill_qty` one `fill_interval_ms` apart; a limit order
//! looks at the price walk every `fill_interval_ms` and fills at its limit once
//! crossed; late-reject symbols are rejected; at the end of each session, day orders
//! expire. Nothing fills while `hold_fills` is set: tests drive the venue instead.

use std::time::Duration;

use rust_decimal::Decimal;
use tokio::time::Instant;

use super::{Book, OrderType, PaperVenue, Side, Update, crosses};

/// How often the engine looks.
const TICK: Duration = Duration::from_millis(5);

pub(super) async fn run(venue: PaperVenue) {
    let mut session_end = session(&venue).map(|s| Instant::now() + s);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        if let Some(end) = session_end
            && Instant::now() >= end
        {
            venue.end_session();
            session_end = session(&venue).map(|s| end + s);
        }
        if venue.options.hold_fills {
            continue;
        }
        for update in step(&venue) {
            venue.publish(update);
        }
    }
}

fn session(venue: &PaperVenue) -> Option<Duration> {
    (venue.options.session_secs > 0).then(|| Duration::from_secs(venue.options.session_secs))
}

/// One look at every working order that is due; the updates it made.
fn step(venue: &PaperVenue) -> Vec<Update> {
    let now = Instant::now();
    let mut book = venue.book.lock().expect("book");
    let due: Vec<usize> = book
        .due
        .iter()
        .take_while(|(at, _)| *at <= now)
        .map(|(_, i)| *i)
        .collect();
    due.into_iter()
        .filter_map(|i| step_one(venue, &mut book, i))
        .collect()
}

/// One look at working order `i`: rejected (late-reject symbols), filled (a part of
/// it) if its price is there, or left for the next look.
pub(super) fn step_one(venue: &PaperVenue, book: &mut Book, i: usize) -> Option<Update> {
    let options = &venue.options;
    let o = &book.orders[i];
    if options.late_reject_symbols.contains(&o.symbol) {
        return Some(book.end(i, "rejected"));
    }
    let (symbol, side, order_type, limit) = (o.symbol.clone(), o.side, o.order_type, o.limit_price);
    let left = o.qty - o.filled_qty;
    let part = match options.partial_fill_qty {
        0 => left,
        n => left.min(Decimal::from(n)),
    };
    let price = {
        let mut rng = venue.rng.lock().expect("rng");
        book.step(&mut rng, &symbol, options.price_step_cents)
    };
    let spread = venue.spread();
    let fill_at = match order_type {
        OrderType::Market => Some(match side {
            Side::Buy => price + spread,
            Side::Sell => (price - spread).max(Decimal::new(1, 2)),
        }),
        OrderType::Limit => {
            let limit = limit.unwrap_or_default();
            crosses(side, price, limit).then_some(limit)
        }
    };
    book.schedule(
        i,
        Instant::now() + Duration::from_millis(options.fill_interval_ms),
    );
    fill_at.map(|at| book.fill(i, part, at))
}
