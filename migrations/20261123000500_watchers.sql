-- Watchers: the trading side's copy of users' symbols, kept in step with
-- `user_symbols` by the sync_watcher job, fed either by the signed webhook
-- (two-database deployments) or by the trigger below (one database).

-- The source rows (single-database deployments). `version` grows on every change.
CREATE TABLE user_symbols (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid,
    user_id    text NOT NULL,
    symbol     text NOT NULL,
    timeframe  text NOT NULL,
    strategy   jsonb NOT NULL DEFAULT '{}',
    active     boolean NOT NULL DEFAULT true,
    version    bigint NOT NULL DEFAULT 1
);

CREATE FUNCTION bump_user_symbol_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;
CREATE TRIGGER user_symbols_version BEFORE UPDATE ON user_symbols
    FOR EACH ROW EXECUTE FUNCTION bump_user_symbol_version();

-- Every change delivered, once per (source row, version), whichever path it came by.
CREATE TABLE watcher_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id      bigint NOT NULL,
    source_version bigint NOT NULL,
    type           text NOT NULL CHECK (type IN ('INSERT', 'UPDATE', 'DELETE')),
    record         jsonb,
    old_record     jsonb,
    received_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id, source_version, type)
);

-- Fires per row: the change becomes one sync_watcher job, keyed by source row + version.
CREATE FUNCTION enqueue_watcher_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fleet.enqueue('sync_watcher', jsonb_build_object('event_id', NEW.id),
                          'user_symbol:' || NEW.source_id || ':' || NEW.source_version || ':' || NEW.type);
    RETURN NULL;
END $$;
CREATE TRIGGER watcher_events_enqueue AFTER INSERT ON watcher_events
    FOR EACH ROW EXECUTE FUNCTION enqueue_watcher_event();

-- Fires per row of user_symbols: records the change (ids and row images only).
CREATE FUNCTION record_user_symbol_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO watcher_events (source_id, source_version, type, record, old_record)
    VALUES (coalesce(NEW.id, OLD.id),
            CASE TG_OP WHEN 'DELETE' THEN OLD.version + 1 ELSE NEW.version END,
            TG_OP,
            CASE TG_OP WHEN 'DELETE' THEN NULL ELSE to_jsonb(NEW) END,
            CASE TG_OP WHEN 'INSERT' THEN NULL ELSE to_jsonb(OLD) END)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER user_symbols_sync AFTER INSERT OR UPDATE OR DELETE ON user_symbols
    FOR EACH ROW EXECUTE FUNCTION record_user_symbol_change();

CREATE TABLE watchers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid,
    user_id    text NOT NULL,
    symbol     text NOT NULL,
    timeframe  text NOT NULL,
    strategy   jsonb NOT NULL DEFAULT '{}',
    active     boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, symbol, timeframe)
);

-- The newest version applied per source row (deletes included), so a stale delivery
-- never overwrites or resurrects anything.
CREATE TABLE watcher_sources (
    source_id      bigint PRIMARY KEY,
    source_version bigint NOT NULL,
    user_id        text,
    symbol         text,
    timeframe      text,
    deleted        boolean NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
