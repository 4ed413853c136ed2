-- Stripe: a signed-event inbox and the billing state its events drive.
-- tenant_id is carried for the tenancy of the OMS issue (RLS comes with it).
CREATE SCHEMA IF NOT EXISTS billing;

-- Every verified event, once (Stripe retries deliveries for days). The web process
-- stores the raw event and answers 2xx; the trigger enqueues its processing.
CREATE TABLE billing.stripe_events (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    -- event.created: the order Stripe produced events in (deliveries are unordered).
    created      timestamptz NOT NULL,
    livemode     boolean NOT NULL,
    payload      jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    -- applied | ignored (unknown type) | stale (older than the state it would change)
    outcome      text
);

-- Fires per row: one process_payment job per event, keyed by the event id.
CREATE FUNCTION billing.enqueue_stripe_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fleet.enqueue('process_payment', jsonb_build_object('event_id', NEW.event_id), NEW.event_id);
    RETURN NULL;
END $$;
CREATE TRIGGER stripe_events_enqueue AFTER INSERT ON billing.stripe_events
    FOR EACH ROW EXECUTE FUNCTION billing.enqueue_stripe_event();

CREATE TABLE billing.customers (
    stripe_customer_id text PRIMARY KEY,
    tenant_id          uuid,
    user_id            text,
    email              text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.subscriptions (
    stripe_subscription_id text PRIMARY KEY,
    stripe_customer_id     text NOT NULL,
    tier                   text,
    status                 text NOT NULL,
    current_period_end     timestamptz,
    -- created time of the event this row reflects: older events never overwrite it
    source_event_created   timestamptz NOT NULL,
    source_event_id        text NOT NULL,
    -- within one second: created < updated < deleted
    source_rank            integer NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Credits as a ledger: one row per crediting event (the event id makes it once-only).
CREATE TABLE billing.credit_ledger (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stripe_customer_id text NOT NULL,
    delta              numeric(20, 4) NOT NULL,
    reason             text NOT NULL,
    stripe_event_id    text NOT NULL UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW billing.credit_balances AS
    SELECT stripe_customer_id, sum(delta) AS balance FROM billing.credit_ledger GROUP BY stripe_customer_id;
