-- Trust boundaries (issue 8): definer functions that cannot be hijacked, clients kept
-- out of the queue, and a client's tenant checked against its verified user.
--
-- 1. Every SECURITY DEFINER function pins `search_path = pg_catalog, pg_temp` (the
--    session's temporary schema last, so a temp table or function can never shadow
--    what the body names), names every object schema-qualified, and is owned by a
--    NOLOGIN role that holds only the privileges its body needs: no superuser, no
--    BYPASSRLS. Before, they were owned by whoever ran the migrations (a superuser)
--    with pg_temp searched first: a client could shadow a table with a temp table
--    whose trigger then ran with the owner's rights.
-- 2. Clients get nothing in `fleet`: their writes enqueue through triggers, which run
--    as pulse_enqueuer. Keys that triggers make are namespaced by the table they come
--    from, and no client can write a key at all.
-- 3. current_tenant_id() verifies a client session's tenant against the user the
--    gateway authenticated (request.jwt.claims ->> 'sub', PostgREST's convention) and
--    tenant_members.
-- PUBLIC loses TEMP on the database and CREATE on schema public.

-- The definer roles. Cluster-wide like every role: another database's migration may
-- create them at the same time.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pulse_enqueuer', 'pulse_ledger', 'pulse_auditor', 'pulse_tenancy'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END $$;

-- Gives a function to its definer role. A superuser may do so directly; another
-- migrating role needs, for the moment of the change, membership of the new owner
-- and CREATE on the function's schema (PostgreSQL's rule for ALTER ... OWNER), which
-- is taken back at once.
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

-- ---------------------------------------------------------------------------------
-- pulse_enqueuer: the triggers that turn business writes into jobs. It may use the
-- queue's way in and write the watcher inbox, nothing else.
GRANT USAGE ON SCHEMA fleet TO pulse_enqueuer;
GRANT SELECT ON fleet.job_types TO pulse_enqueuer;
GRANT SELECT, INSERT ON fleet.jobs TO pulse_enqueuer;
GRANT INSERT ON fleet.stat_deltas TO pulse_enqueuer;
GRANT EXECUTE ON FUNCTION fleet.enqueue(text, jsonb, text, timestamptz, integer, integer, text),
                          fleet.enqueue_batch(text, jsonb[], text[], timestamptz, integer, integer)
    TO pulse_enqueuer;
GRANT SELECT, INSERT ON public.watcher_events TO pulse_enqueuer;

CREATE OR REPLACE FUNCTION public.enqueue_execute_intent() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fleet.enqueue('execute_intent',
        jsonb_build_object('intent_id', NEW.id, 'tenant_id', NEW.tenant_id), 'intent:' || NEW.id);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public.enqueue_alert() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fleet.enqueue('send_alert',
        jsonb_build_object('alert_id', NEW.id, 'tenant_id', NEW.tenant_id), 'alert:' || NEW.id);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION billing.enqueue_stripe_event() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fleet.enqueue('process_payment', jsonb_build_object('event_id', NEW.event_id),
                          'stripe:' || NEW.event_id);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public.enqueue_watcher_event() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM fleet.enqueue('sync_watcher', jsonb_build_object('event_id', NEW.id),
                          'user_symbol:' || NEW.source_id || ':' || NEW.source_version || ':' || NEW.type);
    RETURN NULL;
END $$;

-- Writes the platform-level inbox on a client's behalf (ids and row images only).
CREATE OR REPLACE FUNCTION public.record_user_symbol_change() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.watcher_events (source_id, source_version, type, record, old_record)
    VALUES (coalesce(NEW.id, OLD.id),
            CASE TG_OP WHEN 'DELETE' THEN OLD.version + 1 ELSE NEW.version END,
            TG_OP,
            CASE TG_OP WHEN 'DELETE' THEN NULL ELSE to_jsonb(NEW) END,
            CASE TG_OP WHEN 'INSERT' THEN NULL ELSE to_jsonb(OLD) END)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

SELECT pg_temp.give_to(f, 'pulse_enqueuer') FROM unnest(ARRAY[
    'public.enqueue_execute_intent()', 'public.enqueue_alert()', 'billing.enqueue_stripe_event()',
    'public.enqueue_watcher_event()', 'public.record_user_symbol_change()'
]::regprocedure[]) AS f;

-- ---------------------------------------------------------------------------------
-- pulse_ledger: applies capital journal rows to their ledger row. It runs under the
-- tenant's row-level security like the transaction that wrote the journal row.
GRANT SELECT, INSERT, UPDATE ON public.capital_ledgers TO pulse_ledger;

CREATE OR REPLACE FUNCTION public.apply_capital_journal() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    LOOP
        UPDATE public.capital_ledgers SET
            allocated = allocated + NEW.d_allocated,
            reserved_for_orders = reserved_for_orders + NEW.d_reserved_for_orders,
            reserved_for_positions = reserved_for_positions + NEW.d_reserved_for_positions,
            realized_pnl = realized_pnl + NEW.d_realized_pnl,
            updated_at = now()
        WHERE tenant_id = NEW.tenant_id AND account_id = NEW.account_id;
        IF FOUND THEN
            RETURN NULL;
        END IF;
        BEGIN
            INSERT INTO public.capital_ledgers (tenant_id, account_id, allocated, reserved_for_orders,
                                                reserved_for_positions, realized_pnl)
            VALUES (NEW.tenant_id, NEW.account_id, NEW.d_allocated, NEW.d_reserved_for_orders,
                    NEW.d_reserved_for_positions, NEW.d_realized_pnl);
            RETURN NULL;
        EXCEPTION WHEN unique_violation THEN
            -- A concurrent first entry created the row: apply ours to it.
        END;
    END LOOP;
END $$;
SELECT pg_temp.give_to('public.apply_capital_journal()', 'pulse_ledger');

-- ---------------------------------------------------------------------------------
-- pulse_auditor: seals the tenant's audit events (the one UPDATE the table accepts).
GRANT SELECT, UPDATE ON public.audit_events TO pulse_auditor;

CREATE OR REPLACE FUNCTION public.audit_seal(max_events integer) RETURNS integer LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := public.current_tenant_id();
    last_seq bigint;
    last_hash bytea;
    e record;
    sealed integer := 0;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'audit_seal needs app.tenant_id';
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('audit_events'), hashtext(t::text)) THEN
        RETURN 0;
    END IF;
    SELECT a.seq, a.hash INTO last_seq, last_hash FROM public.audit_events a
    WHERE a.tenant_id = t AND a.seq IS NOT NULL ORDER BY a.seq DESC LIMIT 1;
    last_seq := coalesce(last_seq, 0);
    last_hash := coalesce(last_hash, '\x'::bytea);
    FOR e IN SELECT a.id, a.event_type, a.subject_type, a.subject_id, a.details, a.created_at
             FROM public.audit_events a WHERE a.tenant_id = t AND a.hash IS NULL
             ORDER BY a.id LIMIT max_events LOOP
        last_seq := last_seq + 1;
        UPDATE public.audit_events SET seq = last_seq, prev_hash = last_hash,
            hash = sha256(last_hash || convert_to(public.audit_canonical(t, last_seq, e.event_type,
                e.subject_type, e.subject_id, e.details, e.created_at), 'UTF8'))
        WHERE id = e.id
        RETURNING hash INTO last_hash;
        sealed := sealed + 1;
    END LOOP;
    RETURN sealed;
END $$;
SELECT pg_temp.give_to('public.audit_seal(integer)', 'pulse_auditor');
GRANT EXECUTE ON FUNCTION public.audit_seal(integer) TO pulse_worker;

-- ---------------------------------------------------------------------------------
-- pulse_tenancy: answers whether the gateway's user is a member of a tenant. It reads
-- tenant_members under the tenant's own row-level security (its rows of that tenant).
GRANT SELECT ON public.tenant_members TO pulse_tenancy;

-- The verified tenant of a client session: `tenant` if the user the gateway
-- authenticated (request.jwt.claims ->> 'sub') is one of its members; otherwise the
-- statement fails. Client sessions never choose their tenant unchecked.
CREATE FUNCTION public.client_tenant(tenant uuid) RETURNS uuid LANGUAGE plpgsql STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    claims text := nullif(current_setting('request.jwt.claims', true), '');
    usr text;
BEGIN
    IF tenant IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        usr := claims::jsonb ->> 'sub';
    EXCEPTION WHEN invalid_text_representation THEN
        usr := NULL;
    END;
    IF usr IS NULL THEN
        RAISE EXCEPTION 'client session without an authenticated user'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'the gateway sets request.jwt.claims (with "sub") for every client request';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.tenant_members m
                   WHERE m.tenant_id = tenant AND m.user_id = usr) THEN
        RAISE EXCEPTION 'user % is not a member of tenant %', usr, tenant
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN tenant;
END $$;
SELECT pg_temp.give_to('public.client_tenant(uuid)', 'pulse_tenancy');
-- Every role whose queries meet a tenant policy plans current_tenant_id(), and so
-- this function (PostgreSQL checks EXECUTE on all of an inlined expression). What it
-- answers (is the claims' user a member of this tenant) is no secret to any of them.
GRANT EXECUTE ON FUNCTION public.client_tenant(uuid) TO PUBLIC;

-- The tenant of the current transaction. Workers (and the definer roles working for
-- them) set it per transaction and are trusted; a client session (any role that holds
-- pulse_client's privileges, superusers aside) gets it only through client_tenant.
-- One expression with no sub-select, so that PostgreSQL inlines it into every policy
-- (an index condition then evaluates it once per scan): the workers' path is one
-- comparison.
CREATE OR REPLACE FUNCTION public.current_tenant_id() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN current_user = 'pulse_worker'
             OR NOT pg_catalog.pg_has_role(current_user, 'pulse_client', 'USAGE')
             OR pg_catalog.current_setting('is_superuser') = 'on'
            THEN nullif(pg_catalog.current_setting('app.tenant_id', true), '')::uuid
        ELSE public.client_tenant(nullif(pg_catalog.current_setting('app.tenant_id', true), '')::uuid)
    END
$$;

-- ---------------------------------------------------------------------------------
-- Clients and workers out of the queue. Workers enqueue follow-up work only through
-- triggers too (none of their code names fleet.*).
REVOKE ALL ON ALL TABLES IN SCHEMA fleet FROM pulse_client, pulse_worker;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fleet FROM PUBLIC, pulse_client, pulse_worker;
REVOKE USAGE ON SCHEMA fleet FROM pulse_client, pulse_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA fleet REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- A client inserts an intent's content, nothing the OMS decides (status, reason).
REVOKE INSERT ON public.multi_leg_intents FROM pulse_client;
GRANT INSERT (tenant_id, idempotency_key, legs_json) ON public.multi_leg_intents TO pulse_client;

-- PUBLIC: no temporary objects, no new objects in public.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END $$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

DROP FUNCTION pg_temp.give_to(regprocedure, name);
