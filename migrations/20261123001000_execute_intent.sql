-- Intents become orders: the insert of an intent enqueues execute_intent, keyed by
-- the intent id. (A duplicate intent is refused earlier, by the unique
-- (tenant_id, idempotency_key).)
CREATE FUNCTION enqueue_execute_intent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fleet.enqueue('execute_intent',
        jsonb_build_object('intent_id', NEW.id, 'tenant_id', NEW.tenant_id), 'intent:' || NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER multi_leg_intents_enqueue AFTER INSERT ON multi_leg_intents
    FOR EACH ROW EXECUTE FUNCTION enqueue_execute_intent();

-- Requests per minute to a venue, per trading account, shared by every worker
-- process (Alpaca allows 200 per minute per account).
CREATE TABLE venue_request_budgets (
    tenant_id    uuid NOT NULL,
    account_id   uuid NOT NULL,
    window_start timestamptz NOT NULL,
    used         integer NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);
SELECT enable_tenant_isolation('venue_request_budgets');
GRANT SELECT, INSERT, UPDATE ON venue_request_budgets TO pulse_worker;
GRANT INSERT ON fleet.jobs TO pulse_worker;

-- What each order reserved from its account's capital, released exactly on rejection
-- or cancellation.
ALTER TABLE orders ADD COLUMN reserved_amount numeric(28, 10) NOT NULL DEFAULT 0;
-- Unwind orders (closing a filled leg of a failed intent) have leg_index >= 1000.
