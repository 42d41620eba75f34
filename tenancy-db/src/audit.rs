//! The catalog audit: checks, from the system catalogs, that row-level security really
//! isolates tenants for a given role, and names every object that breaks it.
//!
//! A *tenant table* is any ordinary or partitioned table with a `tenant_id` column, in any
//! schema but the system ones. The audit reports when
//!
//! - the role is superuser, `BYPASSRLS`, `REPLICATION` or `CREATEROLE`, or a member of a
//!   superuser or `BYPASSRLS` role (it could `SET ROLE`), or of `pg_execute_server_program`,
//!   `pg_read_server_files` or `pg_write_server_files` (they reach the data files, or run
//!   programs as the server, outside row-level security);
//! - when auditing the connection's own role: all of the above also for `session_user`, the
//!   role that logged in, when it differs from `current_user` (a connection started with
//!   `options=-c role=app_runtime` as a superuser passes as `app_runtime`, and a
//!   `RESET ROLE` returns it to the superuser);
//! - the role owns a tenant table, or is a member of its owner;
//! - a tenant table lacks `ENABLE ROW LEVEL SECURITY`, `FORCE ROW LEVEL SECURITY`, or the
//!   RESTRICTIVE policy `tenant_id = (SELECT tenancy.current_tenant_id())` for all commands
//!   and all roles (as `tenancy.protect_table` creates it);
//! - the role holds `TRUNCATE` or `REFERENCES` on a tenant table (neither is filtered by
//!   row-level security); here and for `SECURITY DEFINER` functions below, the privileges of
//!   every role it is a member of count as its own, inherited or not, since it can
//!   `SET ROLE` to them;
//! - a tenant table's `tenant_id` has a non-deterministic collation (the policy compares
//!   under it: tenants whose ids it holds equal, `a-b` and `ab` when punctuation is ignored,
//!   share rows);
//! - the role may read or write a foreign table with a `tenant_id` column (a foreign table
//!   cannot have row-level security);
//! - a unique index, unique constraint or exclusion constraint on a tenant table omits
//!   `tenant_id` from its key (it leaks whether another tenant holds a value), or a foreign
//!   key from a tenant table to another tenant table does not pair `tenant_id` with the
//!   referenced table's `tenant_id` (it lets A point at B's rows); a foreign key to a table
//!   without `tenant_id` (a global lookup table such as `countries`) is fine;
//! - a `SECURITY DEFINER` function the role may execute is owned by a superuser, a
//!   `BYPASSRLS` role or the owner of a tenant table (or a member of one): it runs with its
//!   owner's rights and can read every tenant's rows; so is a `SECURITY DEFINER` trigger
//!   function on a table (or view) the role may write to, which runs on the role's writes
//!   whether it may execute the function or not;
//! - the role may reach `tenancy.tenants` (the tenant directory) or `tenancy._migrations`:
//!   platform tables without row-level security, for the platform role alone;
//! - a view over tenant tables (directly or through other views) is not `security_invoker`,
//!   or a materialized view is built over them (it stores every tenant's rows);
//! - `tenancy.current_tenant_id()` is missing.
//!
//! [`TenantPool::connect`](crate::TenantPool::connect) runs it at start-up and refuses to
//! serve on any finding; CI can run it as a function:
//!
//! ```no_run
//! use sqlx::Connection;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_db::Error> {
//! let mut conn = sqlx::PgConnection::connect("postgres://app_runtime@127.0.0.1/app").await?;
//! let report = tenancy_db::audit::audit_catalog(&mut conn, None).await?;
//! for finding in report.findings() {
//!     eprintln!("{finding}");
//! }
//! report.into_result()?; // Err(Error::Audit(..)) when anything was found
//! # Ok(()) }
//! ```

use std::fmt;

use sqlx::PgConnection;

use crate::schema::RoleName;
use crate::{Error, Result};

/// One defect found by the catalog audit. Its `Display` names the object and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// The audited role does not exist.
    RoleMissing {
        /// The role.
        role: String,
    },
    /// The role is a superuser: row-level security does not apply to it.
    Superuser {
        /// The role.
        role: String,
    },
    /// The role has `BYPASSRLS`.
    BypassRls {
        /// The role.
        role: String,
    },
    /// The role is a member of a superuser, `BYPASSRLS` or `CREATEROLE` role and could
    /// `SET ROLE` to it (and, with `CREATEROLE`, grant itself a table owner's role).
    MemberOfPrivilegedRole {
        /// The audited role.
        role: String,
        /// The privileged role.
        privileged: String,
    },
    /// The role owns a tenant table (directly or as a member of the owner); owners can
    /// disable row-level security.
    OwnsTenantTable {
        /// The audited role.
        role: String,
        /// The table.
        table: String,
        /// The table's owner.
        owner: String,
    },
    /// Row-level security is not enabled on a tenant table.
    RlsDisabled {
        /// The table.
        table: String,
    },
    /// Row-level security is not forced on a tenant table (its owner is not filtered).
    RlsNotForced {
        /// The table.
        table: String,
    },
    /// A tenant table has no RESTRICTIVE tenant policy for all commands and roles.
    PolicyMissing {
        /// The table.
        table: String,
    },
    /// The role holds a privilege on a tenant table that row-level security does not filter.
    UnfilteredPrivilege {
        /// The audited role.
        role: String,
        /// The table.
        table: String,
        /// `TRUNCATE` or `REFERENCES`.
        privilege: &'static str,
    },
    /// A unique index, unique constraint or exclusion constraint on a tenant table omits
    /// `tenant_id` from its key.
    UniqueWithoutTenant {
        /// The table.
        table: String,
        /// The index.
        index: String,
    },
    /// A foreign key from a tenant table to another tenant table does not pair `tenant_id`
    /// with the referenced table's `tenant_id`.
    ForeignKeyWithoutTenant {
        /// The table.
        table: String,
        /// The constraint.
        constraint: String,
        /// The referenced table.
        references: String,
    },
    /// A view over tenant tables runs with its owner's rights instead of the caller's.
    ViewNotSecurityInvoker {
        /// The view.
        view: String,
    },
    /// A materialized view over tenant tables stores every tenant's rows unfiltered.
    MaterializedViewOverTenantTable {
        /// The materialized view.
        view: String,
    },
    /// A tenant table's `tenant_id` has a non-deterministic collation: the tenant policy
    /// compares under it, so tenants whose ids it holds equal (`a-b` and `ab` under a
    /// collation that ignores punctuation) see and write each other's rows.
    NondeterministicTenantId {
        /// The table.
        table: String,
        /// The column's collation.
        collation: String,
    },
    /// A foreign table with a `tenant_id` column that the role may read or write: row-level
    /// security cannot be put on a foreign table, so every tenant's rows are reachable.
    ForeignTenantTable {
        /// The audited role.
        role: String,
        /// The foreign table.
        table: String,
    },
    /// `tenancy.current_tenant_id()` does not exist: the migrations have not run.
    HelperMissing,
    /// The role has `CREATEROLE`: up to PostgreSQL 15 it can grant itself any role that is
    /// not a superuser, such as a table owner or a `BYPASSRLS` role, and then `SET ROLE`.
    CreateRole {
        /// The role.
        role: String,
    },
    /// The role has `REPLICATION`: it can stream every tenant's rows out of the write-ahead
    /// log, outside row-level security.
    Replication {
        /// The role.
        role: String,
    },
    /// The role is a member of a built-in role that reaches the server's files or programs
    /// (`pg_execute_server_program`, `pg_read_server_files`, `pg_write_server_files`), and
    /// through them every tenant's rows.
    MemberOfServerFileRole {
        /// The audited role.
        role: String,
        /// The built-in role.
        builtin: String,
    },
    /// The connection logged in as `session` and switched to the audited role (`SET ROLE`,
    /// or `options=-c role=…`); `RESET ROLE` returns to `session`, so `session` is audited
    /// too and its findings are reported beside this one.
    SessionUserDiffers {
        /// The role the connection runs as (`current_user`).
        role: String,
        /// The role that logged in (`session_user`).
        session: String,
    },
    /// A `SECURITY DEFINER` function the role may execute runs as an owner that bypasses
    /// row-level security or owns a tenant table.
    SecurityDefinerFunction {
        /// The audited role.
        role: String,
        /// The function, with its argument types.
        function: String,
        /// The function's owner.
        owner: String,
    },
    /// A `SECURITY DEFINER` trigger function runs, as an owner that bypasses row-level
    /// security or owns a tenant table, whenever the role writes to the table the trigger is
    /// on: what the role writes can make it read (and return, or store) every tenant's rows.
    SecurityDefinerTrigger {
        /// The audited role.
        role: String,
        /// The table (or view) the trigger is on.
        table: String,
        /// The trigger.
        trigger: String,
        /// The trigger's function.
        function: String,
        /// The function's owner.
        owner: String,
    },
    /// The role (or a role it can act as) holds privileges on a platform table of the
    /// `tenancy` schema: `tenancy.tenants` (the tenant directory) or `tenancy._migrations`.
    /// They have no row-level security: a tenant request could read every tenant's settings,
    /// or lift its own suspension and limits.
    PlatformTableAccess {
        /// The audited role.
        role: String,
        /// The table.
        table: String,
        /// The privileges held, comma-separated.
        privileges: String,
    },
    /// `app.tenant_id` has a value before any tenant transaction sets one: queries outside a
    /// tenant transaction (and every connection after one) run as that tenant instead of
    /// failing.
    DefaultTenant {
        /// The role.
        role: String,
        /// Where the value comes from: `ALTER ROLE … SET`, `ALTER DATABASE … SET`, or the
        /// connection's options.
        source: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RoleMissing { role } => write!(f, "role {role:?} does not exist"),
            Self::Superuser { role } => write!(
                f,
                "role {role:?} is a superuser and bypasses row-level security; connect as a NOSUPERUSER runtime role"
            ),
            Self::BypassRls { role } => write!(
                f,
                "role {role:?} has BYPASSRLS; use a NOBYPASSRLS runtime role (or the platform pool for cross-tenant work)"
            ),
            Self::MemberOfPrivilegedRole { role, privileged } => write!(
                f,
                "role {role:?} is a member of {privileged:?}, which bypasses row-level security or can create and grant roles, and could SET ROLE to it; revoke the membership"
            ),
            Self::OwnsTenantTable { role, table, owner } => write!(
                f,
                "role {role:?} owns tenant table {table} (owner {owner:?}) and could disable its row-level security; give the table to another role"
            ),
            Self::RlsDisabled { table } => write!(
                f,
                "tenant table {table} does not have row-level security enabled; run tenancy.protect_table({})",
                literal(table)
            ),
            Self::RlsNotForced { table } => write!(
                f,
                "tenant table {table} does not FORCE row-level security; run tenancy.protect_table({})",
                literal(table)
            ),
            Self::PolicyMissing { table } => write!(
                f,
                "tenant table {table} lacks the RESTRICTIVE policy tenant_id = (SELECT tenancy.current_tenant_id()) for all commands; run tenancy.protect_table({})",
                literal(table)
            ),
            Self::UnfilteredPrivilege {
                role,
                table,
                privilege,
            } => write!(
                f,
                "role {role:?} holds {privilege} on tenant table {table}, which row-level security does not filter; revoke it"
            ),
            Self::UniqueWithoutTenant { table, index } => write!(
                f,
                "unique or exclusion index {index} on tenant table {table} omits tenant_id (or, for an exclusion constraint, does not compare it with =); make tenant_id part of the key"
            ),
            Self::ForeignKeyWithoutTenant {
                table,
                constraint,
                references,
            } => write!(
                f,
                "foreign key {constraint} on tenant table {table} (to {references}) does not pair tenant_id with the referenced tenant_id; include tenant_id on both sides"
            ),
            Self::ViewNotSecurityInvoker { view } => write!(
                f,
                "view {view} reads tenant tables but is not security_invoker; ALTER VIEW {view} SET (security_invoker = true)"
            ),
            Self::MaterializedViewOverTenantTable { view } => write!(
                f,
                "materialized view {view} stores rows of tenant tables without row-level security; drop it or replace it with a tenant table"
            ),
            Self::NondeterministicTenantId { table, collation } => write!(
                f,
                "tenant table {table} compares tenant_id under the non-deterministic collation {collation}, so tenants whose ids it holds equal share rows; ALTER TABLE {table} ALTER COLUMN tenant_id TYPE text COLLATE \"C\""
            ),
            Self::ForeignTenantTable { role, table } => write!(
                f,
                "role {role:?} may read or write the foreign table {table}, which has a tenant_id column but cannot have row-level security; REVOKE ALL ON {table} FROM {}",
                ident(role)
            ),
            Self::CreateRole { role } => write!(
                f,
                "role {role:?} has CREATEROLE and could grant itself a table owner's or a BYPASSRLS role; ALTER ROLE {} NOCREATEROLE",
                ident(role)
            ),
            Self::DefaultTenant { role, source } => write!(
                f,
                "role {role:?} starts with app.tenant_id set ({source}), so queries outside a tenant transaction see that tenant's rows; remove the default (RESET app.tenant_id, spelled as pg_db_role_setting holds it: a RESET spelled otherwise leaves it)"
            ),
            Self::Replication { role } => write!(
                f,
                "role {role:?} has REPLICATION and could stream every tenant's rows from the write-ahead log; ALTER ROLE {} NOREPLICATION",
                ident(role)
            ),
            Self::MemberOfServerFileRole { role, builtin } => write!(
                f,
                "role {role:?} is a member of {builtin}, which reaches the server's files or programs and every tenant's rows outside row-level security; revoke the membership"
            ),
            Self::SessionUserDiffers { role, session } => write!(
                f,
                "the connection logged in as {session:?} and runs as {role:?}; RESET ROLE would return it to {session:?}, so log in as the runtime role itself"
            ),
            Self::SecurityDefinerFunction {
                role,
                function,
                owner,
            } => write!(
                f,
                "role {role:?} may execute SECURITY DEFINER function {function}, owned by {owner:?}, which bypasses row-level security or owns a tenant table; REVOKE EXECUTE on it or make it SECURITY INVOKER"
            ),
            Self::SecurityDefinerTrigger {
                role,
                table,
                trigger,
                function,
                owner,
            } => write!(
                f,
                "trigger {trigger:?} on {table}, which role {role:?} may write to, runs SECURITY DEFINER function {function}, owned by {owner:?}, which bypasses row-level security or owns a tenant table; make the function SECURITY INVOKER or drop the trigger"
            ),
            Self::PlatformTableAccess {
                role,
                table,
                privileges,
            } => write!(
                f,
                "role {role:?} holds {privileges} on {table}, platform data without row-level security; revoke them (only the platform role, see grant_platform_role, reaches it)"
            ),
            Self::HelperMissing => write!(
                f,
                "function tenancy.current_tenant_id() is missing; run the tenancy-db migrations"
            ),
        }
    }
}

/// `s` as an SQL string literal, for the commands a finding suggests: a table name read from
/// the catalog may hold a quote, and pasting the suggestion must run nothing else.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `s` as a quoted SQL identifier, for the same reason.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The outcome of [`audit_catalog`]: the audited role and every finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    role: String,
    findings: Vec<Finding>,
}

impl AuditReport {
    /// The audited role.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Every finding, in a stable order.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// `Ok(())` when clean, else [`Error::Audit`] with this report.
    pub fn into_result(self) -> Result<()> {
        if self.is_clean() {
            Ok(())
        } else {
            Err(Error::Audit(self))
        }
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() {
            return write!(f, "catalog audit for role {:?}: no findings", self.role);
        }
        write!(
            f,
            "catalog audit for role {:?} found {} problem(s); refusing to serve:",
            self.role,
            self.findings.len()
        )?;
        for finding in &self.findings {
            write!(f, "\n  - {finding}")?;
        }
        Ok(())
    }
}

/// name, RLS enabled, RLS forced, policy present.
type TableRow = (String, bool, bool, bool);

const TENANT_TABLES: &str = "
tt AS (
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relrowsecurity,
           c.relforcerowsecurity, c.relowner, a.attnum
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
                       AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_(toast|temp)'
)";

/// Whether the owner of function `p` bypasses row-level security (a superuser or `BYPASSRLS`
/// role, or a member of one) or owns a tenant table (`tt`, [`TENANT_TABLES`]).
const PRIVILEGED_OWNER: &str = "
(EXISTS (SELECT 1 FROM pg_roles o
         WHERE (o.rolsuper OR o.rolbypassrls)
           AND pg_has_role(p.proowner, o.oid, 'MEMBER'))
 OR EXISTS (SELECT 1 FROM tt WHERE pg_has_role(p.proowner, tt.relowner, 'MEMBER')))";

/// Every role the audited one (`$1`) can act as: itself and the roles it is a member of,
/// directly or not, inheriting their privileges or not (it can `SET ROLE` to each).
const REACH: &str = "
reach AS (
    SELECT oid FROM pg_roles WHERE pg_has_role($1, oid, 'MEMBER')
)";

/// Defaults of `app.tenant_id` that apply to `role` in this database (`ALTER ROLE … SET`,
/// `ALTER DATABASE … SET`, both, or for every role), and, when `this_connection` is the
/// audited role's, a value the connection started with (its `options`).
async fn default_tenant(
    conn: &mut PgConnection,
    role: &str,
    this_connection: bool,
) -> Result<Vec<Finding>> {
    let sources: Vec<String> = sqlx::query_scalar(
        "SELECT CASE
                  WHEN s.setrole = 0 AND s.setdatabase = 0 THEN 'ALTER ROLE ALL … SET'
                  WHEN s.setrole = 0 THEN 'ALTER DATABASE … SET'
                  WHEN s.setdatabase = 0 THEN 'ALTER ROLE … SET'
                  ELSE 'ALTER ROLE … IN DATABASE … SET'
                END
         FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
         -- Setting names are case-insensitive: `App.Tenant_Id` is the same setting.
         WHERE lower(split_part(c.setting, '=', 1)) = 'app.tenant_id'
           AND (s.setrole = 0 OR s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1))
           AND (s.setdatabase = 0
                OR s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))
         ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    let mut found: Vec<Finding> = sources
        .into_iter()
        .map(|source| Finding::DefaultTenant {
            role: role.to_owned(),
            source,
        })
        .collect();
    if this_connection && found.is_empty() {
        let now: Option<String> =
            sqlx::query_scalar("SELECT nullif(current_setting('app.tenant_id', true), '')")
                .fetch_one(&mut *conn)
                .await?;
        if now.is_some() {
            found.push(Finding::DefaultTenant {
                role: role.to_owned(),
                source: "the connection's options".to_owned(),
            });
        }
    }
    Ok(found)
}

/// Role-level findings for `role`: its attributes, the roles it could become, its defaults,
/// what it owns or holds on tenant tables, and the `SECURITY DEFINER` functions it may call.
/// `None` when the role does not exist.
async fn role_findings(
    conn: &mut PgConnection,
    role: &str,
    this_connection: bool,
) -> Result<Option<Vec<Finding>>> {
    let mut findings = Vec::new();
    let flags: Option<(bool, bool, bool, bool)> = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolreplication
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((superuser, bypass, createrole, replication)) = flags else {
        return Ok(None);
    };
    let owned = || role.to_owned();
    if superuser {
        findings.push(Finding::Superuser { role: owned() });
    }
    if bypass {
        findings.push(Finding::BypassRls { role: owned() });
    }
    // A superuser has every attribute and is a member of every role: the checks below would
    // only repeat that.
    if !superuser {
        if createrole {
            findings.push(Finding::CreateRole { role: owned() });
        }
        if replication {
            findings.push(Finding::Replication { role: owned() });
        }
    }
    findings.extend(default_tenant(conn, role, this_connection).await?);
    if superuser {
        return Ok(Some(findings));
    }

    // Roles this one is a member of that bypass row-level security, that can create and
    // grant roles (and so make their members a table owner's member), or that read and write
    // the server's files (`true`: one of the built-in server-file roles).
    let memberships: Vec<(String, bool)> = sqlx::query_as(
        "SELECT r.rolname::text,
                r.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                              'pg_write_server_files')
         FROM pg_roles r
         WHERE r.rolname <> $1
           AND (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole
                OR r.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                 'pg_write_server_files'))
           AND pg_has_role($1, r.oid, 'MEMBER')
         ORDER BY 2, 1",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    findings.extend(memberships.into_iter().map(|(name, builtin)| {
        if builtin {
            Finding::MemberOfServerFileRole {
                role: owned(),
                builtin: name,
            }
        } else {
            Finding::MemberOfPrivilegedRole {
                role: owned(),
                privileged: name,
            }
        }
    }));

    // Privileges are checked for every role the audited one can act as (`SET ROLE`): a
    // NOINHERIT role, as `create_runtime_role` makes, does not count its roles' privileges
    // as its own, but can still take them up. Those that can be granted on columns alone
    // (SELECT, INSERT, UPDATE, REFERENCES) count when held on any column.
    let tables: Vec<(String, String, bool, bool, bool)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH {TENANT_TABLES}, {REACH}
             SELECT tt.name, pg_get_userbyid(tt.relowner)::text,
                    pg_has_role($1, tt.relowner, 'MEMBER'),
                    EXISTS (SELECT 1 FROM reach WHERE has_table_privilege(reach.oid, tt.oid, 'TRUNCATE')),
                    EXISTS (SELECT 1 FROM reach WHERE has_any_column_privilege(reach.oid, tt.oid, 'REFERENCES'))
             FROM tt ORDER BY tt.name"
        )))
        .bind(role)
        .fetch_all(&mut *conn)
        .await?;
    for (table, owner, owns, truncate, references) in tables {
        if owns {
            findings.push(Finding::OwnsTenantTable {
                role: owned(),
                table,
                owner,
            });
            continue;
        }
        for (held, privilege) in [(truncate, "TRUNCATE"), (references, "REFERENCES")] {
            if held {
                findings.push(Finding::UnfilteredPrivilege {
                    role: owned(),
                    table: table.clone(),
                    privilege,
                });
            }
        }
    }

    let definers: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH {TENANT_TABLES}, {REACH}
         SELECT format('%I.%I(%s)', n.nspname, p.proname,
                       pg_get_function_identity_arguments(p.oid)),
                pg_get_userbyid(p.proowner)::text
         FROM pg_proc p
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef
           -- Trigger functions cannot be called directly (triggers are below).
           AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND EXISTS (SELECT 1 FROM reach
                       WHERE has_schema_privilege(reach.oid, n.oid, 'USAGE')
                         AND has_function_privilege(reach.oid, p.oid, 'EXECUTE'))
           AND {PRIVILEGED_OWNER}
         ORDER BY 1"
    )))
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    findings.extend(definers.into_iter().map(|(function, owner)| {
        Finding::SecurityDefinerFunction {
            role: owned(),
            function,
            owner,
        }
    }));

    // A trigger's function runs on the writes of whoever may write to its table, EXECUTE or
    // not; a disabled trigger counts too (an `ENABLE` away from running).
    let triggers: Vec<(String, String, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH {TENANT_TABLES}, {REACH}
             SELECT format('%I.%I', n.nspname, c.relname), t.tgname::text,
                    format('%I.%I(%s)', pn.nspname, p.proname,
                           pg_get_function_identity_arguments(p.oid)),
                    pg_get_userbyid(p.proowner)::text
             FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_proc p ON p.oid = t.tgfoid
             JOIN pg_namespace pn ON pn.oid = p.pronamespace
             WHERE NOT t.tgisinternal AND p.prosecdef
               AND EXISTS (SELECT 1 FROM reach
                           WHERE has_schema_privilege(reach.oid, n.oid, 'USAGE')
                             AND (has_any_column_privilege(reach.oid, c.oid, 'INSERT, UPDATE')
                                  OR has_table_privilege(reach.oid, c.oid, 'DELETE, TRUNCATE')))
               AND {PRIVILEGED_OWNER}
             ORDER BY 1, 2"
        )))
        .bind(role)
        .fetch_all(&mut *conn)
        .await?;
    findings.extend(
        triggers
            .into_iter()
            .map(
                |(table, trigger, function, owner)| Finding::SecurityDefinerTrigger {
                    role: owned(),
                    table,
                    trigger,
                    function,
                    owner,
                },
            ),
    );

    let platform: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH {REACH}
         SELECT format('%I.%I', n.nspname, c.relname), string_agg(pr.p, ', ' ORDER BY pr.i)
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                 'REFERENCES', 'TRIGGER']) WITH ORDINALITY AS pr(p, i)
         WHERE n.nspname = 'tenancy' AND c.relname IN ('tenants', '_migrations')
           AND EXISTS (SELECT 1 FROM reach
                       WHERE CASE WHEN pr.p IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                                  THEN has_any_column_privilege(reach.oid, c.oid, pr.p)
                                  ELSE has_table_privilege(reach.oid, c.oid, pr.p) END)
         GROUP BY 1
         ORDER BY 1"
    )))
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    findings.extend(
        platform
            .into_iter()
            .map(|(table, privileges)| Finding::PlatformTableAccess {
                role: owned(),
                table,
                privileges,
            }),
    );

    let collations: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH {TENANT_TABLES}
         SELECT tt.name, format('%I.%I', cn.nspname, co.collname)
         FROM tt
         JOIN pg_attribute a ON a.attrelid = tt.oid AND a.attnum = tt.attnum
         JOIN pg_collation co ON co.oid = a.attcollation
         JOIN pg_namespace cn ON cn.oid = co.collnamespace
         WHERE NOT co.collisdeterministic
         ORDER BY 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    findings.extend(
        collations
            .into_iter()
            .map(|(table, collation)| Finding::NondeterministicTenantId { table, collation }),
    );

    let foreign: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH {REACH}
         SELECT format('%I.%I', n.nspname, c.relname)
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
                            AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind = 'f'
           AND EXISTS (SELECT 1 FROM reach
                       WHERE has_any_column_privilege(reach.oid, c.oid, 'SELECT, INSERT, UPDATE')
                          OR has_table_privilege(reach.oid, c.oid, 'DELETE'))
         ORDER BY 1"
    )))
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    findings.extend(
        foreign
            .into_iter()
            .map(|(table,)| Finding::ForeignTenantTable {
                role: owned(),
                table,
            }),
    );
    Ok(Some(findings))
}

/// Audits the catalog of the connected database for `role` (the connected user when `None`).
///
/// With `None`, the connection's `session_user` (the role that logged in) is audited as well
/// when it differs from `current_user`: `RESET ROLE` would return the connection to it.
///
/// Reads only system catalogs; needs no privilege beyond connecting. Errors only when a
/// catalog query fails; defects are findings in the report.
pub async fn audit_catalog(
    conn: &mut PgConnection,
    role: Option<&RoleName>,
) -> Result<AuditReport> {
    let (role_name, session): (String, Option<String>) = match role {
        Some(r) => (r.as_str().to_owned(), None),
        None => {
            let (current, session): (String, String) =
                sqlx::query_as("SELECT current_user::text, session_user::text")
                    .fetch_one(&mut *conn)
                    .await?;
            let session = (session != current).then_some(session);
            (current, session)
        }
    };
    let mut findings = Vec::new();

    let Some(own) = role_findings(conn, &role_name, role.is_none()).await? else {
        findings.push(Finding::RoleMissing {
            role: role_name.clone(),
        });
        return Ok(AuditReport {
            role: role_name,
            findings,
        });
    };
    findings.extend(own);
    if let Some(session) = session {
        findings.push(Finding::SessionUserDiffers {
            role: role_name.clone(),
            session: session.clone(),
        });
        if let Some(more) = role_findings(conn, &session, false).await? {
            findings.extend(more);
        }
    }

    let helper: Option<i64> = sqlx::query_scalar(
        "SELECT p.oid::int8 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'tenancy' AND p.proname = 'current_tenant_id' AND p.pronargs = 0",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if helper.is_none() {
        findings.push(Finding::HelperMissing);
    }

    let tables: Vec<TableRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH {TENANT_TABLES}
             SELECT tt.name, tt.relrowsecurity, tt.relforcerowsecurity,
                    EXISTS (
                        SELECT 1 FROM pg_policy p
                        WHERE p.polrelid = tt.oid AND NOT p.polpermissive AND p.polcmd = '*'
                          AND p.polroles = '{{0}}'::oid[]
                          AND pg_get_expr(p.polqual, p.polrelid) ~ $1
                          AND pg_get_expr(p.polwithcheck, p.polrelid) ~ $1
                          AND EXISTS (
                              SELECT 1 FROM pg_depend d
                              WHERE d.classid = 'pg_policy'::regclass AND d.objid = p.oid
                                AND d.refclassid = 'pg_proc'::regclass
                                AND d.refobjid::int8 = $2))
             FROM tt ORDER BY tt.name"
    )))
    .bind(r"^\(tenant_id = \( SELECT (tenancy\.)?current_tenant_id\(\) AS current_tenant_id\)\)$")
    .bind(helper.unwrap_or(0))
    .fetch_all(&mut *conn)
    .await?;
    for (table, rls, forced, policy) in tables {
        if !rls {
            findings.push(Finding::RlsDisabled {
                table: table.clone(),
            });
        }
        if !forced {
            findings.push(Finding::RlsNotForced {
                table: table.clone(),
            });
        }
        if !policy {
            findings.push(Finding::PolicyMissing { table });
        }
    }

    let uniques: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH {TENANT_TABLES}
         SELECT tt.name, format('%I.%I', n.nspname, ic.relname)
         FROM tt
         JOIN pg_index i ON i.indrelid = tt.oid
         JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = ic.relnamespace
         WHERE (i.indisunique AND NOT (tt.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])))
            -- An exclusion constraint keeps tenants apart only when it compares tenant_id
            -- with `=`: `tenant_id WITH <>` makes one tenant's rows exclude another's.
            OR (i.indisexclusion AND NOT EXISTS (
                SELECT 1
                FROM pg_constraint x
                CROSS JOIN LATERAL unnest(x.conkey, x.conexclop) AS k(col, op)
                JOIN pg_operator o ON o.oid = k.op
                WHERE x.conindid = i.indexrelid AND x.contype = 'x'
                  AND k.col = tt.attnum AND o.oprname = '='))
         ORDER BY 1, 2"
    )))
    .fetch_all(&mut *conn)
    .await?;
    findings.extend(
        uniques
            .into_iter()
            .map(|(table, index)| Finding::UniqueWithoutTenant { table, index }),
    );

    let fks: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH {TENANT_TABLES}
         SELECT tt.name, con.conname::text, format('%I.%I', rn.nspname, rc.relname)
         FROM tt
         JOIN pg_constraint con ON con.conrelid = tt.oid AND con.contype = 'f'
         -- Only a reference to another tenant table must pair tenant_id; a global lookup
         -- table (no tenant_id) holds no tenant's rows.
         JOIN tt rt ON rt.oid = con.confrelid
         JOIN pg_class rc ON rc.oid = con.confrelid
         JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE NOT EXISTS (
             SELECT 1 FROM unnest(con.conkey, con.confkey) AS k(col, refcol)
             JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = k.refcol
             WHERE k.col = tt.attnum AND ra.attname = 'tenant_id')
         ORDER BY 1, 2"
    )))
    .fetch_all(&mut *conn)
    .await?;
    findings.extend(fks.into_iter().map(|(table, constraint, references)| {
        Finding::ForeignKeyWithoutTenant {
            table,
            constraint,
            references,
        }
    }));

    let views: Vec<(String, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE {TENANT_TABLES},
         dep AS (
             SELECT DISTINCT r.ev_class AS view, d.refobjid AS base
             FROM pg_rewrite r
             JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                             AND d.refclassid = 'pg_class'::regclass
             WHERE d.refobjid <> r.ev_class
         ),
         over AS (
             SELECT dep.view FROM dep JOIN tt ON tt.oid = dep.base
             UNION
             SELECT dep.view FROM dep JOIN over ON over.view = dep.base
         )
         SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text,
                coalesce((
                    SELECT bool_or(lower(split_part(o, '=', 2)) IN
                                   ('true', 'on', '1', 'yes', 't', 'y', 'tr', 'tru', 'ye'))
                    FROM unnest(c.reloptions) AS o
                    WHERE split_part(o, '=', 1) = 'security_invoker'), false)
         FROM over
         JOIN pg_class c ON c.oid = over.view
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('v', 'm')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
         ORDER BY 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for (view, kind, invoker) in views {
        if kind == "m" {
            findings.push(Finding::MaterializedViewOverTenantTable { view });
        } else if !invoker {
            findings.push(Finding::ViewNotSecurityInvoker { view });
        }
    }

    Ok(AuditReport {
        role: role_name,
        findings,
    })
}
