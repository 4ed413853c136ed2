-- A multi-leg intent is one position: when a venue ends one leg (rejects it, cancels
-- it, lets it expire) after accepting it while another leg is still working or has
-- fills, the intent is no longer hedged. The roll-up then asks the OMS to unwind it
-- (cancel what is open, close what filled, on each leg's own venue) instead of
-- leaving the rest standing; the OMS fails the intent when done.

-- Asks for the OMS's unwind of an intent of the calling transaction's tenant: one
-- `execute_intent` job in unwind mode per intent (keyed), run apart from any other
-- (its concurrency key). A definer function: the roll-up runs as pulse_worker, which
-- may not enqueue; the tenant is the transaction's own, never a parameter.
CREATE FUNCTION public.request_unwind(intent uuid, reason text) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT fleet.enqueue('execute_intent',
               jsonb_build_object('intent_id', intent, 'tenant_id', public.current_tenant_id(),
                                  'unwind', reason),
               'unwind:' || intent, NULL, 1, NULL, 'unwind:' || intent)
    WHERE public.current_tenant_id() IS NOT NULL
$$;
SELECT public.give_function_to('public.request_unwind(uuid, text)'::regprocedure, 'pulse_syncer');
GRANT EXECUTE ON FUNCTION public.request_unwind(uuid, text) TO pulse_worker;
GRANT EXECUTE ON FUNCTION public.current_tenant_id() TO pulse_syncer;
