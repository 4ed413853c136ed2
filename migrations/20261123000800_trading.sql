-- The OMS's tables (issue 3): venues and instruments (shared reference data), then
-- tenant rows: accounts, credentials, intents, orders, fills, positions. Only the OMS
-- (execute_intent, and reconciliation importing venue truth) writes orders and fills.
CREATE TABLE venues (
    id   text PRIMARY KEY,                    -- 'alpaca', 'paper'
    name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('broker', 'exchange', 'dex'))
);

CREATE TABLE instruments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    venue_id    text NOT NULL REFERENCES venues (id),
    symbol      text NOT NULL,
    asset_class text NOT NULL DEFAULT 'us_equity',
    tick_size   numeric(20, 10) NOT NULL DEFAULT 0.01,
    lot_size    numeric(20, 10) NOT NULL DEFAULT 1,
    UNIQUE (venue_id, symbol)
);

CREATE TABLE trading_accounts (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    label          text NOT NULL,
    venue_id       text NOT NULL REFERENCES venues (id),
    sub_account    text,                        -- wallet address or broker sub-account
    owner          text,
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, label),
    UNIQUE (tenant_id, id)
);

-- secret_ref names where the secret lives, never the secret: env:NAME, or
-- enc:v1:<base64 nonce+ciphertext> sealed with AES-256-GCM under a key from the environment.
CREATE TABLE account_credentials (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    account_id      uuid NOT NULL,
    credential_type text NOT NULL,              -- api_key, api_secret, private_key, ...
    identifier      text,                       -- the public part (an API key id)
    secret_ref      text NOT NULL CHECK (secret_ref ~ '^(env:[A-Z_][A-Z0-9_]*|enc:v1:[A-Za-z0-9+/=]+)$'),
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id),
    UNIQUE (tenant_id, account_id, credential_type)
);

CREATE TYPE intent_status AS ENUM ('pending', 'submitted', 'partially_filled', 'filled', 'cancelled', 'failed');

CREATE TABLE multi_leg_intents (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    idempotency_key text NOT NULL,
    -- [{account_id, symbol, side, quantity, type, limit_price, time_in_force}, ...]
    legs_json       jsonb NOT NULL,
    status          intent_status NOT NULL DEFAULT 'pending',
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key),
    UNIQUE (tenant_id, id)
);

CREATE TABLE orders (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    intent_id       uuid NOT NULL,
    leg_index       integer NOT NULL,
    account_id      uuid NOT NULL,
    venue_id        text NOT NULL REFERENCES venues (id),
    symbol          text NOT NULL,
    side            text NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity        numeric(28, 10) NOT NULL CHECK (quantity > 0),
    order_type      text NOT NULL CHECK (order_type IN ('market', 'limit')),
    limit_price     numeric(28, 10),
    time_in_force   text NOT NULL DEFAULT 'day',
    -- derived from (intent, leg): the same on every retry, at most 48 characters
    client_order_id text NOT NULL CHECK (length(client_order_id) <= 48),
    venue_order_id  text,
    status          text NOT NULL DEFAULT 'pending_submit',
    filled_quantity numeric(28, 10) NOT NULL DEFAULT 0,
    average_price   numeric(28, 10),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, intent_id) REFERENCES multi_leg_intents (tenant_id, id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id),
    CHECK (order_type = 'market' OR limit_price IS NOT NULL),
    UNIQUE (tenant_id, intent_id, leg_index),
    UNIQUE (tenant_id, client_order_id),
    UNIQUE (tenant_id, id)
);

CREATE TABLE fills (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL,
    order_id      uuid NOT NULL,
    venue_fill_id text NOT NULL,
    quantity      numeric(28, 10) NOT NULL CHECK (quantity > 0),
    price         numeric(28, 10) NOT NULL,
    fee           numeric(28, 10) NOT NULL DEFAULT 0,
    filled_at     timestamptz NOT NULL,
    FOREIGN KEY (tenant_id, order_id) REFERENCES orders (tenant_id, id),
    UNIQUE (tenant_id, venue_fill_id)
);

-- Positions of any number of legs, each leg tied to its account (platform doc 002).
CREATE TABLE positions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    intent_id     uuid,
    strategy_name text NOT NULL DEFAULT 'manual',
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'pending_close', 'closed')),
    opened_at     timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    exit_reason   text,
    pnl           numeric(28, 10),
    metadata      jsonb NOT NULL DEFAULT '{}',
    UNIQUE (tenant_id, id)
);

CREATE TABLE position_legs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    position_id uuid NOT NULL,
    leg_index   integer NOT NULL,
    account_id  uuid NOT NULL,
    symbol      text NOT NULL,
    side        text NOT NULL CHECK (side IN ('long', 'short')),
    quantity    numeric(28, 10) NOT NULL DEFAULT 0,
    entry_price numeric(28, 10),
    metadata    jsonb NOT NULL DEFAULT '{}',
    FOREIGN KEY (tenant_id, position_id) REFERENCES positions (tenant_id, id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES trading_accounts (tenant_id, id),
    UNIQUE (tenant_id, position_id, leg_index),
    UNIQUE (tenant_id, id)
);
CREATE INDEX position_legs_account ON position_legs (tenant_id, account_id);

CREATE TABLE position_fills (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    position_id uuid NOT NULL,
    leg_id      uuid NOT NULL,
    fill_id     uuid NOT NULL,
    quantity    numeric(28, 10) NOT NULL,         -- positive adds, negative reduces
    price       numeric(28, 10) NOT NULL,
    fee         numeric(28, 10) NOT NULL DEFAULT 0,
    executed_at timestamptz NOT NULL,
    FOREIGN KEY (tenant_id, leg_id) REFERENCES position_legs (tenant_id, id),
    UNIQUE (tenant_id, fill_id)
);

-- Entry locks: one entry per (account, symbol) at a time, across processes. An
-- expired lock may be taken over; only the owner token releases it.
CREATE TABLE entry_locks (
    tenant_id   uuid NOT NULL,
    account_id  uuid NOT NULL,
    symbol      text NOT NULL,
    owner_token uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, account_id, symbol)
);

-- Risk limits per tenant (account_id NULL) or per account; NULL limits are unlimited.
CREATE TABLE risk_limits (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    account_id          uuid,
    max_order_notional  numeric(28, 10),
    max_intent_notional numeric(28, 10),
    max_open_intents    integer,
    UNIQUE NULLS NOT DISTINCT (tenant_id, account_id)
);

CREATE TABLE kill_switches (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    account_id uuid,                              -- NULL: the whole tenant
    engaged    boolean NOT NULL DEFAULT true,
    reason     text,
    changed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (tenant_id, account_id)
);

SELECT enable_tenant_isolation(t) FROM unnest(ARRAY[
    'trading_accounts', 'account_credentials', 'multi_leg_intents', 'orders', 'fills',
    'positions', 'position_legs', 'position_fills', 'entry_locks', 'risk_limits', 'kill_switches'
]::regclass[]) AS t;

GRANT SELECT ON venues, instruments TO pulse_worker, pulse_client;
GRANT SELECT, INSERT, UPDATE ON trading_accounts, account_credentials, multi_leg_intents, orders,
    fills, positions, position_legs, position_fills, risk_limits, kill_switches TO pulse_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON entry_locks TO pulse_worker;
-- Clients emit intents and read; they never write orders or fills.
GRANT SELECT ON trading_accounts, orders, fills, positions, position_legs, position_fills,
    risk_limits, kill_switches TO pulse_client;
GRANT SELECT, INSERT ON multi_leg_intents TO pulse_client;
