-- The order lifecycle (issue 10): orders followed to their end, fills recorded once,
-- positions with realised PnL, and the capital ledger's fill, release and exit moves,
-- each keyed by the event that caused it.

-- 1. Orders: what the venue says the order came to when it ended. The remainder of
--    its reservation is released only once the fills recorded reach this quantity, so
--    a fill that is learnt after the cancel still finds its share.
ALTER TABLE orders ADD COLUMN final_filled_quantity numeric(28, 10);
-- The orders a sync must follow: not yet terminal, or terminal with fills to learn.
CREATE INDEX orders_to_follow ON orders (tenant_id, account_id)
    WHERE status IN ('sent', 'submit_unknown', 'accepted', 'partially_filled')
       OR (final_filled_quantity IS NOT NULL AND filled_quantity < final_filled_quantity);
CREATE INDEX orders_by_venue_id ON orders (tenant_id, account_id, venue_order_id);

-- 2. Fills: venue_fill_id is '<venue order id>:<cumulative quantity after the fill>'
--    (see lifecycle/mod.rs): the stream and the FILL activities both carry it, so a
--    fill has one key whatever path delivered it.
ALTER TABLE fills ADD COLUMN account_id uuid,
                  ADD COLUMN source text NOT NULL DEFAULT 'sync' CHECK (source IN ('stream', 'sync')),
                  ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX fills_order ON fills (tenant_id, order_id);

-- 3. Positions (seed 002): one open logical position per (tenant, account, symbol),
--    its leg carrying quantity, cost basis (average cost), the capital it holds in
--    reserved_for_positions, and the PnL it has realised.
ALTER TABLE position_legs ADD COLUMN cost_basis   numeric(28, 10) NOT NULL DEFAULT 0,
                          ADD COLUMN reserved     numeric(28, 10) NOT NULL DEFAULT 0 CHECK (reserved >= 0),
                          ADD COLUMN realized_pnl numeric(28, 10) NOT NULL DEFAULT 0,
                          ADD COLUMN opened_at    timestamptz NOT NULL DEFAULT now(),
                          ADD COLUMN closed_at    timestamptz,
                          ADD CONSTRAINT position_legs_quantity CHECK (quantity >= 0);
CREATE UNIQUE INDEX position_legs_one_open ON position_legs (tenant_id, account_id, symbol)
    WHERE closed_at IS NULL;
ALTER TABLE position_fills ADD COLUMN realized_pnl numeric(28, 10) NOT NULL DEFAULT 0;

-- 4. Capital journal rows are keyed by the event that caused them: a replayed event
--    inserts nothing (ON CONFLICT DO NOTHING), so the ledger moves once.
ALTER TABLE capital_journal ADD COLUMN event_key text;
CREATE UNIQUE INDEX capital_journal_event ON capital_journal (tenant_id, event_key);

-- 5. The inbox of venue events (the trade_updates stream, normalised): each event is
--    stored once and becomes one apply_venue_event job, in the same transaction.
CREATE TABLE venue_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    account_id  uuid NOT NULL,
    event_key   text NOT NULL,
    body        jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at  timestamptz,
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id),
    UNIQUE (tenant_id, account_id, event_key)
);
CREATE INDEX venue_events_applied ON venue_events (applied_at) WHERE applied_at IS NOT NULL;

-- 6. Where each account's sync has got to: FILL activities are read after this time
--    (less a margin; recording is idempotent), and when the last sync ran.
CREATE TABLE venue_sync_state (
    tenant_id        uuid NOT NULL,
    account_id       uuid NOT NULL,
    fills_after      timestamptz,
    last_synced_at   timestamptz,
    last_requests    integer NOT NULL DEFAULT 0,
    stream_connected boolean NOT NULL DEFAULT false,
    -- Counts the stream's connections: each one is followed by its own sync.
    stream_connects  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, account_id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id)
);

SELECT enable_tenant_isolation(t) FROM unnest(ARRAY['venue_events', 'venue_sync_state']::regclass[]) AS t;
GRANT SELECT, INSERT, UPDATE, DELETE ON venue_events TO pulse_worker;
GRANT SELECT, INSERT, UPDATE ON venue_sync_state TO pulse_worker;
GRANT SELECT ON venue_sync_state TO pulse_client;
GRANT INSERT ON alerts TO pulse_worker;

-- ---------------------------------------------------------------------------------
-- Definer functions, as the trust migration lays them out.
CREATE FUNCTION pg_temp.give_to(fn regprocedure, owner name) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    nsp name := (SELECT n.nspname FROM pg_catalog.pg_proc p
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = fn);
    super boolean := (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
BEGIN
    IF NOT super THEN
        EXECUTE format('GRANT %I TO %I', owner, current_user);
        EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', nsp, owner);
    END IF;
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', fn, owner);
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    IF NOT super THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM %I', nsp, owner);
    END IF;
END $$;

-- A stored venue event becomes one job, keyed by the event.
CREATE FUNCTION public.enqueue_venue_event() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fleet.enqueue('apply_venue_event',
        jsonb_build_object('tenant_id', NEW.tenant_id, 'event_id', NEW.id), 'venue_event:' || NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER venue_events_enqueue AFTER INSERT ON venue_events
    FOR EACH ROW EXECUTE FUNCTION public.enqueue_venue_event();

-- Orders the venue has just accepted get their account synced shortly after: one sync
-- per account per 10-second bucket however many orders were accepted (the key), and
-- one at a time per account (the concurrency key).
CREATE FUNCTION public.sync_after_accept() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fleet.enqueue('sync_account',
                jsonb_build_object('tenant_id', a.tenant_id, 'account_id', a.account_id),
                'sync:' || a.account_id || ':' || floor(extract(epoch FROM now()) / 10)::bigint,
                now() + interval '2 seconds', 0, NULL, 'sync:' || a.account_id)
    FROM (SELECT DISTINCT n.tenant_id, n.account_id
          FROM new_orders n JOIN old_orders o ON o.id = n.id
          WHERE o.status IN ('pending_submit', 'sent', 'submit_unknown')
            AND n.status NOT IN ('pending_submit', 'sent', 'submit_unknown')) a;
    RETURN NULL;
END $$;
CREATE TRIGGER orders_sync_after_accept AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_orders NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION public.sync_after_accept();

-- A stream that (re)connects has missed whatever happened while it was away (the
-- stream does not replay): its account is synced at once.
CREATE FUNCTION public.sync_after_connect() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fleet.enqueue('sync_account',
                jsonb_build_object('tenant_id', NEW.tenant_id, 'account_id', NEW.account_id),
                'sync:' || NEW.account_id || ':connect:' || NEW.stream_connects,
                NULL, 0, NULL, 'sync:' || NEW.account_id);
    RETURN NULL;
END $$;
CREATE TRIGGER venue_sync_state_connected AFTER INSERT ON venue_sync_state
    FOR EACH ROW WHEN (NEW.stream_connected) EXECUTE FUNCTION public.sync_after_connect();
CREATE TRIGGER venue_sync_state_reconnected AFTER UPDATE OF stream_connects ON venue_sync_state
    FOR EACH ROW WHEN (NEW.stream_connects > OLD.stream_connects)
    EXECUTE FUNCTION public.sync_after_connect();

SELECT pg_temp.give_to(f, 'pulse_enqueuer') FROM unnest(ARRAY[
    'public.enqueue_venue_event()', 'public.sync_after_accept()', 'public.sync_after_connect()'
]::regprocedure[]) AS f;

-- pulse_syncer: sees which accounts have orders to follow and which accounts have
-- venue credentials, across tenants, and nothing else of them (column grants).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pulse_syncer') THEN
        BEGIN
            CREATE ROLE pulse_syncer NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END $$;
GRANT SELECT (tenant_id, account_id, status, filled_quantity, final_filled_quantity)
    ON public.orders TO pulse_syncer;
GRANT SELECT (tenant_id, id, venue_id) ON public.trading_accounts TO pulse_syncer;
GRANT SELECT (tenant_id, account_id) ON public.account_credentials TO pulse_syncer;
CREATE POLICY syncer_reads ON orders FOR SELECT TO pulse_syncer USING (true);
CREATE POLICY syncer_reads ON trading_accounts FOR SELECT TO pulse_syncer USING (true);
CREATE POLICY syncer_reads ON account_credentials FOR SELECT TO pulse_syncer USING (true);
GRANT USAGE ON SCHEMA fleet TO pulse_syncer;
GRANT SELECT ON fleet.job_types TO pulse_syncer;
GRANT SELECT, INSERT ON fleet.jobs TO pulse_syncer;
GRANT INSERT ON fleet.stat_deltas TO pulse_syncer;
GRANT EXECUTE ON FUNCTION fleet.enqueue(text, jsonb, text, timestamptz, integer, integer, text)
    TO pulse_syncer;

-- The scheduled fan-out: one sync_account per account with orders to follow, keyed by
-- account and tick bucket. Returns how many accounts it asked for.
CREATE FUNCTION public.request_order_syncs(bucket_secs integer) RETURNS integer LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM fleet.enqueue('sync_account',
                jsonb_build_object('tenant_id', a.tenant_id, 'account_id', a.account_id),
                'sync:' || a.account_id || ':tick:' || floor(extract(epoch FROM now()) / greatest(bucket_secs, 1))::bigint,
                NULL, 0, NULL, 'sync:' || a.account_id)
    FROM (SELECT DISTINCT o.tenant_id, o.account_id FROM public.orders o
          WHERE o.status IN ('sent', 'submit_unknown', 'accepted', 'partially_filled')
             OR (o.final_filled_quantity IS NOT NULL AND o.filled_quantity < o.final_filled_quantity)) a;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- The accounts a stream listener follows: every account with venue credentials.
CREATE FUNCTION public.streamed_accounts()
    RETURNS TABLE (tenant_id uuid, account_id uuid, venue_id text) LANGUAGE sql STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT a.tenant_id, a.id, a.venue_id
    FROM public.trading_accounts a
    JOIN public.account_credentials c ON c.tenant_id = a.tenant_id AND c.account_id = a.id
    ORDER BY 1, 2
$$;

SELECT pg_temp.give_to(f, 'pulse_syncer') FROM unnest(ARRAY[
    'public.request_order_syncs(integer)', 'public.streamed_accounts()'
]::regprocedure[]) AS f;
GRANT EXECUTE ON FUNCTION public.request_order_syncs(integer), public.streamed_accounts() TO pulse_worker;

DROP FUNCTION pg_temp.give_to(regprocedure, name);

-- A fill that takes a position through zero closes one leg and opens another: two
-- position_fills rows for one fill, one per leg.
ALTER TABLE position_fills DROP CONSTRAINT position_fills_tenant_id_fill_id_key,
                           ADD CONSTRAINT position_fills_once UNIQUE (tenant_id, fill_id, leg_id);
