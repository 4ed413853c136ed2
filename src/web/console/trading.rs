//! `/trading` (accounts and recent intents), `/trading/accounts/{id}` (ledger with its
//! journal, positions, orders, reconciliation), `/trading/intents/{id}` (legs, orders,
//! fills, audit trail) and `/alerts`.

use axum::extract::{Path, State};
use maud::{Markup, html};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{
    super::{
        AppState,
        read_model::{self, trading},
    },
    page::{self, Section, json, maybe_when, short, when},
};

pub async fn index(State(state): State<AppState>) -> page::Page {
    let (accounts, intents, connections) = match tokio::try_join!(
        read_model::accounts(&state.pool),
        read_model::recent_intents(&state.pool, 30),
        trading::broker_connections(&state.pool)
    ) {
        Ok(x) => x,
        Err(e) => return page::internal(Section::Trading, &e),
    };
    let body = html! {
        h2 { "Accounts" }
        div.scroll { table #accounts {
            tr { th { "tenant" } th { "account" } th { "venue" } th { "reconciled" } th { "open mismatches" } th { "trading" } th { "venue reachable" } }
            @for a in &accounts {
                tr {
                    td { (a.tenant) }
                    td { a href={"/trading/accounts/" (a.account_id)} { (a.label) } }
                    td { (a.venue) }
                    td { (maybe_when(a.last_reconciled_at)) @if a.last_run_ok == Some(false) { " " span.pill.failed title=(a.last_run_error.as_deref().unwrap_or("")) { "last run failed" } } }
                    td { @for (k, n) in &a.mismatches { span.pill.unhealthy { (k) ": " (n) } " " } }
                    td {
                        @if a.trading_paused { span.pill.paused title=(a.paused_reason.as_deref().unwrap_or("")) { "paused" } " " (a.paused_reason.as_deref().unwrap_or("")) }
                        @else if a.waiting_for_startup_reconciliation { span.pill.pending { "waiting for start-up reconciliation" } }
                        @else { span.pill.ok { "trading" } }
                    }
                    td {
                        @if let Some(until) = a.venue_banned_until {
                            span.pill.failed title="HTTP 418: no request of this account goes until then" { "banned until " (when(until)) }
                        } @else {
                            (match a.venue_reachable { Some(true) => "yes", Some(false) => "no", None => "not tried" })
                        }
                    }
                }
            }
        } }
        @if accounts.is_empty() { p.muted { "No active account with credentials." } }
        h2 { "Recent intents" }
        div.scroll { table #intents {
            tr { th { "created" } th { "tenant" } th { "intent" } th { "status" } th { "orders" } }
            @for i in &intents {
                tr {
                    td { (when(i.created_at)) }
                    td { (i.tenant) }
                    td.mono { a href={"/trading/intents/" (i.id)} { (short(&i.id)) } }
                    td { span class={"pill " (i.status.as_str())} { (i.status.as_str()) } }
                    td { (i.orders.as_deref().or(i.reason.as_deref()).unwrap_or_default()) }
                }
            }
        } }
        h2 { "Broker connections" }
        div.scroll { table #connections {
            tr { th { "tenant" } th { "user" } th { "broker" } th { "status" } th { "access token expires" } th { "authorisation expires" } th { "last refreshed" } th.num { "refreshes" } th { "last error" } }
            @for c in &connections {
                tr {
                    td { (c.tenant) } td { (c.user_id) } td { (c.broker) " " span.muted { (c.scopes.join(" ")) } }
                    td { span class={"pill " (if c.status == "active" { "ok" } else { "unhealthy" })} { (c.status) } }
                    td { (when(c.expires_at)) } td { (maybe_when(c.refresh_expires_at)) } td { (maybe_when(c.refreshed_at)) }
                    td.num { (c.generation) } td.error { (c.last_error.as_deref().unwrap_or("")) }
                }
            }
        } }
        @if connections.is_empty() { p.muted { "No broker connection." } }
    };
    page::layout(Section::Trading, "Trading", None, body)
}

fn money(d: Decimal) -> String {
    d.normalize().to_string()
}

fn orders_table(orders: &[trading::OrderRow]) -> Markup {
    html! {
        div.scroll { table.orders {
            tr {
                th.num { "leg" } th { "intent" } th { "account" } th { "symbol" } th { "side" } th.num { "qty" }
                th { "type" } th.num { "limit" } th { "status" } th.num { "filled" } th.num { "avg price" }
                th.num { "reserved" } th { "client order id" } th { "venue order id" } th { "updated" }
            }
            @for o in orders {
                tr {
                    td.num { (o.leg_index) }
                    td.mono { a href={"/trading/intents/" (o.intent_id)} { (short(&o.intent_id)) } }
                    td { (o.account) " " span.muted { (o.venue_id) } }
                    td { (o.symbol) }
                    td { (o.side) }
                    td.num { (money(o.quantity)) }
                    td { (o.order_type) }
                    td.num { (o.limit_price.map(money).unwrap_or_default()) }
                    td { span class={"pill " (o.status)} { (o.status) } @if o.origin != "oms" { " " span.muted { (o.origin) } } }
                    td.num { (money(o.filled_quantity)) }
                    td.num { (o.average_price.map(money).unwrap_or_default()) }
                    td.num { (money(o.reserved_amount)) }
                    td.mono { (o.client_order_id) }
                    td.mono { (o.venue_order_id.as_deref().unwrap_or("")) }
                    td { (when(o.updated_at)) }
                }
            }
        } }
    }
}

pub async fn account(State(state): State<AppState>, Path(id): Path<Uuid>) -> page::Page {
    let a = match page::found(
        trading::account(&state.pool, id).await,
        Section::Trading,
        || format!("no account {id}"),
    ) {
        Ok(found) => found,
        Err(missing) => return missing,
    };
    let body = html! {
        p {
            (a.tenant) " · " (a.venue_id)
            @if !a.active { " · " span.pill { "inactive" } }
            @if let Some(r) = &a.paused_reason { " · " span.pill.paused { "trading paused" } " " (r) }
        }
        h2 { "Capital ledger" }
        @if let Some(l) = &a.ledger {
            @let rows = [
                ("allocated", l.allocated, l.journal_allocated),
                ("reserved for orders", l.reserved_for_orders, l.journal_orders),
                ("reserved for positions", l.reserved_for_positions, l.journal_positions),
                ("realized P&L", l.realized_pnl, l.journal_pnl),
            ];
            table #ledger {
                tr { th { "" } th.num { "ledger" } th.num { "sum of its journal" } th { "" } }
                @for (label, ledger, journal) in rows {
                    tr {
                        td { (label) }
                        td.num { (money(ledger)) }
                        td.num { (money(journal)) }
                        td { @if ledger != journal { span.pill.unhealthy { "drift " (money(ledger - journal)) } } @else { span.pill.ok { "equal" } } }
                    }
                }
            }
            p.muted { "Updated " (when(l.updated_at)) ". The journal behind these numbers, newest first:" }
            div.scroll { table #journal {
                tr { th.num { "#" } th { "when" } th { "entry" } th.num { "Δ allocated" } th.num { "Δ orders" } th.num { "Δ positions" } th.num { "Δ P&L" } th { "for" } }
                @for j in &a.journal {
                    tr {
                        td.num { (j.id) }
                        td { (when(j.created_at)) }
                        td { (j.entry_type) }
                        td.num { (money(j.d_allocated)) }
                        td.num { (money(j.d_reserved_for_orders)) }
                        td.num { (money(j.d_reserved_for_positions)) }
                        td.num { (money(j.d_realized_pnl)) }
                        td.mono { (j.ref_type.as_deref().unwrap_or("")) " " (j.ref_id.as_ref().map(short).unwrap_or_default()) }
                    }
                }
            } }
        } @else {
            p.muted { "No ledger: capital was never allocated to this account." }
        }
        h2 { "Positions" }
        div.scroll { table #positions {
            tr { th { "symbol" } th { "side" } th.num { "qty" } th.num { "entry" } th.num { "cost basis" } th.num { "reserved" } th.num { "realized" } th { "opened" } th { "closed" } th { "intent" } }
            @for p in &a.positions {
                tr {
                    td { (p.symbol) } td { (p.side) } td.num { (money(p.quantity)) }
                    td.num { (p.entry_price.map(money).unwrap_or_default()) }
                    td.num { (money(p.cost_basis)) } td.num { (money(p.reserved)) } td.num { (money(p.realized_pnl)) }
                    td { (when(p.opened_at)) } td { (maybe_when(p.closed_at)) }
                    td.mono { @if let Some(i) = p.intent_id { a href={"/trading/intents/" (i)} { (short(&i)) } } }
                }
            }
        } }
        @if a.positions.is_empty() { p.muted { "No position." } }
        h2 { "Open mismatches" }
        @if a.mismatches.is_empty() { p.muted { "None: the venue and the database agree." } } @else {
            table #mismatches {
                tr { th { "kind" } th { "subject" } th { "found" } th { "last seen" } th { "details" } }
                @for m in &a.mismatches {
                    tr { td { span.pill.unhealthy { (m.kind) } } td.mono { (m.subject) } td { (when(m.found_at)) } td { (when(m.last_seen_at)) } td.mono { (m.details.to_string()) } }
                }
            }
        }
        h2 { "Reconciliation runs" }
        div.scroll { table #runs {
            tr { th { "started" } th { "why" } th.num { "took" } th.num { "requests" } th { "result" } th { "found" } th { "fixed" } th { "remaining" } }
            @for r in &a.runs {
                tr {
                    td { (when(r.started_at)) } td { (r.reason) }
                    td.num { (format!("{:.0} ms", r.duration_ms)) } td.num { (r.requests) }
                    td { @if r.ok { span.pill.ok { "ok" } } @else { span.pill.failed title=(r.error.as_deref().unwrap_or("")) { "failed" } " " (r.error.as_deref().unwrap_or("")) } }
                    td.mono { (r.found.to_string()) } td.mono { (r.fixed.to_string()) } td.mono { (r.remaining.to_string()) }
                }
            }
        } }
        h2 { "Orders" }
        (orders_table(&a.orders))
    };
    page::layout(
        Section::Trading,
        &format!("Account {}", a.label),
        None,
        body,
    )
}

pub async fn intent(State(state): State<AppState>, Path(id): Path<Uuid>) -> page::Page {
    let i = match page::found(
        trading::intent(&state.pool, id).await,
        Section::Trading,
        || format!("no intent {id}"),
    ) {
        Ok(found) => found,
        Err(missing) => return missing,
    };
    let body = html! {
        p { span class={"pill " (i.status)} { (i.status) } " " (i.tenant) " · " (i.origin) @if let Some(r) = &i.reason { " · " span.error { (r) } } }
        dl.facts {
            dt { "id" } dd.mono { (i.id) }
            dt { "idempotency key" } dd.mono { (i.idempotency_key) }
            dt { "created" } dd { (when(i.created_at)) }
            dt { "updated" } dd { (when(i.updated_at)) }
        }
        h2 { "Legs, as written" }
        (json(&i.legs_json))
        h2 { "Orders" }
        (orders_table(&i.orders))
        h2 { "Fills" }
        div.scroll { table #fills {
            tr { th { "order" } th { "venue fill id" } th.num { "qty" } th.num { "price" } th.num { "fee" } th { "filled" } th { "from" } }
            @for f in &i.fills {
                tr { td.mono { (short(&f.order_id)) } td.mono { (f.venue_fill_id) } td.num { (money(f.quantity)) } td.num { (money(f.price)) } td.num { (money(f.fee)) } td { (when(f.filled_at)) } td { (f.source) } }
            }
        } }
        @if i.fills.is_empty() { p.muted { "No fill." } }
        h2 { "Audit trail" }
        div.scroll { table #audit-trail {
            tr { th.num { "seq" } th { "when" } th { "event" } th { "subject" } th { "details" } }
            @for e in &i.audit {
                tr { td.num { (e.seq.map(|s| s.to_string()).unwrap_or_default()) } td { (when(e.created_at)) } td { (e.event_type) } td.mono { (e.subject_type) " " (e.subject_id.get(..8).unwrap_or(&e.subject_id)) } td.mono.truncate title=(e.details.to_string()) { (e.details.to_string()) } }
            }
        } }
    };
    page::layout(
        Section::Trading,
        &format!("Intent {}", short(&i.id)),
        None,
        body,
    )
}

pub async fn alerts(State(state): State<AppState>) -> page::Page {
    let alerts = match trading::alerts(&state.pool, 100).await {
        Ok(a) => a,
        Err(e) => return page::internal(Section::Alerts, &e),
    };
    let body = html! {
        p.muted { "The newest alerts and their delivery to Discord." }
        div.scroll { table #alerts {
            tr { th.num { "#" } th { "created" } th { "tenant" } th { "user" } th { "kind" } th { "delivery" } th.num { "attempts" } th { "sent" } th { "last error" } th { "payload" } }
            @for a in &alerts {
                tr {
                    td.num { (a.id) } td { (when(a.created_at)) } td { (a.tenant) } td { (a.user_id.as_deref().unwrap_or("")) }
                    td { (a.kind) } td { span class={"pill " (a.status)} { (a.status) } } td.num { (a.attempts) }
                    td { (maybe_when(a.sent_at)) } td.error { (a.last_error.as_deref().unwrap_or("")) }
                    td.mono.truncate title=(a.payload.to_string()) { (a.payload.to_string()) }
                }
            }
        } }
        @if alerts.is_empty() { p.muted { "No alert yet." } }
    };
    page::layout(Section::Alerts, "Alerts", None, body)
}
