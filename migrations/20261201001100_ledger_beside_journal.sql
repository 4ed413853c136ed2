-- Each account's capital ledger beside the sum of its journal, in one place: what
-- reconciliation compares (ledger drift), what the console shows, and what
-- capital_ledger_drift narrows to the accounts where they differ.
CREATE VIEW capital_ledger_vs_journal WITH (security_invoker = true) AS
    SELECT l.tenant_id, l.account_id, l.allocated, l.reserved_for_orders,
           l.reserved_for_positions, l.realized_pnl, l.updated_at,
           coalesce(j.allocated, 0) AS journal_allocated,
           coalesce(j.reserved_for_orders, 0) AS journal_reserved_for_orders,
           coalesce(j.reserved_for_positions, 0) AS journal_reserved_for_positions,
           coalesce(j.realized_pnl, 0) AS journal_realized_pnl
    FROM capital_ledgers l
    -- Per account (the journal's account index), so that reading one account reads
    -- only its entries.
    LEFT JOIN LATERAL (
        SELECT sum(c.d_allocated) AS allocated,
               sum(c.d_reserved_for_orders) AS reserved_for_orders,
               sum(c.d_reserved_for_positions) AS reserved_for_positions,
               sum(c.d_realized_pnl) AS realized_pnl
        FROM capital_journal c
        WHERE c.tenant_id = l.tenant_id AND c.account_id = l.account_id
    ) j ON true;
GRANT SELECT ON capital_ledger_vs_journal TO pulse_worker, pulse_client;

CREATE OR REPLACE VIEW capital_ledger_drift WITH (security_invoker = true) AS
    SELECT tenant_id, account_id,
           allocated - journal_allocated AS allocated,
           reserved_for_orders - journal_reserved_for_orders AS reserved_for_orders,
           reserved_for_positions - journal_reserved_for_positions AS reserved_for_positions,
           realized_pnl - journal_realized_pnl AS realized_pnl
    FROM capital_ledger_vs_journal
    WHERE (allocated, reserved_for_orders, reserved_for_positions, realized_pnl)
          IS DISTINCT FROM (journal_allocated, journal_reserved_for_orders,
                            journal_reserved_for_positions, journal_realized_pnl);
