-- Ended sessions are found by their deadline: `PgSessionStore::purge_ended` deletes a
-- tenant's ended sessions in bounded batches, each found through this index rather than by
-- reading every session of the tenant.
CREATE INDEX sessions_by_deadline ON tenancy.sessions (tenant_id, deadline);
