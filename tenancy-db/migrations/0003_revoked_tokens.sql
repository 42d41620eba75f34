-- Revoked token ids (the denylist). Each entry belongs to the tenant of the revoked token, so
-- the table is an ordinary tenant table under row-level security, reached only through a
-- tenant transaction. The token id is kept as bytes: any text a token carries (a NUL
-- included, which `text` refuses), at most 1024 bytes (tenancy_core::MAX_JTI_BYTES).
CREATE TABLE tenancy.revoked_tokens (
    tenant_id  text   NOT NULL,
    jti        bytea  NOT NULL CHECK (octet_length(jti) <= 1024),
    expires_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, jti)
);
CREATE INDEX revoked_tokens_by_expiry ON tenancy.revoked_tokens (tenant_id, expires_at);
SELECT tenancy.protect_table('tenancy.revoked_tokens');
