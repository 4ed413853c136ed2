-- The platform's watcher contract verbatim (seed 003, issue 13): a change names its
-- user, not its tenant. The web process resolves the tenant from the user's
-- membership through this definer function, which sees (tenant_id, user_id) of
-- tenant_members and nothing else; two rows at most say "one" or "several".
GRANT SELECT (tenant_id, user_id) ON public.tenant_members TO pulse_syncer;
CREATE POLICY syncer_reads ON tenant_members FOR SELECT TO pulse_syncer USING (true);

CREATE FUNCTION public.tenants_of_user(member text) RETURNS SETOF uuid LANGUAGE sql STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenant_id FROM public.tenant_members WHERE user_id = member ORDER BY tenant_id LIMIT 2
$$;
SELECT public.give_function_to('public.tenants_of_user(text)', 'pulse_syncer');
GRANT EXECUTE ON FUNCTION public.tenants_of_user(text) TO pulse_worker;
