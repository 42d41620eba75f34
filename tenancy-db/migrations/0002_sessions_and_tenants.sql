-- Sessions belong to a tenant and every session operation names its tenant, so the table is
-- an ordinary tenant table under row-level security and is only reached through a tenant
-- transaction.
CREATE TABLE tenancy.sessions (
    tenant_id         text        NOT NULL,
    id                text        NOT NULL,
    user_id           text        NOT NULL,
    created_at        timestamptz NOT NULL,
    last_seen_at      timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    idle_timeout_secs bigint      NOT NULL CHECK (idle_timeout_secs >= 0),
    deadline          timestamptz NOT NULL,
    version           bigint      NOT NULL CHECK (version >= 1),
    data              jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX sessions_by_user ON tenancy.sessions (tenant_id, user_id, created_at);
SELECT tenancy.protect_table('tenancy.sessions');

-- The tenant directory is platform data: the list of tenants, their tier, overrides, status
-- and bypass window. It is read and written only through the platform pool; the runtime role
-- gets no privilege on it (a tenant's request cannot read the tenant list or lift its own
-- suspension). Its key column is `id`, not `tenant_id`: no tenant owns a row of it.
CREATE TABLE tenancy.tenants (
    id              text        PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    status          text        NOT NULL CHECK (status IN ('active', 'suspended')),
    tier            text        NOT NULL,
    tenant_per_hour bigint      CHECK (tenant_per_hour >= 0),
    tenant_burst    bigint      CHECK (tenant_burst >= 0),
    user_per_hour   bigint      CHECK (user_per_hour >= 0),
    user_burst      bigint      CHECK (user_burst >= 0),
    bypass_until    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON tenancy.tenants FROM PUBLIC;
