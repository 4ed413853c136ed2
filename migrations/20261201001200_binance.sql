-- Binance.US: the venue, its normalised instruments, and a ban on an account's
-- requests (Binance's 418) that every process and job honours.

INSERT INTO venues (id, name, kind) VALUES ('binance', 'Binance.US', 'exchange')
ON CONFLICT (id) DO NOTHING;

-- Binance.US's filters for the pairs the platform trades (exchangeInfo: PRICE_FILTER
-- tickSize, LOT_SIZE stepSize/minQty, NOTIONAL minNotional); the client checks the
-- venue's own exchangeInfo again before it sends.
INSERT INTO instruments (venue_id, symbol, venue_symbol, asset_class, tick_size, lot_size, min_quantity, min_notional)
VALUES ('binance', 'BTC/USD', 'BTCUSD', 'crypto', 0.01, 0.00001, 0.00001, 10),
       ('binance', 'ETH/USD', 'ETHUSD', 'crypto', 0.01, 0.0001, 0.0001, 10),
       ('binance', 'SOL/USD', 'SOLUSD', 'crypto', 0.01, 0.001, 0.001, 10)
ON CONFLICT DO NOTHING;

-- Until when the venue has banned the account's requests (NULL: not banned).
ALTER TABLE venue_request_budgets ADD COLUMN banned_until timestamptz;

-- The budget, as before (`counts[i]` of `accounts[i]` in this minute's window, in the
-- venue's unit: requests at Alpaca, weight at Binance), with each account's venue
-- (whose limit applies) and how long it is still banned (0: not banned; nothing is
-- counted while banned).
DROP FUNCTION take_venue_budget(uuid, uuid[], integer[]);
CREATE FUNCTION take_venue_budget(tenant uuid, accounts uuid[], counts integer[])
RETURNS TABLE (used integer, banned_ms bigint, venue_id text)
LANGUAGE plpgsql
SET search_path = public, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH taken AS (
        INSERT INTO venue_request_budgets AS b (tenant_id, account_id, window_start, used)
        SELECT tenant, w.a, date_trunc('minute', now()), w.n FROM unnest(accounts, counts) AS w(a, n)
        ON CONFLICT (tenant_id, account_id) DO UPDATE SET
            used = CASE WHEN b.banned_until > now() THEN b.used
                        WHEN b.window_start = date_trunc('minute', now()) THEN b.used + excluded.used
                        ELSE excluded.used END,
            window_start = CASE WHEN b.banned_until > now() THEN b.window_start
                                ELSE date_trunc('minute', now()) END
        RETURNING b.account_id, b.used,
                  CASE WHEN b.banned_until > now()
                       THEN ceil(extract(epoch FROM b.banned_until - now()) * 1000)::bigint
                       ELSE 0 END AS wait_ms
    )
    SELECT taken.used, taken.wait_ms, coalesce(a.venue_id, '')
    FROM taken LEFT JOIN trading_accounts a ON a.id = taken.account_id;
END
$$;

-- Why the venue refused a leg when it was sent (its own words, cut to 300
-- characters): the intent's reason says it whichever path fails the intent.
ALTER TABLE orders ADD COLUMN reject_reason text CHECK (length(reject_reason) <= 300);
