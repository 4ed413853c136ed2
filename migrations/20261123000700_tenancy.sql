-- Tenancy. Every tenant row carries tenant_id; row-level security, forced for table
-- owners too, limits each transaction to the tenant named by the per-transaction
-- setting app.tenant_id. Jobs run as pulse_worker and clients as pulse_client, and
-- neither bypasses RLS. (Superusers always bypass RLS: the application's login role
-- must not be one in production; jobs switch role per transaction.)
CREATE TABLE tenants (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_members (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    user_id    text NOT NULL,
    role       text NOT NULL CHECK (role IN ('owner', 'trader', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

-- The tenant of the current transaction (set with set_config('app.tenant_id', id, true)).
CREATE FUNCTION current_tenant_id() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('app.tenant_id', true), '')::uuid
$$;

-- Roles are cluster-wide: another database's migration may create them at the same time.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pulse_worker', 'pulse_client'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END $$;

-- Both roles may enqueue follow-up work through the one way in.
GRANT USAGE ON SCHEMA fleet TO pulse_worker, pulse_client;
GRANT SELECT ON fleet.job_types TO pulse_worker, pulse_client;
GRANT INSERT, SELECT ON fleet.jobs TO pulse_worker, pulse_client;
GRANT INSERT ON fleet.stat_deltas TO pulse_worker, pulse_client;
GRANT EXECUTE ON FUNCTION fleet.enqueue(text, jsonb, text, timestamptz, integer, integer, text),
                          fleet.enqueue_batch(text, jsonb[], text[], timestamptz, integer, integer)
    TO pulse_worker, pulse_client;

-- Applies the tenant policy to a table: RLS on, forced, one policy for every command.
CREATE FUNCTION enable_tenant_isolation(t regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s
                        USING (tenant_id = current_tenant_id())
                        WITH CHECK (tenant_id = current_tenant_id())', t);
END $$;

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (id = current_tenant_id());
SELECT enable_tenant_isolation('tenant_members');
GRANT SELECT ON tenants, tenant_members TO pulse_worker, pulse_client;
