-- Audit events are appended unsealed and sealed into their tenant's hash chain
-- shortly after, in batches (audit_seal, run by every worker process).
--
-- Why: chaining at insert time made each event wait for the tenant's chain lock, held
-- until the inserting transaction committed, so every transaction that wrote an event
-- (two per intent) committed one after another per tenant. Sealing after commit takes
-- that lock off the trading path; the chain is as strong as before for sealed rows.
--
-- Unsealed rows are protected the same way as sealed ones: application roles may
-- only insert, and the only update the table accepts fills in the seal of a row that
-- has none, leaving its contents as they were.
ALTER TABLE audit_events
    ALTER COLUMN seq DROP NOT NULL,
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL;

CREATE INDEX audit_events_unsealed ON audit_events (tenant_id, id) WHERE hash IS NULL;

-- Inserts: the database sets the time and leaves the seal empty.
CREATE OR REPLACE FUNCTION audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.seq := NULL;
    NEW.prev_hash := NULL;
    NEW.hash := NULL;
    NEW.created_at := date_trunc('microseconds', clock_timestamp());
    RETURN NEW;
END $$;

-- Updates: only sealing an unsealed row; deletes never.
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
       AND (NEW.id, NEW.tenant_id, NEW.event_type, NEW.subject_type, NEW.subject_id,
            NEW.details, NEW.created_at)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.tenant_id, OLD.event_type, OLD.subject_type, OLD.subject_id,
            OLD.details, OLD.created_at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- Seals up to max_events unsealed events of the transaction's tenant, in insertion
-- order, after the tenant's last sealed event; returns how many. Runs under the
-- tenant's row-level security like everything else. One sealer per tenant at a time:
-- a second one returns 0 at once (it will come round again).
CREATE FUNCTION audit_seal(max_events integer) RETURNS integer LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    t uuid := current_tenant_id();
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
    SELECT a.seq, a.hash INTO last_seq, last_hash FROM audit_events a
    WHERE a.tenant_id = t AND a.seq IS NOT NULL ORDER BY a.seq DESC LIMIT 1;
    last_seq := coalesce(last_seq, 0);
    last_hash := coalesce(last_hash, '\x'::bytea);
    FOR e IN SELECT a.id, a.event_type, a.subject_type, a.subject_id, a.details, a.created_at
             FROM audit_events a WHERE a.tenant_id = t AND a.hash IS NULL
             ORDER BY a.id LIMIT max_events LOOP
        last_seq := last_seq + 1;
        UPDATE audit_events SET seq = last_seq, prev_hash = last_hash,
            hash = sha256(last_hash || convert_to(audit_canonical(t, last_seq, e.event_type,
                e.subject_type, e.subject_id, e.details, e.created_at), 'UTF8'))
        WHERE id = e.id
        RETURNING hash INTO last_hash;
        sealed := sealed + 1;
    END LOOP;
    RETURN sealed;
END $$;
REVOKE ALL ON FUNCTION audit_seal(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_seal(integer) TO pulse_worker;

-- Appends an event for the transaction's tenant (row-level security checks it), so a
-- statement can record its audit event in the same round trip as its other writes.
CREATE FUNCTION audit_append(event_type text, subject_type text, subject_id text, details jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_events (tenant_id, event_type, subject_type, subject_id, details)
    VALUES (current_tenant_id(), audit_append.event_type, audit_append.subject_type,
            audit_append.subject_id, audit_append.details);
END $$;
GRANT EXECUTE ON FUNCTION audit_append(text, text, text, jsonb) TO pulse_worker;
