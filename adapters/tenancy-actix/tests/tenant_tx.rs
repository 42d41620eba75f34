//! The `TenantTx` extractor of both adapters against a real PostgreSQL: a fresh database with
//! the tenancy-db migrations, an owner and a runtime role of this test's own, and a `records`
//! table under row-level security. Each tenant sees only its rows, through axum and actix-web
//! alike, and a missing pool is named in the rejection.

use std::str::FromStr;
use std::sync::Arc;

use actix_web::{App, HttpResponse, web};
use axum::Router;
use axum::body::Body;
use jsonwebtoken::{EncodingKey, Header as JwtHeader};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tenancy_auth::{Algorithm, JwtVerifier, VerifyKey};
use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
use tenancy_core::{TenantDirectory, TenantId, TenantSettings, TierName};
use tenancy_db::schema::{self, RoleName};
use tenancy_db::{DbConfig, Environment, TenantPool};
use tenancy_http::Tenancy;
use tower::ServiceExt;

const SECRET: &[u8] = b"tenant-tx-secret-of-at-least-32-bytes!!";

/// Drops this test's roles (cluster-wide) at the end, after the database.
struct Roles {
    admin_url: String,
    db_url: String,
    names: Vec<String>,
}

impl Drop for Roles {
    fn drop(&mut self) {
        let (admin, db, names) = (
            self.admin_url.clone(),
            self.db_url.clone(),
            std::mem::take(&mut self.names),
        );
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&db).await {
                    for n in &names {
                        let sql = format!("DROP OWNED BY \"{n}\"");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                    }
                }
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    for n in &names {
                        let sql = format!("DROP ROLE IF EXISTS \"{n}\"");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

fn token(tenant: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": "https://id.example", "aud": "api", "sub": "u", "exp": now + 600,
        "tenant_id": tenant, "user_id": "u", "user_role": "user", "permissions": [],
    });
    jsonwebtoken::encode(
        &JwtHeader::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn tenancy() -> Tenancy {
    let verifier = JwtVerifier::builder()
        .issuer(
            "https://id.example",
            VerifyKey::hmac(SECRET, Algorithm::HS256).unwrap(),
        )
        .audience("api")
        .build()
        .unwrap();
    let directory = MemoryTenantDirectory::new();
    for t in ["acme", "globex"] {
        directory
            .put(
                &TenantId::parse(t).unwrap(),
                TenantSettings::new(TierName::parse("standard").unwrap()),
            )
            .await
            .unwrap();
    }
    Tenancy::builder(
        Arc::new(verifier),
        Arc::new(directory),
        Arc::new(MemoryRateLimiter::new()),
        Arc::new(MemoryAuditSink::new()),
    )
    .build()
    .unwrap()
}

async fn axum_call(app: &Router, method: &str, path: &str, tenant: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", token(tenant)))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn actix_call<S, B>(app: &S, method: &str, path: &str, tenant: &str) -> (u16, String)
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    let req = actix_web::test::TestRequest::default()
        .method(actix_web::http::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .insert_header(("authorization", format!("Bearer {}", token(tenant))))
        .to_request();
    let resp = actix_web::test::call_service(app, req).await;
    let status = resp.status().as_u16();
    let body = actix_web::test::read_body(resp).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[actix_web::test]
async fn tenant_tx_is_bound_to_the_verified_tenant_in_both_adapters() {
    let Some(db) = tenancy_tests::postgres().await else {
        return;
    };
    let owner = RoleName::parse(&tenancy_tests::unique("tao_")).unwrap();
    let runtime = RoleName::parse(&tenancy_tests::unique("tar_")).unwrap();
    let _roles = Roles {
        admin_url: db.admin_url().to_owned(),
        db_url: db.url().to_owned(),
        names: vec![runtime.to_string(), owner.to_string()],
    };
    let options = PgConnectOptions::from_str(db.url()).unwrap();
    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{owner}\" LOGIN NOSUPERUSER NOBYPASSRLS;
         GRANT CREATE ON DATABASE \"{db}\" TO \"{owner}\";
         GRANT CREATE ON SCHEMA public TO \"{owner}\";",
        db = db.name()
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut owner_conn = PgConnection::connect_with(&options.clone().username(owner.as_str()))
        .await
        .unwrap();
    schema::migrate(&mut owner_conn).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE records (
             tenant_id text NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
             title text NOT NULL, PRIMARY KEY (tenant_id, id))",
    )
    .execute(&mut owner_conn)
    .await
    .unwrap();
    schema::protect_table(&mut owner_conn, "records")
        .await
        .unwrap();
    schema::create_runtime_role(&mut admin, &runtime)
        .await
        .unwrap();
    schema::grant_table(&mut owner_conn, "records", &runtime)
        .await
        .unwrap();
    let pool = TenantPool::connect(
        DbConfig::from_options(options.username(runtime.as_str()))
            .with_environment(Environment::Test)
            .with_max_connections(4),
    )
    .await
    .unwrap();

    // axum
    let insert_t = |mut tx: tenancy_tower::TenantTx| async move {
        sqlx::query("INSERT INTO records (title) VALUES ('x')")
            .execute(&mut **tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        "created"
    };
    let count_t = |mut tx: tenancy_tower::TenantTx| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
            .fetch_one(&mut **tx)
            .await
            .unwrap();
        n.to_string()
    };
    let routes = Router::new()
        .route("/records", axum::routing::post(insert_t))
        .route("/count", axum::routing::get(count_t));
    let axum = routes
        .clone()
        .layer(axum::Extension(pool.clone()))
        .layer(tenancy_tower::TenancyLayer::new(tenancy().await));
    let axum_no_pool = routes.layer(tenancy_tower::TenancyLayer::new(tenancy().await));

    // actix
    async fn insert_a(mut tx: tenancy_actix::TenantTx) -> HttpResponse {
        sqlx::query("INSERT INTO records (title) VALUES ('x')")
            .execute(&mut **tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        HttpResponse::Ok().body("created")
    }
    async fn count_a(mut tx: tenancy_actix::TenantTx) -> HttpResponse {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
            .fetch_one(&mut **tx)
            .await
            .unwrap();
        HttpResponse::Ok().body(n.to_string())
    }
    let t = tenancy().await;
    let actix = actix_web::test::init_service(
        App::new()
            .app_data(pool.clone())
            .wrap(tenancy_actix::TenancyMiddleware::new(t))
            .route("/records", web::post().to(insert_a))
            .route("/count", web::get().to(count_a)),
    )
    .await;

    assert_eq!(axum_call(&axum, "POST", "/records", "acme").await.0, 200);
    assert_eq!(actix_call(&actix, "POST", "/records", "acme").await.0, 200);
    assert_eq!(axum_call(&axum, "POST", "/records", "globex").await.0, 200);
    for (tenant, expected) in [("acme", "2"), ("globex", "1")] {
        assert_eq!(
            axum_call(&axum, "GET", "/count", tenant).await,
            (200, expected.to_owned())
        );
        assert_eq!(
            actix_call(&actix, "GET", "/count", tenant).await,
            (200, expected.to_owned())
        );
    }

    let (status, body) = axum_call(&axum_no_pool, "GET", "/count", "acme").await;
    assert_eq!(status, 500);
    assert!(
        body.contains("TenantTx") && body.contains("Extension<TenantPool>"),
        "{body}"
    );
    let actix_no_pool = actix_web::test::init_service(
        App::new()
            .wrap(tenancy_actix::TenancyMiddleware::new(tenancy().await))
            .route("/count", web::get().to(count_a)),
    )
    .await;
    let (status, body) = actix_call(&actix_no_pool, "GET", "/count", "acme").await;
    assert_eq!(status, 500);
    assert!(
        body.contains("TenantTx") && body.contains("TenantPool"),
        "{body}"
    );
    pool.close().await;
}
