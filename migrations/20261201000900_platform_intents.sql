-- Intents in the platform's own shape (seed 000): legs keyed by name, each naming a
-- venue rather than an account, and the `intent_id` column the platform's insert
-- names. Symbols are normalised per venue in `instruments`.

-- The client's own id for the intent (the platform's inserts name it; its helper reads
-- it back). Unique per tenant when given.
ALTER TABLE multi_leg_intents ADD COLUMN intent_id uuid;
CREATE UNIQUE INDEX multi_leg_intents_client_id ON multi_leg_intents (tenant_id, intent_id)
    WHERE intent_id IS NOT NULL;
-- The columns the platform's inserts name (id, intent_id, status, created_at)...
GRANT INSERT (id, intent_id, status, created_at) ON multi_leg_intents TO pulse_client;
-- ...within what a new intent can be: pending, from a client, dated now.
CREATE POLICY client_inserts_new_intents ON multi_leg_intents AS RESTRICTIVE FOR INSERT
    TO pulse_client
    WITH CHECK (status = 'pending' AND origin = 'client'
                AND created_at BETWEEN now() - interval '5 minutes' AND now() + interval '5 minutes');

-- Where a leg that names only a venue trades: the tenant's default account there.
ALTER TABLE trading_accounts ADD COLUMN is_default boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX trading_accounts_one_default ON trading_accounts (tenant_id, venue_id)
    WHERE is_default;

-- One instrument per venue symbol: `symbol` is the normalised spelling a leg may use
-- (`BTC/USD`), `venue_symbol` the venue's own (`BTCUSD` on Binance.US, `BTC/USD` on
-- Alpaca), with the venue's precision and minimums, enforced before anything is sent.
ALTER TABLE instruments
    ADD COLUMN venue_symbol text,
    ADD COLUMN min_quantity numeric(28, 10) NOT NULL DEFAULT 0 CHECK (min_quantity >= 0),
    ADD COLUMN min_notional numeric(28, 10) NOT NULL DEFAULT 0 CHECK (min_notional >= 0);
UPDATE instruments SET venue_symbol = symbol;
ALTER TABLE instruments ALTER COLUMN venue_symbol SET NOT NULL;
ALTER TABLE instruments ADD CONSTRAINT instruments_positive_steps CHECK (tick_size > 0 AND lot_size > 0);
CREATE UNIQUE INDEX instruments_venue_symbol ON instruments (venue_id, venue_symbol);
