//! The OpenAPI 3.1 document served at `GET /openapi.json`.
//!
//! ```
//! let doc = tenancy_server::openapi::document();
//! assert_eq!(doc["openapi"], "3.1.0");
//! assert!(doc["paths"]["/v1/records/{id}"]["delete"].is_object());
//! ```

use std::sync::OnceLock;

use serde_json::{Value, json};
use tenancy_http::RouteTable;

/// Every documented operation: method, path, whether it needs a token, and the statuses
/// particular to it. [`statuses`] adds those that follow from what the operation is (a body,
/// a token, a limit, a backend). The walk tests in `tests/` call each of them.
pub const OPERATIONS: &[(&str, &str, bool, &[u16])] = &[
    ("get", "/health", false, &[200, 503]),
    ("get", "/metrics", false, &[200, 404]),
    ("get", "/openapi.json", false, &[200]),
    ("post", "/v1/auth/login", false, &[200, 401, 403]),
    ("post", "/v1/auth/refresh", false, &[200, 401, 403]),
    ("post", "/v1/auth/logout", true, &[204]),
    ("get", "/v1/me", true, &[200]),
    ("get", "/v1/records", true, &[200]),
    ("post", "/v1/records", true, &[201]),
    ("get", "/v1/records/{id}", true, &[200, 404]),
    ("delete", "/v1/records/{id}", true, &[204, 404]),
    ("get", "/v1/tenant/audit", true, &[200]),
    ("put", "/v1/admin/tenants/{tenant}", true, &[200, 201]),
    ("get", "/v1/admin/tenants/{tenant}", true, &[200, 404]),
    (
        "put",
        "/v1/admin/tenants/{tenant}/limits",
        true,
        &[200, 404],
    ),
    (
        "post",
        "/v1/admin/tenants/{tenant}/bypass",
        true,
        &[200, 404],
    ),
    (
        "post",
        "/v1/admin/tenants/{tenant}/suspend",
        true,
        &[200, 404],
    ),
    (
        "post",
        "/v1/admin/tenants/{tenant}/resume",
        true,
        &[200, 404],
    ),
    ("get", "/v1/admin/audit/verify", true, &[200, 404]),
];

/// Statuses every operation can answer whatever it is: the body limits hold on every route,
/// before the route runs (413 over 64 KiB; 408 for a body that does not arrive in time; 400
/// for a body that cannot be read), and so does the bound on the request's headers (431 over
/// 16 KiB).
const EVERY_OPERATION: &[u16] = &[400, 408, 413, 431];

/// Every status the document lists for `method path` (lower-case method, path template as in
/// [`OPERATIONS`]), ascending; empty for an operation that is not documented. Besides the
/// operation's own: the body limits' 400, 408 and 413 and the header limit's 431, on every
/// operation; 415 where it takes
/// a JSON body; 401 and 403 where it needs a token (no token or a bad one; a tenant header
/// that disagrees with the token, a suspended tenant, a missing permission); and, on every
/// route the route rules do not exempt from rate limits ([`crate::app::route_rules`]), 429 (a
/// spent limit: the user's, or the client address's on the public routes) and 503 (a backend
/// that cannot answer: the limiter, the tenant directory, the session store, the database).
///
/// ```
/// use tenancy_server::openapi::statuses;
///
/// assert_eq!(statuses("get", "/openapi.json"), [200, 400, 408, 413, 431]);
/// assert_eq!(
///     statuses("post", "/v1/records"),
///     [201, 400, 401, 403, 408, 413, 415, 429, 431, 503]
/// );
/// assert!(statuses("get", "/nowhere").is_empty());
/// ```
pub fn statuses(method: &str, path: &str) -> Vec<u16> {
    let Some(&(_, _, needs_token, own)) = OPERATIONS
        .iter()
        .find(|(m, p, _, _)| *m == method && *p == path)
    else {
        return Vec::new();
    };
    let mut all: Vec<u16> = own.iter().chain(EVERY_OPERATION).copied().collect();
    if request_body(method, path).is_some() {
        all.push(415);
    }
    if needs_token {
        all.extend([401, 403]);
    }
    if !exempt(method, path) {
        all.extend([429, 503]);
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// Whether the server's route rules exempt `method path` from rate limits (the probes).
fn exempt(method: &str, path: &str) -> bool {
    static RULES: OnceLock<Option<RouteTable>> = OnceLock::new();
    RULES
        .get_or_init(|| crate::app::route_rules().ok().map(RouteTable::new))
        .as_ref()
        .and_then(|t| t.find(&method.to_ascii_uppercase(), path))
        .is_some_and(|m| m.rule().is_exempt())
}

fn summary(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("get", "/health") => "Component health (503 naming what is down)",
        ("get", "/metrics") => {
            "Prometheus metrics, to clients in TENANCY_METRICS_ALLOW (404 to others)"
        }
        ("get", "/openapi.json") => "This document",
        ("post", "/v1/auth/login") => "Log in; returns an access and a refresh token",
        ("post", "/v1/auth/refresh") => {
            "Spend a refresh token for a new pair (reuse revokes the session)"
        }
        ("post", "/v1/auth/logout") => "End the session of the presented token",
        ("get", "/v1/me") => "The caller's tenant context",
        ("get", "/v1/records") => {
            "The caller's tenant's records, newest first, a page at a time (records:read)"
        }
        ("post", "/v1/records") => "Create a record (records:write)",
        ("get", "/v1/records/{id}") => {
            "One record; 404 when absent or another tenant's (records:read)"
        }
        ("delete", "/v1/records/{id}") => {
            "Delete a record; 404 when absent or another tenant's (records:write)"
        }
        ("get", "/v1/tenant/audit") => {
            "The caller's tenant's audit events, newest first (audit:read)"
        }
        ("put", "/v1/admin/tenants/{tenant}") => {
            "Create a tenant (201) or change its tier (200) (super_admin)"
        }
        ("get", "/v1/admin/tenants/{tenant}") => {
            "Tier, limits, status and usage of a tenant (super_admin)"
        }
        ("put", "/v1/admin/tenants/{tenant}/limits") => "Override a tenant's quotas (super_admin)",
        ("post", "/v1/admin/tenants/{tenant}/bypass") => {
            "Emergency bypass of a tenant's limits (super_admin)"
        }
        ("post", "/v1/admin/tenants/{tenant}/suspend") => {
            "Suspend a tenant: its tokens get 403 (super_admin)"
        }
        ("post", "/v1/admin/tenants/{tenant}/resume") => "Resume a suspended tenant (super_admin)",
        ("get", "/v1/admin/audit/verify") => "Verify a tenant's audit chain (super_admin)",
        _ => "",
    }
}

fn obj(props: &[(&str, Value)], required: &[&str]) -> Value {
    let p: serde_json::Map<String, Value> = props
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    json!({"type": "object", "properties": p, "required": required, "additionalProperties": false})
}

fn s() -> Value {
    json!({"type": "string"})
}

fn n() -> Value {
    json!({"type": "integer", "minimum": 0})
}

/// A tenant id as [`tenancy_core::TenantId`] takes it.
fn tenant_id() -> Value {
    json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"})
}

/// Text without the NUL character, which the server refuses (PostgreSQL cannot store it).
fn text(max_chars: usize) -> Value {
    json!({"type": "string", "maxLength": max_chars, "pattern": "^[^\\u0000]*$"})
}

/// A quota override: a number, or `null` to remove it.
fn quota() -> Value {
    json!({"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000_000})
}

fn request_body(method: &str, path: &str) -> Option<Value> {
    let schema = match (method, path) {
        ("post", "/v1/auth/login") => obj(
            &[("tenant_id", s()), ("username", s()), ("password", s())],
            &["tenant_id", "username", "password"],
        ),
        ("post", "/v1/auth/refresh") => obj(&[("refresh_token", s())], &["refresh_token"]),
        ("post", "/v1/records") => obj(
            &[
                ("title", {
                    let mut t = text(crate::records::MAX_TITLE_CHARS);
                    t["minLength"] = json!(1);
                    t
                }),
                // The server counts the body in bytes (at most 32768 of UTF-8); a schema
                // counts characters: 8192 characters always fit.
                ("body", {
                    let mut b = text(crate::records::MAX_BODY_BYTES / 4);
                    b["description"] = json!(format!(
                        "at most {} bytes of UTF-8",
                        crate::records::MAX_BODY_BYTES
                    ));
                    b
                }),
            ],
            &["title", "body"],
        ),
        ("put", "/v1/admin/tenants/{tenant}") => obj(
            &[(
                "tier",
                json!({"type": "string", "enum": ["standard", "premium"]}),
            )],
            &["tier"],
        ),
        ("put", "/v1/admin/tenants/{tenant}/limits") => {
            let mut o = obj(
                &[
                    // `null`, as a field left out, keeps the tenant's tier.
                    (
                        "tier",
                        json!({"type": ["string", "null"], "enum": ["standard", "premium", null]}),
                    ),
                    ("tenant_per_hour", quota()),
                    ("tenant_burst", quota()),
                    ("user_per_hour", quota()),
                    ("user_burst", quota()),
                ],
                &[],
            );
            o["description"] = json!(
                "A burst may not exceed its per-hour limit, as they apply after the change \
                 (the tier's value where no override is set): 400 otherwise."
            );
            o
        }
        ("post", "/v1/admin/tenants/{tenant}/bypass") => obj(
            &[(
                "seconds",
                json!({"type": "integer", "minimum": 0, "maximum": 86400}),
            )],
            &["seconds"],
        ),
        // Routes that take no body: nothing, or an empty object.
        (
            "post",
            "/v1/auth/logout"
            | "/v1/admin/tenants/{tenant}/suspend"
            | "/v1/admin/tenants/{tenant}/resume",
        ) => {
            return Some(json!({"required": false,
                "content": {"application/json": {"schema": obj(&[], &[])}}}));
        }
        _ => return None,
    };
    Some(json!({"required": true, "content": {"application/json": {"schema": schema}}}))
}

fn parameters(method: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    if path.contains("{id}") {
        out.push(json!({"name": "id", "in": "path", "required": true, "schema": s()}));
    }
    if path.contains("{tenant}") {
        out.push(json!({"name": "tenant", "in": "path", "required": true, "schema": tenant_id()}));
    }
    match (method, path) {
        ("get", "/v1/records") => {
            out.push(json!({"name": "before", "in": "query",
                "description": "the previous page's next_before",
                "schema": {"type": "string", "pattern": "^[0-9]+-[0-9a-f]{32}$"}}));
            out.push(json!({"name": "limit", "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": crate::records::MAX_LIST}}));
        }
        ("get", "/v1/tenant/audit") => {
            out.push(json!({"name": "before", "in": "query",
                "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}}));
            out.push(json!({"name": "limit", "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": crate::ops::AUDIT_PAGE.1}}));
        }
        ("get", "/v1/admin/audit/verify") => {
            out.push(
                json!({"name": "tenant", "in": "query", "required": true, "schema": tenant_id()}),
            );
        }
        _ => {}
    }
    out
}

fn ok_schema(method: &str, path: &str) -> Value {
    let tokens = obj(
        &[
            ("access_token", s()),
            ("refresh_token", s()),
            ("token_type", json!({"const": "Bearer"})),
            ("expires_in", n()),
        ],
        &["access_token", "refresh_token", "token_type", "expires_in"],
    );
    let record = obj(
        &[
            ("id", s()),
            ("title", s()),
            ("body", s()),
            (
                "created_at",
                json!({"type": "string", "format": "date-time"}),
            ),
        ],
        &["id", "title", "body", "created_at"],
    );
    let tenant = json!({"type": "object", "required": ["tenant", "status", "tier"]});
    match (method, path) {
        ("get", "/health") => json!({"type": "object", "required": ["status", "components"]}),
        ("post", "/v1/auth/login" | "/v1/auth/refresh") => tokens,
        ("get", "/v1/me") => json!({"type": "object",
            "required": ["tenant_id", "user_id", "role", "permissions", "tier"]}),
        ("get", "/v1/records") => json!({"type": "object", "required": ["records", "next_before"],
            "properties": {"records": {"type": "array", "items": record},
                "next_before": {"type": ["string", "null"]}}}),
        ("post", "/v1/records") | ("get", "/v1/records/{id}") => record,
        ("get", "/v1/tenant/audit") => {
            json!({"type": "object", "required": ["events", "next_before"]})
        }
        ("get", "/v1/admin/audit/verify") => obj(
            &[
                ("valid", json!({"type": "boolean"})),
                ("events", n()),
                ("first_bad_seq", json!({"type": ["integer", "null"]})),
                ("reason", json!({"type": ["string", "null"]})),
            ],
            &["valid", "events", "first_bad_seq", "reason"],
        ),
        (_, p) if p.starts_with("/v1/admin/tenants/") => tenant,
        _ => json!({"type": "object"}),
    }
}

fn responses(method: &str, path: &str) -> Value {
    let mut out = serde_json::Map::new();
    for st in statuses(method, path) {
        let v = match st {
            204 => json!({"description": "No Content"}),
            200 | 201 if path == "/metrics" => json!({"description": "Prometheus text",
                "content": {"text/plain": {"schema": {"type": "string"}}}}),
            200 | 201 => json!({"description": "OK",
                "content": {"application/json": {"schema": ok_schema(method, path)}}}),
            503 if path == "/health" => json!({"description": "A component is down",
                "content": {"application/json": {"schema": ok_schema(method, path)}}}),
            _ => json!({"description": "Problem",
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
        };
        out.insert(st.to_string(), v);
    }
    Value::Object(out)
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for &(method, path, auth, _) in OPERATIONS {
        let mut op = json!({
            "summary": summary(method, path),
            "responses": responses(method, path),
        });
        if auth {
            op["security"] = json!([{"bearer": []}]);
        } else {
            op["security"] = json!([]);
        }
        let params = parameters(method, path);
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(body) = request_body(method, path) {
            op["requestBody"] = body;
        }
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tenancy reference server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every response carries X-Request-Id; responses to a tenant's users carry X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, RateLimit-Policy and RateLimit (policies `tenant-<seconds>` and `user-<seconds>`), and so do login and refresh responses, limited per client address (policy `client-60`); 429 carries Retry-After. A request whose X-Tenant-Id differs from the token's tenant gets 403. Bodies are at most 64 KiB and refuse unknown fields.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Problem": obj(
                &[("type", s()), ("title", s()), ("status", n()), ("detail", s()), ("request_id", s())],
                &["type", "title", "status", "detail"],
            )},
        },
    })
}
