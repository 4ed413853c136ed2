-- Tenancy for Stripe billing, watcher sync and alerts, which were built before
-- tenancy existed. Their rows belong to a tenant like every trading row: tenant_id
-- NOT NULL, in every unique key, under the same forced row-level security, and the
-- jobs that write them run confined to that tenant.
--
-- Platform-level on purpose (no tenant_id, no RLS):
-- - the inboxes, billing.stripe_events and watcher_events: a delivery names its tenant
--   only inside its payload, so the job that processes it reads it, finds the tenant,
--   and then works as pulse_worker confined to that tenant;
-- - billing.customer_tenants, which routes a Stripe customer to its tenant (Stripe's
--   events name a customer, not a tenant); it is written from the checkout session's
--   metadata.tenant_id, which the platform sets when it opens the checkout;
-- - discord_rate_limits: Discord's budget per webhook, not tenant data.

-- Billing.
CREATE TABLE billing.customer_tenants (
    stripe_customer_id text PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    created_at         timestamptz NOT NULL DEFAULT now()
);
INSERT INTO billing.customer_tenants (stripe_customer_id, tenant_id)
    SELECT stripe_customer_id, tenant_id FROM billing.customers WHERE tenant_id IS NOT NULL;

ALTER TABLE billing.customers
    ALTER COLUMN tenant_id SET NOT NULL,
    DROP CONSTRAINT customers_pkey,
    ADD PRIMARY KEY (tenant_id, stripe_customer_id),
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);

ALTER TABLE billing.subscriptions ADD COLUMN tenant_id uuid;
UPDATE billing.subscriptions s SET tenant_id = r.tenant_id
    FROM billing.customer_tenants r WHERE r.stripe_customer_id = s.stripe_customer_id;
ALTER TABLE billing.subscriptions
    ALTER COLUMN tenant_id SET NOT NULL,
    DROP CONSTRAINT subscriptions_pkey,
    ADD PRIMARY KEY (tenant_id, stripe_subscription_id),
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);

DROP VIEW billing.credit_balances;
ALTER TABLE billing.credit_ledger ADD COLUMN tenant_id uuid;
UPDATE billing.credit_ledger l SET tenant_id = r.tenant_id
    FROM billing.customer_tenants r WHERE r.stripe_customer_id = l.stripe_customer_id;
ALTER TABLE billing.credit_ledger
    ALTER COLUMN tenant_id SET NOT NULL,
    DROP CONSTRAINT credit_ledger_stripe_event_id_key,
    ADD UNIQUE (tenant_id, stripe_event_id),
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);
CREATE VIEW billing.credit_balances WITH (security_invoker = true) AS
    SELECT tenant_id, stripe_customer_id, sum(delta) AS balance
    FROM billing.credit_ledger GROUP BY tenant_id, stripe_customer_id;

-- Watchers.
ALTER TABLE user_symbols
    ALTER COLUMN tenant_id SET NOT NULL,
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);
ALTER TABLE watchers
    ALTER COLUMN tenant_id SET NOT NULL,
    DROP CONSTRAINT watchers_user_id_symbol_timeframe_key,
    ADD UNIQUE (tenant_id, user_id, symbol, timeframe),
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);
ALTER TABLE watcher_sources ADD COLUMN tenant_id uuid;
UPDATE watcher_sources s SET tenant_id = w.tenant_id
    FROM watchers w WHERE (w.user_id, w.symbol, w.timeframe) = (s.user_id, s.symbol, s.timeframe);
DELETE FROM watcher_sources WHERE tenant_id IS NULL; -- deleted sources: only their version is lost
ALTER TABLE watcher_sources
    ALTER COLUMN tenant_id SET NOT NULL,
    DROP CONSTRAINT watcher_sources_pkey,
    ADD PRIMARY KEY (tenant_id, source_id),
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);

-- Alerts: the job is told its alert's tenant, like execute_intent.
ALTER TABLE alerts
    ALTER COLUMN tenant_id SET NOT NULL,
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);
ALTER TABLE notification_settings
    ALTER COLUMN tenant_id SET NOT NULL,
    DROP CONSTRAINT notification_settings_pkey,
    ADD PRIMARY KEY (tenant_id, user_id),
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);
CREATE OR REPLACE FUNCTION enqueue_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fleet.enqueue('send_alert',
        jsonb_build_object('alert_id', NEW.id, 'tenant_id', NEW.tenant_id), NEW.id::text);
    RETURN NULL;
END $$;

SELECT enable_tenant_isolation(t) FROM unnest(ARRAY[
    'billing.customers', 'billing.subscriptions', 'billing.credit_ledger',
    'user_symbols', 'watchers', 'watcher_sources', 'alerts', 'notification_settings'
]::regclass[]) AS t;

GRANT USAGE ON SCHEMA billing TO pulse_worker, pulse_client;
GRANT SELECT, INSERT, UPDATE ON billing.customers, billing.subscriptions TO pulse_worker;
GRANT SELECT, INSERT ON billing.credit_ledger TO pulse_worker;
GRANT SELECT ON billing.customers, billing.subscriptions, billing.credit_ledger,
    billing.credit_balances TO pulse_client;
GRANT SELECT ON billing.credit_balances TO pulse_worker;
GRANT SELECT, UPDATE ON billing.stripe_events, watcher_events TO pulse_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON watchers, watcher_sources TO pulse_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON user_symbols TO pulse_client;
GRANT SELECT ON user_symbols, watchers TO pulse_worker;
GRANT SELECT ON watchers TO pulse_client;
GRANT SELECT, INSERT, UPDATE ON alerts, notification_settings TO pulse_worker;
GRANT SELECT, INSERT, UPDATE ON notification_settings TO pulse_client;
GRANT SELECT ON alerts TO pulse_client;
-- user_symbols' change trigger writes the platform-level inbox on the client's behalf.
ALTER FUNCTION record_user_symbol_change() SECURITY DEFINER SET search_path = pg_catalog, public;
ALTER FUNCTION enqueue_watcher_event() SECURITY DEFINER SET search_path = pg_catalog, public;
