-- Reconciliation (issue 11): each account's orders, fills, positions and ledger
-- compared with the venue's truth by `reconcile_account`, on a schedule and when a
-- worker process starts; what differs is applied through the order lifecycle or,
-- where nothing may be changed for it (a position, the ledger), recorded, audited and
-- alerted.

-- 1. Which accounts trade (reconciliation and the start-up gate look only at these).
ALTER TABLE trading_accounts ADD COLUMN active boolean NOT NULL DEFAULT true;

-- 2. Orders the venue told us of that no intent of ours placed: by hand, or by an
--    attempt whose record was lost. Each is imported under an intent of its own,
--    origin 'external', which the OMS never executes.
ALTER TABLE multi_leg_intents
    ADD COLUMN origin text NOT NULL DEFAULT 'client' CHECK (origin IN ('client', 'external')),
    -- When the intent first found an entry lock taken (the lock-wait histogram).
    ADD COLUMN lock_waited_since timestamptz;
ALTER TABLE orders
    ADD COLUMN origin text NOT NULL DEFAULT 'oms' CHECK (origin IN ('oms', 'external')),
    -- Look-ups by client order id of an order stuck in flight (sent, unanswered).
    ADD COLUMN inflight_checks integer NOT NULL DEFAULT 0;
CREATE INDEX orders_in_flight ON orders (account_id, updated_at)
    WHERE status IN ('sent', 'submit_unknown');
CREATE INDEX orders_working ON orders (account_id)
    WHERE status IN ('accepted', 'partially_filled');

DROP TRIGGER multi_leg_intents_enqueue ON multi_leg_intents;
CREATE TRIGGER multi_leg_intents_enqueue AFTER INSERT ON multi_leg_intents
    FOR EACH ROW WHEN (NEW.origin = 'client') EXECUTE FUNCTION enqueue_execute_intent();

-- 3. Per account: the start-up gate, the cursors and the last runs.
CREATE TABLE account_reconciliation (
    tenant_id       uuid NOT NULL,
    account_id      uuid NOT NULL,
    -- Set when a worker process starts: the account's new intents wait (they are
    -- not refused) until a reconciliation that started after this succeeds.
    gate_since      timestamptz,
    -- Reconciled up to here: FILL activities, and orders listed for unknown ones.
    fills_after     timestamptz,
    orders_after    timestamptz,
    last_run_at     timestamptz,
    last_success_at timestamptz,
    PRIMARY KEY (tenant_id, account_id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id)
);

-- One row per run: what it found, fixed and left, by kind; its cost.
CREATE TABLE reconciliation_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    account_id  uuid NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('schedule', 'startup', 'manual')),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    duration_ms double precision NOT NULL,
    requests    integer NOT NULL,
    ok          boolean NOT NULL,
    error       text,
    found       jsonb NOT NULL DEFAULT '{}',
    fixed       jsonb NOT NULL DEFAULT '{}',
    remaining   jsonb NOT NULL DEFAULT '{}',
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id)
);
CREATE INDEX reconciliation_runs_account ON reconciliation_runs (account_id, started_at DESC);

-- Every difference found, both sides kept. Open (resolved_at NULL) while it lasts:
-- one open row per (account, kind, subject); a run that finds it gone resolves it.
CREATE TABLE reconciliation_mismatches (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    account_id   uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('order_state', 'in_flight', 'unknown_order', 'missing_fill',
                                                'open_at_venue', 'position', 'ledger_drift')),
    -- A client order id, a fill key, a symbol, or 'ledger'.
    subject      text NOT NULL,
    details      jsonb NOT NULL,
    found_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    resolution   text,
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id)
);
CREATE UNIQUE INDEX reconciliation_mismatches_open
    ON reconciliation_mismatches (tenant_id, account_id, kind, subject) WHERE resolved_at IS NULL;
CREATE INDEX reconciliation_mismatches_found ON reconciliation_mismatches (found_at);

SELECT enable_tenant_isolation(t) FROM unnest(ARRAY[
    'account_reconciliation', 'reconciliation_runs', 'reconciliation_mismatches'
]::regclass[]) AS t;
GRANT SELECT, INSERT, UPDATE ON account_reconciliation, reconciliation_runs, reconciliation_mismatches
    TO pulse_worker;
GRANT SELECT ON account_reconciliation, reconciliation_runs, reconciliation_mismatches TO pulse_client;
GRANT INSERT ON multi_leg_intents TO pulse_worker;

-- ---------------------------------------------------------------------------------
-- Definer functions. The helper that hands a function to its definer role is kept
-- from here on (earlier migrations each made a pg_temp copy), usable only by the
-- migrating role.
CREATE OR REPLACE FUNCTION public.give_function_to(fn regprocedure, owner name) RETURNS void
    LANGUAGE plpgsql AS $$
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
REVOKE ALL ON FUNCTION public.give_function_to(regprocedure, name) FROM PUBLIC;

GRANT SELECT (active) ON public.trading_accounts TO pulse_syncer;
GRANT SELECT, INSERT, UPDATE ON public.account_reconciliation TO pulse_syncer;
CREATE POLICY syncer_gates ON account_reconciliation TO pulse_syncer USING (true) WITH CHECK (true);

-- Asks for one reconcile_account per active account with venue credentials, one at a
-- time per account (the concurrency key reconcile:<account>).
--   'schedule': keyed by account and tick bucket, so overlapping ticks and several
--               schedulers ask once per bucket;
--   'startup':  a worker process starts. The account's gate closes (new intents wait)
--               and one reconciliation is asked for per closing: N processes starting
--               at once close it once, so they ask once.
-- Returns how many it asked for.
CREATE FUNCTION public.request_reconciliations(reason text, bucket_secs integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    IF reason = 'startup' THEN
        WITH accounts AS (
            SELECT DISTINCT a.tenant_id, a.id FROM public.trading_accounts a
            JOIN public.account_credentials c ON c.tenant_id = a.tenant_id AND c.account_id = a.id
            WHERE a.active),
        closed AS (
            INSERT INTO public.account_reconciliation AS r (tenant_id, account_id, gate_since)
            SELECT tenant_id, id, clock_timestamp() FROM accounts
            ON CONFLICT (tenant_id, account_id) DO UPDATE SET gate_since = excluded.gate_since
                WHERE r.gate_since IS NULL
            RETURNING r.tenant_id, r.account_id, r.gate_since)
        SELECT count(fleet.enqueue('reconcile_account',
                   jsonb_build_object('tenant_id', c.tenant_id, 'account_id', c.account_id, 'reason', 'startup'),
                   'reconcile:' || c.account_id || ':startup:' || (extract(epoch FROM c.gate_since) * 1000000)::bigint,
                   NULL, 1, NULL, 'reconcile:' || c.account_id))
        INTO n FROM closed c;
        RETURN n;
    END IF;
    SELECT count(fleet.enqueue('reconcile_account',
               jsonb_build_object('tenant_id', a.tenant_id, 'account_id', a.id, 'reason', 'schedule'),
               'reconcile:' || a.id || ':tick:' || floor(extract(epoch FROM now()) / greatest(bucket_secs, 1))::bigint,
               NULL, 0, NULL, 'reconcile:' || a.id))
    INTO n
    FROM (SELECT DISTINCT a.tenant_id, a.id FROM public.trading_accounts a
          JOIN public.account_credentials c ON c.tenant_id = a.tenant_id AND c.account_id = a.id
          WHERE a.active) a;
    RETURN n;
END $$;

-- Whether the OMS is done with an intent (its execute_intent job finished, or pruned):
-- only then may reconciliation resolve one of its orders stuck in flight, or the
-- OMS's own retry could send it after reconciliation declared it never received.
CREATE FUNCTION public.intent_job_finished(intent uuid) RETURNS boolean LANGUAGE sql STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (SELECT 1 FROM fleet.jobs j
                       WHERE j.job_name = 'execute_intent' AND j.idempotency_key = 'intent:' || intent
                         AND j.state IN ('available', 'running'))
$$;

SELECT public.give_function_to(f, 'pulse_syncer') FROM unnest(ARRAY[
    'public.request_reconciliations(text, integer)', 'public.intent_job_finished(uuid)'
]::regprocedure[]) AS f;
GRANT EXECUTE ON FUNCTION public.request_reconciliations(text, integer), public.intent_job_finished(uuid)
    TO pulse_worker;
