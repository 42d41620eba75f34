//! The shortest way to make your own axum service multi-tenant with the tenancy crates
//! (the README shows this file). Run: `cargo run -p tenancy-server --example embed_axum`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{Router, routing::get};
use tenancy_auth::{Algorithm, JwtVerifier, VerifyKey};
use tenancy_core::memory::{MemoryAuditSink, MemoryRateLimiter, MemoryTenantDirectory};
use tenancy_core::{TenantDirectory, TenantId, TenantSettings, TierName};
use tenancy_tower::{DrainBodyLayer, RequirePermission, TenancyLayer, Tenant, permission};

permission!(RecordsRead = "records:read");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Who may call: HS256 tokens from issuer "tenancy-server" for audience "tenancy-api".
    let secret = std::env::var("TENANCY_JWT_SECRET")
        .unwrap_or_else(|_| tenancy_server::config::DEV_JWT_SECRET.to_owned());
    let verifier = JwtVerifier::builder()
        .issuer(
            "tenancy-server",
            VerifyKey::hmac(secret.as_bytes(), Algorithm::HS256)?,
        )
        .audience("tenancy-api")
        .build()?;
    // Which tenants exist, and their tier.
    let directory = Arc::new(MemoryTenantDirectory::new());
    directory
        .put(
            &TenantId::parse("acme")?,
            TenantSettings::new(TierName::parse("standard")?),
        )
        .await?;

    let tenancy = TenancyLayer::builder(
        Arc::new(verifier),
        directory,
        Arc::new(MemoryRateLimiter::new()),
        Arc::new(MemoryAuditSink::new()),
    )
    .with_public_route("/health")?
    .build()?;

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/whoami",
            get(|Tenant(ctx): Tenant| async move { format!("{} in {}", ctx.user, ctx.tenant) }),
        )
        .route(
            "/reports",
            get(
                |RequirePermission(ctx, ..): RequirePermission<RecordsRead>| async move {
                    format!("reports of {}", ctx.tenant)
                },
            ),
        )
        .layer(TenancyLayer::new(tenancy))
        // Outside the rest: what is left of a refused request's body (a 401 for an upload
        // without a token) is read before the answer, so that a client still sending it gets
        // the answer and not a reset connection.
        .layer(DrainBodyLayer::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    // `axum::serve` sets no bound on how long a client may take to send a request's head;
    // in production serve behind a proxy that bounds it, or as `tenancy_server::serve` does
    // (hyper's http1 builder with a timer and `header_read_timeout`).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
