-- Broker connections authorised with OAuth 2.0 (Schwab's Trader API is the dialect):
-- per tenant and user, their tokens sealed like every other secret (`enc:v1:`), kept
-- fresh by `refresh_broker_tokens` (scheduled) and `refresh_broker_token` (one
-- connection, one at a time).

CREATE TABLE broker_connections (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    user_id            text NOT NULL,
    broker             text NOT NULL,
    -- active: tokens refresh themselves; needs_reauth: the broker refused the refresh
    -- (expired or revoked refresh token), the user must authorise again; revoked:
    -- disconnected by the user.
    status             text NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'needs_reauth', 'revoked')),
    scopes             text[] NOT NULL DEFAULT '{}',
    -- Sealed references (enc:v1:...), never plaintext.
    access_token       text NOT NULL CHECK (access_token LIKE 'enc:v1:%'),
    refresh_token      text NOT NULL CHECK (refresh_token LIKE 'enc:v1:%'),
    -- When the access token expires (Schwab: 30 minutes after it was issued), and when
    -- the refresh token does (7 days after authorisation; a refresh does not extend it).
    expires_at         timestamptz NOT NULL,
    refresh_expires_at timestamptz,
    -- Bumped by every stored refresh: a refresh stores its tokens only over the
    -- generation it read, so a late or duplicate attempt cannot overwrite newer tokens
    -- (the old refresh token is retired in the same statement that stores the new).
    generation         integer NOT NULL DEFAULT 0,
    refreshed_at       timestamptz,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, user_id, broker),
    UNIQUE (tenant_id, id)
);
-- The scheduled fan-out's probe: active connections by expiry.
CREATE INDEX broker_connections_due ON broker_connections (expires_at) WHERE status = 'active';

SELECT enable_tenant_isolation('broker_connections');
GRANT SELECT, UPDATE ON broker_connections TO pulse_worker;
GRANT SELECT (id, tenant_id, user_id, broker, status, scopes, expires_at, refresh_expires_at,
              refreshed_at, last_error, created_at, updated_at)
    ON broker_connections TO pulse_client;

-- A user whose broker connection needs them.
ALTER TYPE alert_kind ADD VALUE IF NOT EXISTS 'broker_connection';

-- Asks for one refresh_broker_token per active connection whose access token expires
-- within `margin_secs`: keyed by connection and generation (several schedulers and
-- overlapping ticks ask once per token), one at a time per connection (the
-- concurrency key broker:<connection>: a refresh token used twice can end the
-- connection). A definer function: it sees across tenants only which connections
-- are due. Returns how many it asked for.
CREATE FUNCTION public.request_token_refreshes(margin_secs integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    SELECT count(fleet.enqueue('refresh_broker_token',
               jsonb_build_object('tenant_id', c.tenant_id, 'connection_id', c.id),
               'refresh:' || c.id || ':' || c.generation,
               NULL, 1, NULL, 'broker:' || c.id))
    INTO n
    FROM public.broker_connections c
    WHERE c.status = 'active'
      AND c.expires_at < now() + make_interval(secs => greatest(margin_secs, 0));
    RETURN n;
END $$;
SELECT public.give_function_to('public.request_token_refreshes(integer)'::regprocedure, 'pulse_syncer');
GRANT SELECT (id, tenant_id, status, expires_at, generation) ON public.broker_connections TO pulse_syncer;
CREATE POLICY syncer_due_connections ON broker_connections FOR SELECT TO pulse_syncer USING (true);
GRANT EXECUTE ON FUNCTION public.request_token_refreshes(integer) TO pulse_worker;
