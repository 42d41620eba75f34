//! The catalog audit: start-up refusal for unsafe roles, and one seeded defect per finding.

mod common;

use common::TestEnv;
use sqlx::PgConnection;
use tenancy_db::schema::RoleName;
use tenancy_db::{Error, Finding, TenantPool, audit_catalog};

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn findings(env: &TestEnv) -> Vec<Finding> {
    let mut conn = env.connect_as(&env.runtime).await;
    audit_catalog(&mut conn, None)
        .await
        .expect("audit")
        .findings()
        .to_vec()
}

#[tokio::test]
async fn unsafe_roles_are_refused_at_start_up() {
    let Some(env) = TestEnv::new().await else {
        return;
    };

    // The runtime role passes.
    let pool = TenantPool::connect(env.runtime_config())
        .await
        .expect("runtime role is clean");
    assert!(pool.audit().await.unwrap().is_clean());
    pool.close().await;

    // A superuser.
    let admin_user = env.options().get_username().to_owned();
    let err = TenantPool::connect(env.config_as(&admin_user))
        .await
        .unwrap_err();
    let Error::Audit(report) = &err else {
        panic!("superuser: {err:?}")
    };
    assert!(
        report.findings().contains(&Finding::Superuser {
            role: admin_user.clone()
        }),
        "{report}"
    );
    assert!(err.to_string().contains("superuser"), "{err}");

    // A BYPASSRLS role (otherwise like the runtime role).
    let bypass = RoleName::parse(&tenancy_tests::unique("tdb_")).unwrap();
    let _guard = common::Roles::guard(&env, &bypass);
    let mut admin = env.admin().await;
    tenancy_db::schema::create_runtime_role(&mut admin, &bypass)
        .await
        .unwrap();
    exec(&mut admin, &format!("ALTER ROLE \"{bypass}\" BYPASSRLS")).await;
    let err = TenantPool::connect(env.config_as(bypass.as_str()))
        .await
        .unwrap_err();
    let Error::Audit(report) = &err else {
        panic!("bypassrls: {err:?}")
    };
    assert_eq!(
        report.findings(),
        &[Finding::BypassRls {
            role: bypass.to_string()
        }],
        "{report}"
    );

    // The owner of the tenant tables.
    let err = TenantPool::connect(env.config_as(env.owner.as_str()))
        .await
        .unwrap_err();
    let Error::Audit(report) = &err else {
        panic!("owner: {err:?}")
    };
    let owned: Vec<&str> = report
        .findings()
        .iter()
        .filter_map(|f| match f {
            Finding::OwnsTenantTable { table, .. } => Some(table.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        owned,
        vec![
            "public.comments",
            "public.records",
            "tenancy.revoked_tokens",
            "tenancy.sessions"
        ],
        "{report}"
    );
    assert!(
        err.to_string().contains("owns tenant table public.records"),
        "{err}"
    );

    // A member of a privileged role (it could SET ROLE to it).
    let privileged = RoleName::parse(&tenancy_tests::unique("tdx_")).unwrap();
    let _guard2 = common::Roles::guard(&env, &privileged);
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE \"{privileged}\" NOLOGIN BYPASSRLS; GRANT \"{privileged}\" TO \"{}\"",
            env.runtime
        ),
    )
    .await;
    let err = TenantPool::connect(env.runtime_config()).await.unwrap_err();
    let Error::Audit(report) = &err else {
        panic!("member: {err:?}")
    };
    assert_eq!(
        report.findings(),
        &[Finding::MemberOfPrivilegedRole {
            role: env.runtime.to_string(),
            privileged: privileged.to_string()
        }],
        "{report}"
    );
    // A member of a CREATEROLE role: it could SET ROLE to it and grant itself the owner's
    // role.
    exec(
        &mut admin,
        &format!("ALTER ROLE \"{privileged}\" NOBYPASSRLS CREATEROLE"),
    )
    .await;
    assert_eq!(
        findings(&env).await,
        vec![Finding::MemberOfPrivilegedRole {
            role: env.runtime.to_string(),
            privileged: privileged.to_string()
        }],
        "CREATEROLE membership"
    );
    exec(
        &mut admin,
        &format!("REVOKE \"{privileged}\" FROM \"{}\"", env.runtime),
    )
    .await;
    // A member of the owner role.
    exec(
        &mut admin,
        &format!("GRANT \"{}\" TO \"{}\"", env.owner, env.runtime),
    )
    .await;
    // The owner's tables: four tenant tables, and the two platform tables of the schema.
    let f = findings(&env).await;
    assert_eq!(f.len(), 6, "{f:?}");
    let owns = |f: &&Finding| matches!(f, Finding::OwnsTenantTable { .. });
    assert_eq!(f.iter().filter(owns).count(), 4, "{f:?}");
    let platform: Vec<_> = f
        .iter()
        .filter_map(|f| match f {
            Finding::PlatformTableAccess { table, .. } => Some(table.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        platform,
        ["tenancy._migrations", "tenancy.tenants"],
        "{f:?}"
    );
    exec(
        &mut admin,
        &format!("REVOKE \"{}\" FROM \"{}\"", env.owner, env.runtime),
    )
    .await;
    assert_eq!(findings(&env).await, vec![]);
}

/// A runtime role that starts with a tenant set, or that could grant itself a privileged
/// role, is refused at start-up like a BYPASSRLS one.
#[tokio::test]
async fn a_default_tenant_or_createrole_is_refused_at_start_up() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let role = RoleName::parse(&tenancy_tests::unique("tdb_")).unwrap();
    let _guard = common::Roles::guard(&env, &role);
    let mut admin = env.admin().await;
    tenancy_db::schema::create_runtime_role(&mut admin, &role)
        .await
        .unwrap();
    let refused = |err: Error| match err {
        Error::Audit(report) => report.findings().to_vec(),
        other => panic!("{other:?}"),
    };

    exec(
        &mut admin,
        &format!("ALTER ROLE \"{role}\" SET app.tenant_id = 'acme'"),
    )
    .await;
    let err = TenantPool::connect(env.config_as(role.as_str()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("app.tenant_id"), "{err}");
    assert_eq!(
        refused(err),
        vec![Finding::DefaultTenant {
            role: role.to_string(),
            source: "ALTER ROLE … SET".into()
        }]
    );
    exec(
        &mut admin,
        &format!("ALTER ROLE \"{role}\" RESET app.tenant_id"),
    )
    .await;

    // Setting names are case-insensitive: the catalog keeps the spelling it was given (by a
    // session that has not met the setting yet), and the audit of another connection (a
    // deployment step) must still see it.
    exec(
        &mut env.admin().await,
        &format!("ALTER ROLE \"{role}\" SET \"App.Tenant_Id\" = 'acme'"),
    )
    .await;
    let report = audit_catalog(&mut admin, Some(&role)).await.unwrap();
    assert_eq!(
        report.findings(),
        &[Finding::DefaultTenant {
            role: role.to_string(),
            source: "ALTER ROLE … SET".into()
        }]
    );
    // RESET of another spelling would leave it; RESET ALL does not.
    exec(&mut admin, &format!("ALTER ROLE \"{role}\" RESET ALL")).await;

    exec(&mut admin, &format!("ALTER ROLE \"{role}\" CREATEROLE")).await;
    let err = TenantPool::connect(env.config_as(role.as_str()))
        .await
        .unwrap_err();
    assert_eq!(
        refused(err),
        vec![Finding::CreateRole {
            role: role.to_string()
        }]
    );
    exec(&mut admin, &format!("ALTER ROLE \"{role}\" NOCREATEROLE")).await;
    let pool = TenantPool::connect(env.config_as(role.as_str()))
        .await
        .expect("clean again");
    pool.close().await;
}

/// What the runtime role can take up without inheriting it, a collation that holds two
/// tenant ids equal, and a foreign table (which cannot have row-level security) are found.
#[tokio::test]
async fn roles_taken_up_collations_and_foreign_tables_are_audited() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let mut admin = env.admin().await;
    assert_eq!(findings(&env).await, vec![], "clean to begin with");
    let runtime = env.runtime.to_string();
    let records = "public.records".to_owned();
    // A role the runtime role is a member of: NOINHERIT does not count its privileges, but
    // `SET ROLE` takes them up.
    let writer = format!("{runtime}_w");
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE \"{writer}\" NOLOGIN;
             GRANT TRUNCATE ON public.records TO \"{writer}\";
             GRANT \"{writer}\" TO \"{runtime}\";"
        ),
    )
    .await;
    assert_eq!(
        findings(&env).await,
        vec![Finding::UnfilteredPrivilege {
            role: runtime.clone(),
            table: records.clone(),
            privilege: "TRUNCATE",
        }]
    );
    // A SECURITY DEFINER function only that role may execute.
    let owner = env.owner.to_string();
    exec(
        &mut admin,
        &format!(
            "SET ROLE \"{owner}\";
             CREATE FUNCTION public.peek(t text) RETURNS bigint LANGUAGE sql SECURITY DEFINER
             AS 'SELECT count(*) FROM public.records WHERE tenant_id = t';
             REVOKE EXECUTE ON FUNCTION public.peek(text) FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION public.peek(text) TO \"{writer}\";
             RESET ROLE;
             REVOKE TRUNCATE ON public.records FROM \"{writer}\";"
        ),
    )
    .await;
    assert_eq!(
        findings(&env).await,
        vec![Finding::SecurityDefinerFunction {
            role: runtime.clone(),
            function: "public.peek(t text)".into(),
            owner: owner.clone(),
        }]
    );
    exec(
        &mut admin,
        &format!(
            "DROP FUNCTION public.peek(text); REVOKE \"{writer}\" FROM \"{runtime}\";
             DROP ROLE \"{writer}\";"
        ),
    )
    .await;
    assert_eq!(findings(&env).await, vec![]);

    // Punctuation ignored: `a-b` and `ab` are one tenant under this collation.
    exec(
        &mut admin,
        "CREATE COLLATION public.loose (provider = icu, locale = 'und-u-ks-level1-ka-shifted',
                                        deterministic = false);
         CREATE TABLE public.notes (tenant_id text COLLATE public.loose NOT NULL, body text);
         SELECT tenancy.protect_table('public.notes');",
    )
    .await;
    exec(
        &mut admin,
        &format!("SELECT tenancy.grant_table('public.notes', '{runtime}')"),
    )
    .await;
    let got = findings(&env).await;
    assert_eq!(
        got,
        vec![Finding::NondeterministicTenantId {
            table: "public.notes".into(),
            collation: "public.loose".into(),
        }]
    );
    assert!(got[0].to_string().contains("public.notes"), "{}", got[0]);
    exec(
        &mut admin,
        "DROP TABLE public.notes; DROP COLLATION public.loose",
    )
    .await;

    // A foreign table with tenant_id that the role may read.
    exec(
        &mut admin,
        &format!(
            "CREATE EXTENSION IF NOT EXISTS file_fdw;
             CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
             CREATE FOREIGN TABLE public.imported (tenant_id text, body text)
               SERVER files OPTIONS (filename '/dev/null');
             GRANT SELECT ON public.imported TO \"{runtime}\";"
        ),
    )
    .await;
    let got = findings(&env).await;
    assert_eq!(
        got,
        vec![Finding::ForeignTenantTable {
            role: runtime.clone(),
            table: "public.imported".into(),
        }]
    );
    assert!(got[0].to_string().contains("public.imported"), "{}", got[0]);
    exec(
        &mut admin,
        &format!("REVOKE SELECT ON public.imported FROM \"{runtime}\""),
    )
    .await;
    assert_eq!(findings(&env).await, vec![], "no grant, no finding");
}

#[tokio::test]
async fn each_finding_comes_from_a_seeded_defect() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let mut owner = env.connect_as(&env.owner).await;
    // For exclusion constraints over text with GiST.
    exec(
        &mut env.admin().await,
        "CREATE EXTENSION IF NOT EXISTS btree_gist",
    )
    .await;
    assert_eq!(findings(&env).await, vec![], "clean to begin with");
    let records = || "public.records".to_owned();

    // (defect, finding, repair)
    let cases: Vec<(String, Vec<Finding>, String)> = vec![
        (
            "ALTER TABLE records DISABLE ROW LEVEL SECURITY".into(),
            vec![Finding::RlsDisabled { table: records() }],
            "ALTER TABLE records ENABLE ROW LEVEL SECURITY".into(),
        ),
        (
            "ALTER TABLE records NO FORCE ROW LEVEL SECURITY".into(),
            vec![Finding::RlsNotForced { table: records() }],
            "ALTER TABLE records FORCE ROW LEVEL SECURITY".into(),
        ),
        (
            "DROP POLICY tenancy_isolation ON records".into(),
            vec![Finding::PolicyMissing { table: records() }],
            "SELECT tenancy.protect_table('records')".into(),
        ),
        (
            "ALTER POLICY tenancy_isolation ON records USING (tenant_id = (SELECT tenancy.current_tenant_id()) OR true)".into(),
            vec![Finding::PolicyMissing { table: records() }],
            "SELECT tenancy.protect_table('records')".into(),
        ),
        (
            "ALTER POLICY tenancy_isolation ON records WITH CHECK (true)".into(),
            vec![Finding::PolicyMissing { table: records() }],
            "SELECT tenancy.protect_table('records')".into(),
        ),
        (
            format!("ALTER POLICY tenancy_isolation ON records TO \"{}\"", env.platform),
            vec![Finding::PolicyMissing { table: records() }],
            "SELECT tenancy.protect_table('records')".into(),
        ),
        (
            "CREATE TABLE audit_log (tenant_id text NOT NULL, line text)".into(),
            vec![
                Finding::RlsDisabled { table: "public.audit_log".into() },
                Finding::RlsNotForced { table: "public.audit_log".into() },
                Finding::PolicyMissing { table: "public.audit_log".into() },
            ],
            "DROP TABLE audit_log".into(),
        ),
        (
            format!("GRANT TRUNCATE ON records TO \"{}\"", env.runtime),
            vec![Finding::UnfilteredPrivilege {
                role: env.runtime.to_string(),
                table: records(),
                privilege: "TRUNCATE",
            }],
            format!("REVOKE TRUNCATE ON records FROM \"{}\"", env.runtime),
        ),
        (
            format!("GRANT REFERENCES ON records TO \"{}\"", env.runtime),
            vec![Finding::UnfilteredPrivilege {
                role: env.runtime.to_string(),
                table: records(),
                privilege: "REFERENCES",
            }],
            format!("REVOKE REFERENCES ON records FROM \"{}\"", env.runtime),
        ),
        (
            "CREATE UNIQUE INDEX records_title_global ON records (title)".into(),
            vec![Finding::UniqueWithoutTenant {
                table: records(),
                index: "public.records_title_global".into(),
            }],
            "DROP INDEX records_title_global".into(),
        ),
        (
            // tenant_id only as an INCLUDE column does not make it part of the key.
            "CREATE UNIQUE INDEX records_title_incl ON records (title) INCLUDE (tenant_id)".into(),
            vec![Finding::UniqueWithoutTenant {
                table: records(),
                index: "public.records_title_incl".into(),
            }],
            "DROP INDEX records_title_incl".into(),
        ),
        (
            "ALTER TABLE records ADD CONSTRAINT records_body_key UNIQUE (body)".into(),
            vec![Finding::UniqueWithoutTenant {
                table: records(),
                index: "public.records_body_key".into(),
            }],
            "ALTER TABLE records DROP CONSTRAINT records_body_key".into(),
        ),
        (
            // A foreign key to a global lookup table (no tenant_id) holds no tenant's rows.
            "CREATE TABLE categories (id int PRIMARY KEY);
             ALTER TABLE records ADD COLUMN category int;
             ALTER TABLE records ADD CONSTRAINT records_category_fk FOREIGN KEY (category) REFERENCES categories (id) NOT VALID".into(),
            vec![],
            "ALTER TABLE records DROP COLUMN category; DROP TABLE categories".into(),
        ),
        (
            // An exclusion constraint is a uniqueness rule too.
            "ALTER TABLE records ADD CONSTRAINT records_title_excl EXCLUDE USING btree (title WITH =)".into(),
            vec![Finding::UniqueWithoutTenant {
                table: records(),
                index: "public.records_title_excl".into(),
            }],
            "ALTER TABLE records DROP CONSTRAINT records_title_excl".into(),
        ),
        (
            "ALTER TABLE records ADD CONSTRAINT records_title_excl EXCLUDE USING btree (tenant_id WITH =, title WITH =)".into(),
            vec![],
            "ALTER TABLE records DROP CONSTRAINT records_title_excl".into(),
        ),
        (
            // tenant_id in the key, but compared with <>: one tenant's title refuses the
            // same title in every other tenant, which tells each whether the others use it.
            "ALTER TABLE records ADD CONSTRAINT records_title_excl EXCLUDE USING gist (tenant_id WITH <>, title WITH =)".into(),
            vec![Finding::UniqueWithoutTenant {
                table: records(),
                index: "public.records_title_excl".into(),
            }],
            "ALTER TABLE records DROP CONSTRAINT records_title_excl".into(),
        ),
        (
            "ALTER TABLE records ADD CONSTRAINT records_title_excl EXCLUDE USING gist (tenant_id WITH =, title WITH =)".into(),
            vec![],
            "ALTER TABLE records DROP CONSTRAINT records_title_excl".into(),
        ),
        (
            // Runs as the tenant tables' owner; PUBLIC may execute a new function.
            "CREATE FUNCTION peek(t text) RETURNS bigint LANGUAGE sql SECURITY DEFINER
             AS 'SELECT count(*) FROM public.records WHERE tenant_id = t'".into(),
            vec![Finding::SecurityDefinerFunction {
                role: env.runtime.to_string(),
                function: "public.peek(t text)".into(),
                owner: env.owner.to_string(),
            }],
            "DROP FUNCTION peek(text)".into(),
        ),
        (
            // Not executable by the runtime role, or not SECURITY DEFINER: fine.
            "CREATE FUNCTION peek(t text) RETURNS bigint LANGUAGE sql SECURITY DEFINER
             AS 'SELECT count(*) FROM public.records WHERE tenant_id = t';
             REVOKE EXECUTE ON FUNCTION peek(text) FROM PUBLIC;
             CREATE FUNCTION peek2(t text) RETURNS bigint LANGUAGE sql SECURITY INVOKER
             AS 'SELECT count(*) FROM public.records WHERE tenant_id = t'".into(),
            vec![],
            "DROP FUNCTION peek(text); DROP FUNCTION peek2(text)".into(),
        ),
        (
            // A SECURITY DEFINER trigger function cannot be called directly: fine.
            "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
             AS 'BEGIN RETURN NEW; END'".into(),
            vec![],
            "DROP FUNCTION stamp()".into(),
        ),
        (
            "CREATE VIEW records_view AS SELECT id, title FROM records".into(),
            vec![Finding::ViewNotSecurityInvoker { view: "public.records_view".into() }],
            "DROP VIEW records_view".into(),
        ),
        (
            // Through another view: the inner one is fine, the outer one is not.
            "CREATE VIEW inner_view WITH (security_invoker = on) AS SELECT id, title FROM records;
             CREATE VIEW outer_view AS SELECT * FROM inner_view".into(),
            vec![Finding::ViewNotSecurityInvoker { view: "public.outer_view".into() }],
            "DROP VIEW outer_view; DROP VIEW inner_view".into(),
        ),
        (
            "CREATE MATERIALIZED VIEW records_mv AS SELECT id, title FROM records WITH NO DATA".into(),
            vec![Finding::MaterializedViewOverTenantTable { view: "public.records_mv".into() }],
            "DROP MATERIALIZED VIEW records_mv".into(),
        ),
    ];
    for (defect, want, repair) in cases {
        exec(&mut owner, &defect).await;
        let got = findings(&env).await;
        assert_eq!(got, want, "defect: {defect}");
        for f in &got {
            let text = f.to_string();
            let named = match f {
                Finding::ViewNotSecurityInvoker { view }
                | Finding::MaterializedViewOverTenantTable { view } => view,
                Finding::RlsDisabled { table }
                | Finding::RlsNotForced { table }
                | Finding::PolicyMissing { table }
                | Finding::UniqueWithoutTenant { table, .. }
                | Finding::ForeignKeyWithoutTenant { table, .. }
                | Finding::UnfilteredPrivilege { table, .. } => table,
                Finding::SecurityDefinerFunction { function, .. } => function,
                other => panic!("unexpected finding {other:?}"),
            };
            assert!(
                text.contains(named.as_str()),
                "{text} does not name {named}"
            );
        }
        exec(&mut owner, &repair).await;
        assert_eq!(findings(&env).await, vec![], "after repairing: {defect}");
    }

    // A foreign key whose tenant_id is paired with a column other than tenant_id.
    exec(
        &mut owner,
        "ALTER TABLE records ADD COLUMN other_tenant text;
         ALTER TABLE records ADD CONSTRAINT records_other_key UNIQUE (tenant_id, other_tenant, id);
         ALTER TABLE comments ADD COLUMN rec_tenant text;
         ALTER TABLE comments ADD CONSTRAINT comments_cross_fk
             FOREIGN KEY (rec_tenant, tenant_id, record_id) REFERENCES records (tenant_id, other_tenant, id) NOT VALID",
    )
    .await;
    assert_eq!(
        findings(&env).await,
        vec![Finding::ForeignKeyWithoutTenant {
            table: "public.comments".into(),
            constraint: "comments_cross_fk".into(),
            references: "public.records".into(),
        }]
    );
    exec(
        &mut owner,
        "ALTER TABLE comments DROP CONSTRAINT comments_cross_fk",
    )
    .await;
    assert_eq!(findings(&env).await, vec![]);

    // Missing helper: a database where the migrations never ran.
    let Some(bare) = tenancy_tests::postgres().await else {
        return;
    };
    let mut conn = <PgConnection as sqlx::Connection>::connect(bare.url())
        .await
        .unwrap();
    let report = audit_catalog(&mut conn, Some(&env.runtime)).await.unwrap();
    assert_eq!(report.findings(), &[Finding::HelperMissing]);
    assert!(
        report
            .to_string()
            .contains("tenancy.current_tenant_id() is missing")
    );
}

/// A connection that logs in as a superuser and switches to the runtime role with
/// `options=-c role=…` runs as the runtime role, but `RESET ROLE` escapes row-level security:
/// the audit checks `session_user` too.
#[tokio::test]
async fn a_superuser_session_behind_set_role_is_refused() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let admin_user = env.options().get_username().to_owned();
    let options = env.options().options([("role", env.runtime.as_str())]);
    // What the reviewer saw: current_user is the runtime role, RESET ROLE escapes.
    let mut conn = <PgConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let (current, session): (String, String) =
        sqlx::query_as("SELECT current_user::text, session_user::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        (current.as_str(), session.as_str()),
        (env.runtime.as_str(), admin_user.as_str())
    );
    let report = audit_catalog(&mut conn, None).await.unwrap();
    assert_eq!(report.role(), env.runtime.as_str());
    assert!(
        report.findings().contains(&Finding::SessionUserDiffers {
            role: env.runtime.to_string(),
            session: admin_user.clone(),
        }),
        "{report}"
    );
    assert!(
        report.findings().contains(&Finding::Superuser {
            role: admin_user.clone()
        }),
        "{report}"
    );

    let config = tenancy_db::DbConfig::from_options(options).with_connect_retry(
        1,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    );
    let err = TenantPool::connect(config).await.unwrap_err();
    let Error::Audit(report) = &err else {
        panic!("{err:?}")
    };
    assert!(
        report
            .findings()
            .contains(&Finding::Superuser { role: admin_user }),
        "{report}"
    );

    // A non-privileged session role that switches to another clean role is reported for the
    // switch only.
    let mut admin = env.admin().await;
    let other = RoleName::parse(&tenancy_tests::unique("tdb_")).unwrap();
    let _guard = common::Roles::guard(&env, &other);
    tenancy_db::schema::create_runtime_role(&mut admin, &other)
        .await
        .unwrap();
    exec(
        &mut admin,
        &format!("GRANT \"{}\" TO \"{other}\"", env.runtime),
    )
    .await;
    let mut conn = <PgConnection as sqlx::Connection>::connect_with(
        &env.options()
            .username(other.as_str())
            .options([("role", env.runtime.as_str())]),
    )
    .await
    .unwrap();
    let report = audit_catalog(&mut conn, None).await.unwrap();
    assert_eq!(
        report.findings(),
        &[Finding::SessionUserDiffers {
            role: env.runtime.to_string(),
            session: other.to_string(),
        }],
        "{report}"
    );
}

/// REPLICATION and the built-in roles that reach the server's files bypass row-level
/// security as surely as BYPASSRLS.
#[tokio::test]
async fn replication_and_server_file_roles_are_refused() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let mut admin = env.admin().await;
    let runtime = env.runtime.to_string();

    exec(&mut admin, &format!("ALTER ROLE \"{runtime}\" REPLICATION")).await;
    let err = TenantPool::connect(env.runtime_config()).await.unwrap_err();
    let Error::Audit(report) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        report.findings(),
        &[Finding::Replication {
            role: runtime.clone()
        }],
        "{report}"
    );
    exec(
        &mut admin,
        &format!("ALTER ROLE \"{runtime}\" NOREPLICATION"),
    )
    .await;

    for builtin in [
        "pg_execute_server_program",
        "pg_read_server_files",
        "pg_write_server_files",
    ] {
        exec(&mut admin, &format!("GRANT {builtin} TO \"{runtime}\"")).await;
        assert_eq!(
            findings(&env).await,
            vec![Finding::MemberOfServerFileRole {
                role: runtime.clone(),
                builtin: builtin.to_owned(),
            }],
            "{builtin}"
        );
        exec(&mut admin, &format!("REVOKE {builtin} FROM \"{runtime}\"")).await;
    }

    // A SECURITY DEFINER function owned by a superuser.
    exec(
        &mut admin,
        "CREATE FUNCTION public.peek_all() RETURNS bigint LANGUAGE sql SECURITY DEFINER
         AS 'SELECT count(*) FROM public.records'",
    )
    .await;
    let admin_user = env.options().get_username().to_owned();
    assert_eq!(
        findings(&env).await,
        vec![Finding::SecurityDefinerFunction {
            role: runtime.clone(),
            function: "public.peek_all()".into(),
            owner: admin_user,
        }]
    );
    exec(&mut admin, "DROP FUNCTION public.peek_all()").await;
    assert_eq!(findings(&env).await, vec![]);
}

/// The commands a finding suggests are safe to paste: a table or role name read from the
/// catalog is quoted, so a name holding a quote runs nothing else.
#[test]
fn suggested_commands_quote_the_names_they_hold() {
    let table = "public.\"x');DROP TABLE records;--\"".to_owned();
    let text = Finding::RlsDisabled { table }.to_string();
    assert!(
        text.ends_with("run tenancy.protect_table('public.\"x'');DROP TABLE records;--\"')"),
        "{text}"
    );
    let text = Finding::CreateRole {
        role: "app\" SUPERUSER --".into(),
    }
    .to_string();
    assert!(
        text.ends_with("ALTER ROLE \"app\"\" SUPERUSER --\" NOCREATEROLE"),
        "{text}"
    );
}

/// A SECURITY DEFINER trigger function runs on the runtime role's writes as its owner, and
/// the tenant directory has no row-level security: both are found.
#[tokio::test]
async fn definer_triggers_and_platform_tables_are_audited() {
    let Some(env) = TestEnv::new().await else {
        return;
    };
    let mut admin = env.admin().await;
    assert_eq!(findings(&env).await, vec![], "clean to begin with");
    let runtime = env.runtime.to_string();
    let owner = env.owner.to_string();
    // Run on every insert: what it puts in `body` is every tenant's rows.
    exec(
        &mut admin,
        &format!(
            "SET ROLE \"{owner}\";
             CREATE FUNCTION public.fill() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
             SET search_path = pg_catalog, public
             AS $$ BEGIN
                 SELECT string_agg(tenant_id, ',') INTO NEW.body FROM public.records;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER fill BEFORE INSERT ON public.records
             FOR EACH ROW EXECUTE FUNCTION public.fill();
             RESET ROLE;"
        ),
    )
    .await;
    let got = findings(&env).await;
    assert_eq!(
        got,
        vec![Finding::SecurityDefinerTrigger {
            role: runtime.clone(),
            table: "public.records".into(),
            trigger: "fill".into(),
            function: "public.fill()".into(),
            owner: owner.clone(),
        }]
    );
    assert!(
        got[0].to_string().contains("SECURITY INVOKER"),
        "{}",
        got[0]
    );
    // The same function as SECURITY INVOKER reads under the role's own policies.
    exec(&mut admin, "ALTER FUNCTION public.fill() SECURITY INVOKER").await;
    assert_eq!(findings(&env).await, vec![]);
    exec(
        &mut admin,
        "DROP TRIGGER fill ON public.records; DROP FUNCTION public.fill()",
    )
    .await;

    // The tenant directory, granted as a schema-wide grant would.
    exec(
        &mut admin,
        &format!("GRANT SELECT, UPDATE ON tenancy.tenants TO \"{runtime}\""),
    )
    .await;
    let got = findings(&env).await;
    assert_eq!(
        got,
        vec![Finding::PlatformTableAccess {
            role: runtime.clone(),
            table: "tenancy.tenants".into(),
            privileges: "SELECT, UPDATE".into(),
        }]
    );
    assert!(got[0].to_string().contains("tenancy.tenants"), "{}", got[0]);
    exec(
        &mut admin,
        &format!("REVOKE ALL ON tenancy.tenants FROM \"{runtime}\""),
    )
    .await;
    assert_eq!(findings(&env).await, vec![]);

    // Privileges on some columns only count the same.
    exec(
        &mut admin,
        &format!(
            "GRANT SELECT (id), UPDATE (status) ON tenancy.tenants TO \"{runtime}\";
             CREATE TABLE public.cols (tenant_id text NOT NULL, v int);
             SELECT tenancy.protect_table('public.cols');
             GRANT USAGE ON SCHEMA public TO \"{runtime}\";
             GRANT UPDATE (v) ON public.cols TO \"{runtime}\";
             SET ROLE \"{owner}\";
             CREATE FUNCTION public.bump() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
             SET search_path = pg_catalog, public
             AS $$ BEGIN RETURN NEW; END $$;
             RESET ROLE;
             CREATE TRIGGER bump BEFORE UPDATE ON public.cols
             FOR EACH ROW EXECUTE FUNCTION public.bump();"
        ),
    )
    .await;
    assert_eq!(
        findings(&env).await,
        vec![
            Finding::SecurityDefinerTrigger {
                role: runtime.clone(),
                table: "public.cols".into(),
                trigger: "bump".into(),
                function: "public.bump()".into(),
                owner: owner.clone(),
            },
            Finding::PlatformTableAccess {
                role: runtime.clone(),
                table: "tenancy.tenants".into(),
                privileges: "SELECT, UPDATE".into(),
            },
        ]
    );
    exec(
        &mut admin,
        &format!(
            "REVOKE ALL ON tenancy.tenants FROM \"{runtime}\";
             DROP TABLE public.cols;"
        ),
    )
    .await;
    assert_eq!(findings(&env).await, vec![]);

    // A table the role may write to in a schema it cannot use: no write reaches the trigger.
    exec(
        &mut admin,
        &format!(
            "CREATE SCHEMA hidden;
             CREATE TABLE hidden.cols (tenant_id text NOT NULL, v int);
             SELECT tenancy.protect_table('hidden.cols');
             GRANT UPDATE (v) ON hidden.cols TO \"{runtime}\";
             CREATE TRIGGER bump BEFORE UPDATE ON hidden.cols
             FOR EACH ROW EXECUTE FUNCTION public.bump();"
        ),
    )
    .await;
    assert_eq!(findings(&env).await, vec![]);
    exec(
        &mut admin,
        "DROP SCHEMA hidden CASCADE; DROP FUNCTION public.bump();",
    )
    .await;
}
