-- The tenancy schema: the tenant-setting helper and the table-protection helpers.
-- Nothing here is granted to PUBLIC; roles get what they need from the grant helpers.

REVOKE ALL ON SCHEMA tenancy FROM PUBLIC;

-- The tenant of the current transaction. Raises SQLSTATE 42501 when none is set, so a query
-- that forgot its tenant context fails instead of returning nothing or everything.
CREATE FUNCTION tenancy.current_tenant_id() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t text := current_setting('app.tenant_id', true);
BEGIN
    IF t IS NULL OR t = '' THEN
        RAISE EXCEPTION 'no tenant is set for this transaction'
            USING ERRCODE = '42501',
                  HINT = 'open a tenant transaction (TenantPool::begin) before touching tenant tables';
    END IF;
    IF t !~ '^[a-z0-9][a-z0-9_-]{0,63}$' THEN
        RAISE EXCEPTION 'the tenant setting of this transaction is not a valid tenant id'
            USING ERRCODE = '42501';
    END IF;
    RETURN t;
END
$fn$;
REVOKE ALL ON FUNCTION tenancy.current_tenant_id() FROM PUBLIC;

-- Puts a table with a tenant_id column under row-level security: ENABLE and FORCE (the owner
-- is filtered too), a RESTRICTIVE policy that no other policy can widen, a PERMISSIVE policy
-- with the same condition (PostgreSQL shows nothing when only restrictive policies exist), and
-- tenant_id defaulting to the transaction's tenant. Idempotent; run it as the table's owner.
CREATE FUNCTION tenancy.protect_table(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cond constant text := 'tenant_id = (SELECT tenancy.current_tenant_id())';
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = tbl AND attname = 'tenant_id' AND attnum > 0 AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'table % has no tenant_id column', tbl USING ERRCODE = '42703';
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN tenant_id SET DEFAULT tenancy.current_tenant_id()', tbl);
    EXECUTE format('DROP POLICY IF EXISTS tenancy_isolation ON %s', tbl);
    EXECUTE format('DROP POLICY IF EXISTS tenancy_access ON %s', tbl);
    EXECUTE format('CREATE POLICY tenancy_isolation ON %s AS RESTRICTIVE FOR ALL TO PUBLIC USING (%s) WITH CHECK (%s)', tbl, cond, cond);
    EXECUTE format('CREATE POLICY tenancy_access ON %s AS PERMISSIVE FOR ALL TO PUBLIC USING (%s) WITH CHECK (%s)', tbl, cond, cond);
END
$fn$;
REVOKE ALL ON FUNCTION tenancy.protect_table(regclass) FROM PUBLIC;

-- Lets a runtime role read and write a protected table (never TRUNCATE, REFERENCES or
-- TRIGGER: TRUNCATE and foreign-key checks are not filtered by row-level security), and use
-- the sequences the table owns.
CREATE FUNCTION tenancy.grant_table(tbl regclass, grantee name) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    seq regclass;
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I', tbl, grantee);
    FOR seq IN
        SELECT d.objid::regclass FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = tbl AND s.relkind = 'S' AND d.deptype IN ('a', 'i')
    LOOP
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', seq, grantee);
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION tenancy.grant_table(regclass, name) FROM PUBLIC;
