-- The capital ledger per account. The database enforces its invariant, and every
-- change is a journal entry: workers insert journal rows, a trigger applies them, and
-- no role may update the ledger directly, so the ledger can always be rebuilt from
-- the journal and compared (capital_ledger_drift).
CREATE TABLE capital_ledgers (
    tenant_id              uuid NOT NULL,
    account_id             uuid NOT NULL,
    allocated              numeric(28, 10) NOT NULL DEFAULT 0,
    reserved_for_orders    numeric(28, 10) NOT NULL DEFAULT 0 CHECK (reserved_for_orders >= 0),
    reserved_for_positions numeric(28, 10) NOT NULL DEFAULT 0 CHECK (reserved_for_positions >= 0),
    realized_pnl           numeric(28, 10) NOT NULL DEFAULT 0,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id),
    CONSTRAINT capital_invariant
        CHECK (allocated - reserved_for_orders - reserved_for_positions + realized_pnl >= 0)
);

CREATE TABLE capital_journal (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id              uuid NOT NULL,
    account_id             uuid NOT NULL,
    -- allocate, reserve_order, release_order, fill_to_position, close_position, ...
    entry_type             text NOT NULL,
    d_allocated            numeric(28, 10) NOT NULL DEFAULT 0,
    d_reserved_for_orders  numeric(28, 10) NOT NULL DEFAULT 0,
    d_reserved_for_positions numeric(28, 10) NOT NULL DEFAULT 0,
    d_realized_pnl         numeric(28, 10) NOT NULL DEFAULT 0,
    ref_type               text,
    ref_id                 uuid,
    created_at             timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id)
);
CREATE INDEX capital_journal_account ON capital_journal (tenant_id, account_id);

-- Applies a journal entry to its ledger row (created on first use). A change that
-- would break the invariant fails here, and the journal row with it. (Not INSERT ...
-- ON CONFLICT DO UPDATE: PostgreSQL checks CHECK constraints on the proposed row, a
-- bare delta, before it sees the conflict.)
CREATE FUNCTION apply_capital_journal() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    LOOP
        UPDATE capital_ledgers SET
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
            INSERT INTO capital_ledgers (tenant_id, account_id, allocated, reserved_for_orders,
                                         reserved_for_positions, realized_pnl)
            VALUES (NEW.tenant_id, NEW.account_id, NEW.d_allocated, NEW.d_reserved_for_orders,
                    NEW.d_reserved_for_positions, NEW.d_realized_pnl);
            RETURN NULL;
        EXCEPTION WHEN unique_violation THEN
            -- A concurrent first entry created the row: apply ours to it.
        END;
    END LOOP;
END $$;
CREATE TRIGGER capital_journal_apply AFTER INSERT ON capital_journal
    FOR EACH ROW EXECUTE FUNCTION apply_capital_journal();

-- Ledgers whose live values differ from the sum of their journal (should be empty).
CREATE VIEW capital_ledger_drift WITH (security_invoker = true) AS
    SELECT l.tenant_id, l.account_id,
           l.allocated - coalesce(j.allocated, 0) AS allocated,
           l.reserved_for_orders - coalesce(j.reserved_for_orders, 0) AS reserved_for_orders,
           l.reserved_for_positions - coalesce(j.reserved_for_positions, 0) AS reserved_for_positions,
           l.realized_pnl - coalesce(j.realized_pnl, 0) AS realized_pnl
    FROM capital_ledgers l
    LEFT JOIN (
        SELECT tenant_id, account_id, sum(d_allocated) AS allocated,
               sum(d_reserved_for_orders) AS reserved_for_orders,
               sum(d_reserved_for_positions) AS reserved_for_positions,
               sum(d_realized_pnl) AS realized_pnl
        FROM capital_journal GROUP BY tenant_id, account_id
    ) j USING (tenant_id, account_id)
    WHERE (l.allocated, l.reserved_for_orders, l.reserved_for_positions, l.realized_pnl)
          IS DISTINCT FROM (coalesce(j.allocated, 0), coalesce(j.reserved_for_orders, 0),
                            coalesce(j.reserved_for_positions, 0), coalesce(j.realized_pnl, 0));

-- Audit events: append-only and hash-chained per tenant. seq numbers each tenant's
-- events from 1; hash = sha256(prev_hash || the event's canonical text), so editing,
-- removing or reordering a row breaks the chain (`pulse-fleet audit verify`).
CREATE TABLE audit_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    seq          bigint NOT NULL,
    event_type   text NOT NULL,                 -- risk actions: intent_rejected, kill_switch, ...
    subject_type text NOT NULL,
    subject_id   text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL,
    UNIQUE (tenant_id, seq)
);

-- The text an audit event's hash covers. verify recomputes it from the same fields.
CREATE FUNCTION audit_canonical(tenant_id uuid, seq bigint, event_type text, subject_type text,
                                subject_id text, details jsonb, created_at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT concat_ws('|', tenant_id::text, seq::text, event_type, subject_type, subject_id,
                     details::text, (extract(epoch FROM created_at) * 1000000)::bigint::text)
$$;

CREATE FUNCTION audit_chain() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    last record;
BEGIN
    -- One writer per tenant chain at a time.
    PERFORM pg_advisory_xact_lock(hashtext('audit_events'), hashtext(NEW.tenant_id::text));
    SELECT a.seq, a.hash INTO last FROM audit_events a
    WHERE a.tenant_id = NEW.tenant_id ORDER BY a.seq DESC LIMIT 1;
    NEW.seq := coalesce(last.seq, 0) + 1;
    NEW.prev_hash := coalesce(last.hash, '\x'::bytea);
    NEW.created_at := date_trunc('microseconds', clock_timestamp());
    NEW.hash := sha256(NEW.prev_hash || convert_to(audit_canonical(NEW.tenant_id, NEW.seq,
        NEW.event_type, NEW.subject_type, NEW.subject_id, NEW.details, NEW.created_at), 'UTF8'));
    RETURN NEW;
END $$;
CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_chain();

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

SELECT enable_tenant_isolation(t) FROM unnest(ARRAY[
    'capital_ledgers', 'capital_journal', 'audit_events'
]::regclass[]) AS t;
GRANT SELECT ON capital_ledgers, capital_ledger_drift TO pulse_worker, pulse_client;
GRANT SELECT, INSERT ON capital_journal TO pulse_worker;
GRANT SELECT, INSERT ON audit_events TO pulse_worker;
GRANT SELECT ON audit_events, capital_journal TO pulse_client;
