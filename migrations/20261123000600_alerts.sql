-- Alerts to users' Discord webhooks.
CREATE TYPE alert_kind AS ENUM ('trade_signal', 'order_execution', 'price_alert', 'payment_failed', 'system');

CREATE TABLE alerts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid,
    user_id     text,
    kind        alert_kind NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    -- pending | sent | skipped (no webhook) | failed (webhook gone or refused)
    status      text NOT NULL DEFAULT 'pending',
    attempts    integer NOT NULL DEFAULT 0,
    sent_at     timestamptz,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Fires per row: one send_alert job per alert, keyed by its id.
CREATE FUNCTION enqueue_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fleet.enqueue('send_alert', jsonb_build_object('alert_id', NEW.id), NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER alerts_enqueue AFTER INSERT ON alerts FOR EACH ROW EXECUTE FUNCTION enqueue_alert();

-- The Discord webhook URL is a secret (it carries the token): never logged or put in a payload.
CREATE TABLE notification_settings (
    user_id              text PRIMARY KEY,
    tenant_id            uuid,
    discord_webhook_url  text,
    discord_disabled_at  timestamptz,
    discord_disabled_why text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Discord's per-webhook rate-limit state, shared by every worker process: read from
-- the X-RateLimit-* headers of each answer, consulted before each send.
CREATE TABLE discord_rate_limits (
    webhook_key text PRIMARY KEY,
    bucket      text,
    remaining   integer NOT NULL,
    reset_at    timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
