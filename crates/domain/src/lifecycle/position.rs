//! Position arithmetic, apart from the database so that it can be checked by itself.
//!
//! A position leg is a quantity held long or short, its **cost basis** (what it cost
//! to open, so the average entry price is cost / quantity: average cost) and the
//! capital it holds in the ledger's `reserved_for_positions`. A fill in the leg's
//! direction scales in; against it, it scales out: the share of the cost basis and
//! of the reserved capital that goes with the quantity is released, and PnL is
//! realised against the average cost. A fill larger than the leg closes it and opens
//! the rest in the other direction. All amounts are rounded to the schema's 10
//! decimal places, and the last unit out takes exactly what is left, so a position
//! that ends flat has released exactly what it reserved.

use rust_decimal::Decimal;

/// The schema's scale (`numeric(28, 10)`).
pub const SCALE: u32 = 10;

/// An open leg as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leg {
    pub long: bool,
    pub qty: Decimal,
    pub cost: Decimal,
    pub reserved: Decimal,
}

/// What one fill does to the leg of its (account, symbol).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Effect {
    /// Quantity taken off the existing leg.
    pub reduced: Decimal,
    /// Cost basis that goes with it.
    pub cost_out: Decimal,
    /// Reserved capital that goes with it.
    pub released: Decimal,
    /// PnL realised by the reduction.
    pub pnl: Decimal,
    /// Quantity added in the fill's direction (scaling in, or opening after a close).
    pub opened: Decimal,
    /// What the opened quantity cost (its share of the ledger's positions capital).
    pub open_cost: Decimal,
    /// The existing leg ends flat.
    pub closes: bool,
}

/// The effect of a fill of `qty` at `price` (a buy when `buy`) on `leg`, if any.
/// `None` when the amounts overflow (they cannot for bounded prices and quantities).
pub fn effect(leg: Option<&Leg>, buy: bool, qty: Decimal, price: Decimal) -> Option<Effect> {
    let value = |q: Decimal| q.checked_mul(price).map(|v| v.round_dp(SCALE));
    match leg {
        Some(l) if l.qty > Decimal::ZERO && l.long != buy => {
            let reduced = qty.min(l.qty);
            let closes = reduced == l.qty;
            let share = |amount: Decimal| -> Option<Decimal> {
                if closes {
                    Some(amount)
                } else {
                    Some(
                        amount
                            .checked_mul(reduced)?
                            .checked_div(l.qty)?
                            .round_dp(SCALE),
                    )
                }
            };
            let cost_out = share(l.cost)?;
            let released = share(l.reserved)?;
            let proceeds = value(reduced)?;
            let pnl = if l.long {
                proceeds - cost_out
            } else {
                cost_out - proceeds
            };
            let opened = qty - reduced;
            Some(Effect {
                reduced,
                cost_out,
                released,
                pnl,
                opened,
                open_cost: value(opened)?,
                closes,
            })
        }
        _ => Some(Effect {
            opened: qty,
            open_cost: value(qty)?,
            ..Effect::default()
        }),
    }
}

/// The share of an order's remaining reservation `reserved` that a fill of `qty`
/// takes, when `open` was still unfilled before it: proportional, and all of it for
/// the fill that completes the order.
pub fn reservation_share(reserved: Decimal, qty: Decimal, open: Decimal) -> Decimal {
    if qty >= open || open <= Decimal::ZERO {
        return reserved;
    }
    reserved
        .checked_mul(qty)
        .and_then(|v| v.checked_div(open))
        .map(|v| v.round_dp(SCALE).min(reserved))
        .unwrap_or(reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// Applies an effect to a leg the way the database does.
    fn apply(leg: Option<Leg>, buy: bool, e: &Effect, booked: Decimal) -> Option<Leg> {
        let rest = leg.filter(|_| !e.closes).map(|l| Leg {
            qty: l.qty - e.reduced,
            cost: l.cost - e.cost_out,
            reserved: l.reserved - e.released,
            ..l
        });
        if e.opened.is_zero() {
            return rest;
        }
        match rest {
            Some(l) if l.long == buy => Some(Leg {
                qty: l.qty + e.opened,
                cost: l.cost + e.open_cost,
                reserved: l.reserved + booked,
                ..l
            }),
            _ => Some(Leg {
                long: buy,
                qty: e.opened,
                cost: e.open_cost,
                reserved: booked,
            }),
        }
    }

    #[test]
    fn scaled_in_twice_and_out_twice_ends_flat_with_exact_pnl_and_capital() {
        // Buy 10 at 100.00 and 5 at 103.30 (cost 1516.50, average 101.10); sell 7 at
        // 104.15 and 8 at 99.99: PnL 7 x 3.05 + 8 x -1.11 = 21.35 - 8.88 = 12.47.
        let mut leg = None;
        let mut released = Decimal::ZERO;
        let mut pnl = Decimal::ZERO;
        for (buy, qty, price) in [
            (true, "10", "100.00"),
            (true, "5", "103.30"),
            (false, "7", "104.15"),
            (false, "8", "99.99"),
        ] {
            let e = effect(leg.as_ref(), buy, d(qty), d(price)).unwrap();
            released += e.released;
            pnl += e.pnl;
            leg = apply(leg, buy, &e, e.open_cost);
        }
        assert_eq!(leg, None, "flat");
        assert_eq!(pnl, d("12.47"));
        assert_eq!(released, d("1516.50"), "everything reserved came back");
    }

    #[test]
    fn a_fill_through_zero_closes_the_leg_and_opens_the_rest_the_other_way() {
        let long = Leg {
            long: true,
            qty: d("5"),
            cost: d("500"),
            reserved: d("500"),
        };
        let e = effect(Some(&long), false, d("8"), d("110")).unwrap();
        assert!(e.closes);
        assert_eq!(
            (e.reduced, e.pnl, e.released, e.opened, e.open_cost),
            (d("5"), d("50"), d("500"), d("3"), d("330"))
        );
        let short = apply(Some(long), false, &e, e.open_cost).unwrap();
        assert!(!short.long);
        // Covering the short below its entry earns.
        let cover = effect(Some(&short), true, d("3"), d("100")).unwrap();
        assert_eq!(cover.pnl, d("30"));
    }

    #[test]
    fn thirds_release_everything_reserved_to_the_last_unit() {
        let leg = Leg {
            long: true,
            qty: d("3"),
            cost: d("100"),
            reserved: d("100"),
        };
        let mut leg = Some(leg);
        let mut released = Decimal::ZERO;
        for _ in 0..3 {
            let e = effect(leg.as_ref(), false, d("1"), d("40")).unwrap();
            released += e.released;
            leg = apply(leg, false, &e, Decimal::ZERO);
        }
        assert_eq!(released, d("100"));
        assert_eq!(leg, None);
    }

    #[test]
    fn an_order_reservation_goes_by_share_and_the_last_fill_takes_the_rest() {
        let reserved = d("100");
        let first = reservation_share(reserved, d("1"), d("3"));
        assert_eq!(first, d("33.3333333333"));
        let second = reservation_share(reserved - first, d("1"), d("2"));
        let last = reservation_share(reserved - first - second, d("1"), d("1"));
        assert_eq!(first + second + last, reserved);
    }
}
