//! The contract as one table of cases, and the runner that plays it against a server.

use std::time::Duration;

use serde_json::Value;
use tenancy_core::AuditSink as _;
use tenancy_server::app::AuditBackend;

use super::{Entry, Harness, Reply, Vars, assert_problem, entry, fill};

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    None,
    /// JSON text (with `{var}` placeholders), sent as `application/json`.
    Json(&'static str),
    /// Text with its own content type.
    Raw(&'static str, &'static str),
    /// A well-formed JSON record whose body is 70 KiB (over the 64 KiB limit).
    Big,
}

/// An extra assertion on a reply.
pub type Check = fn(&Reply) -> Result<(), String>;

/// One request and what the contract says about its answer.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    /// The variable holding the bearer token (`None`: no `Authorization`).
    pub token: Option<&'static str>,
    pub body: Body,
    pub headers: &'static [(&'static str, &'static str)],
    pub status: u16,
    /// `(variable, JSON pointer)` pairs read from a successful answer.
    pub save: &'static [(&'static str, &'static str)],
    /// `Some(true)`: the rate-limit headers must be there; `Some(false)`: must not.
    pub limited: Option<bool>,
    pub check: Option<Check>,
}

impl Case {
    pub fn json(mut self, body: &'static str) -> Self {
        self.body = Body::Json(body);
        self
    }
    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
    pub fn headers(mut self, h: &'static [(&'static str, &'static str)]) -> Self {
        self.headers = h;
        self
    }
    pub fn save(mut self, s: &'static [(&'static str, &'static str)]) -> Self {
        self.save = s;
        self
    }
    pub fn limited(mut self, l: bool) -> Self {
        self.limited = Some(l);
        self
    }
    pub fn check(mut self, c: Check) -> Self {
        self.check = Some(c);
        self
    }
}

/// A case: `name`, `method path` with the token in variable `token`, expecting `status`.
pub fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<&'static str>,
    status: u16,
) -> Case {
    Case {
        name,
        method,
        path,
        token,
        body: Body::None,
        headers: &[],
        status,
        save: &[],
        limited: None,
        check: None,
    }
}

/// One step of a table.
#[derive(Debug, Clone)]
pub enum Step {
    Case(Case),
    /// Repeats the case (which expects 429) until it answers 429, at most `n` times; every
    /// earlier answer must be 200.
    UntilLimited(Case, usize),
    /// Sleeps for the `Retry-After` of the last 429, plus a little.
    WaitRetryAfter,
    /// Mints a session-less acme token carrying only `records:read` into `{ro}`.
    MintReadOnly,
    /// Mints a session-less acme token carrying `records:read` and no `jti` into `{nojti}`.
    MintWithoutJti,
    /// Alters one stored acme `records.create` event behind the server's back: in the
    /// JSONL file, or in PostgreSQL with the append-only trigger bypassed as a superuser.
    Tamper,
}

fn login(user: &'static str) -> &'static str {
    match user {
        "bob" => r#"{"tenant_id":"acme","username":"bob","password":"password"}"#,
        "alice" => r#"{"tenant_id":"acme","username":"alice","password":"password"}"#,
        "gbob" => r#"{"tenant_id":"globex","username":"bob","password":"password"}"#,
        "galice" => r#"{"tenant_id":"globex","username":"alice","password":"password"}"#,
        _ => r#"{"tenant_id":"platform","username":"root","password":"password"}"#,
    }
}

const RATE_HEADERS: [&str; 5] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
];

fn actions(r: &Reply) -> Vec<(String, String)> {
    r.body["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["action"].as_str().unwrap_or_default().to_owned(),
                        e["outcome"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has_all(r: &Reply, want: &[(&str, &str)]) -> Result<(), String> {
    let got = actions(r);
    let missing: Vec<_> = want
        .iter()
        .filter(|(a, o)| !got.iter().any(|(x, y)| x == a && y == o))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("audit events {missing:?} missing from {got:?}"))
    }
}

fn acme_trail(r: &Reply) -> Result<(), String> {
    has_all(
        r,
        &[
            ("auth.login", "success"),
            ("auth.login", "denied"),
            ("auth.refresh", "success"),
            ("auth.refresh", "denied"),
            ("auth.logout", "success"),
            ("records.create", "success"),
            ("records.create", "denied"),
            ("records.read", "success"),
            ("records.read", "failure"),
            ("records.list", "success"),
            ("records.delete", "success"),
            ("records.delete", "failure"),
            ("audit.read", "denied"),
            ("admin.tenant.limits", "success"),
            ("admin.tenant.bypass", "success"),
            ("ratelimit.denied", "denied"),
            ("ratelimit.bypass", "success"),
            ("tenant.denied", "denied"),
            ("admin.tenant.get", "denied"),
            ("admin.request", "failure"),
            ("admin.audit.verify", "denied"),
        ],
    )
}

fn globex_trail(r: &Reply) -> Result<(), String> {
    has_all(
        r,
        &[
            ("auth.login", "success"),
            ("auth.login", "denied"),
            ("admin.tenant.suspend", "success"),
            ("admin.tenant.resume", "success"),
            ("records.read", "failure"),
        ],
    )
}

fn valid(r: &Reply) -> Result<(), String> {
    let ok = r.body["valid"] == true
        && r.body["first_bad_seq"].is_null()
        && r.body["events"].as_u64().is_some_and(|n| n >= 10);
    if ok {
        Ok(())
    } else {
        Err(format!("expected a valid chain: {}", r.text))
    }
}

fn invalid(r: &Reply) -> Result<(), String> {
    if r.body["valid"] == false && r.body["reason"].is_string() {
        Ok(())
    } else {
        Err(format!("expected a broken chain: {}", r.text))
    }
}

fn health_ok(r: &Reply) -> Result<(), String> {
    if r.body["status"] == "ok"
        && r.body["components"]
            .as_object()
            .is_some_and(|c| !c.is_empty())
    {
        Ok(())
    } else {
        Err(format!("expected every component up: {}", r.text))
    }
}

fn me_bob(r: &Reply) -> Result<(), String> {
    let b = &r.body;
    if b["tenant_id"] == "acme"
        && b["user_id"] == "bob"
        && b["role"] == "user"
        && b["tier"] == "standard"
        && b["permissions"] == serde_json::json!(["records:read", "records:write"])
    {
        Ok(())
    } else {
        Err(format!("unexpected context: {}", r.text))
    }
}

fn suspended(r: &Reply) -> Result<(), String> {
    if r.body["status"] == "suspended" {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn active(r: &Reply) -> Result<(), String> {
    if r.body["status"] == "active" {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn tiny_limit(r: &Reply) -> Result<(), String> {
    if r.header("x-ratelimit-limit") == Some("3600") {
        Ok(())
    } else {
        Err(format!(
            "the new per-user quota is not in force: {:?}",
            r.headers
        ))
    }
}

fn tier_limit(r: &Reply) -> Result<(), String> {
    if r.header("x-ratelimit-limit") == Some("300") {
        Ok(())
    } else {
        Err(format!(
            "the tier's per-user quota is not back: {:?}",
            r.headers
        ))
    }
}

fn names_stored_burst(r: &Reply) -> Result<(), String> {
    let detail = r.body["detail"].as_str().unwrap_or_default();
    if detail.contains("stored `user_burst` 1000") && detail.contains("null to remove it") {
        Ok(())
    } else {
        Err(format!(
            "the detail does not name the stored burst: {detail:?}"
        ))
    }
}

fn no_user_burst(r: &Reply) -> Result<(), String> {
    if r.body["overrides"]
        .get("user_burst")
        .is_none_or(|v| v.is_null())
    {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn names_nul(r: &Reply) -> Result<(), String> {
    let detail = r.body["detail"].as_str().unwrap_or_default();
    if detail.contains("NUL") && !detail.contains("SQLSTATE") {
        Ok(())
    } else {
        Err(format!(
            "the detail does not name the NUL character: {detail:?}"
        ))
    }
}

fn bypass_open(r: &Reply) -> Result<(), String> {
    if r.body["bypass_until"].is_string() {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn bypass_closed(r: &Reply) -> Result<(), String> {
    if r.body["bypass_until"].is_null() {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn usage(r: &Reply) -> Result<(), String> {
    if r.body["usage"]["remaining"].is_u64() && r.body["tier"] == "standard" {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn allow_records(r: &Reply) -> Result<(), String> {
    // As axum answers it: GET (with HEAD) and POST, in the order the routes add them.
    if r.header("allow") == Some("GET,HEAD,POST") {
        Ok(())
    } else {
        Err(format!("Allow: {:?}", r.header("allow")))
    }
}

fn created_tenant(r: &Reply) -> Result<(), String> {
    if r.body["tier"] == "premium" {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn malformed(r: &Reply) -> Result<(), String> {
    let d = r.body["detail"].as_str().unwrap_or_default();
    if d.contains("malformed JSON") {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn unknown_field(r: &Reply) -> Result<(), String> {
    let d = r.body["detail"].as_str().unwrap_or_default();
    if d.contains("unknown field `owner`") {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn record_plan(r: &Reply) -> Result<(), String> {
    if r.body["title"] == "plan" && r.body["body"] == "secret" {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn location(r: &Reply) -> Result<(), String> {
    let id = r.body["id"].as_str().unwrap_or_default();
    if id.len() == 32 && r.header("location") == Some(format!("/v1/records/{id}").as_str()) {
        Ok(())
    } else {
        Err(format!("{:?} {}", r.headers, r.text))
    }
}

fn openapi(r: &Reply) -> Result<(), String> {
    if r.body["openapi"] == "3.1.0" && r.body["paths"]["/v1/records/{id}"].is_object() {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

fn prometheus(r: &Reply) -> Result<(), String> {
    if r.text.contains("tenancy_component_up") {
        Ok(())
    } else {
        Err(r.text.clone())
    }
}

const ACME_404: &str = "/v1/records/00000000000000000000000000000000";

/// The contract, in order. Tokens live in variables: `bob`, `alice` (acme), `gbob`,
/// `galice` (globex), `root` (platform super admin), `ro` (acme, `records:read` only).
pub fn contract() -> Vec<Step> {
    use Step::Case as C;
    let login_as = |name: &'static str, user: &'static str, save| {
        C(case(name, "POST", "/v1/auth/login", None, 200)
            .json(login(user))
            .save(save))
    };
    vec![
        // Public endpoints and request ids.
        C(case("health", "GET", "/health", None, 200).limited(false).check(health_ok)),
        C(case("request id echoed", "GET", "/health", None, 200).headers(&[("x-request-id", "abc-123")])),
        C(case("metrics", "GET", "/metrics", None, 200).check(prometheus)),
        C(case("openapi", "GET", "/openapi.json", None, 200).check(openapi)),
        // Login, refresh, reuse, logout.
        C(case("login bad password", "POST", "/v1/auth/login", None, 401)
            .json(r#"{"tenant_id":"acme","username":"bob","password":"nope"}"#)),
        C(case("login unknown tenant", "POST", "/v1/auth/login", None, 401)
            .json(r#"{"tenant_id":"nosuch","username":"bob","password":"password"}"#)),
        login_as("login bob", "bob", &[("bob", "/access_token"), ("bob_refresh", "/refresh_token")]),
        C(case("me", "GET", "/v1/me", Some("bob"), 200).limited(true).check(me_bob)),
        // HEAD is answered by the GET handler on both servers, limited alike.
        C(case("me, head only", "HEAD", "/v1/me", Some("bob"), 200).limited(true)),
        C(case("refresh", "POST", "/v1/auth/refresh", None, 200)
            .json(r#"{"refresh_token":"{bob_refresh}"}"#)
            .save(&[("bob2", "/access_token"), ("bob_refresh2", "/refresh_token")])),
        C(case("refreshed token works", "GET", "/v1/me", Some("bob2"), 200)),
        C(case("refresh reuse refused", "POST", "/v1/auth/refresh", None, 401)
            .json(r#"{"refresh_token":"{bob_refresh}"}"#)),
        C(case("reuse revoked the session's access token", "GET", "/v1/me", Some("bob2"), 401)),
        C(case("reuse revoked the session's new refresh token", "POST", "/v1/auth/refresh", None, 401)
            .json(r#"{"refresh_token":"{bob_refresh2}"}"#)),
        login_as("login bob again", "bob", &[("bob", "/access_token"), ("bob_refresh", "/refresh_token")]),
        // A body on logout is an empty JSON object or nothing: anything else is refused, and
        // the session does not end.
        C(case("logout, text body", "POST", "/v1/auth/logout", Some("bob"), 415)
            .body(Body::Raw("text/plain", "garbage"))),
        C(case("logout, malformed JSON", "POST", "/v1/auth/logout", Some("bob"), 400)
            .body(Body::Raw("application/json", "garbage"))
            .check(malformed)),
        C(case("logout, unknown field", "POST", "/v1/auth/logout", Some("bob"), 400)
            .json(r#"{"owner":"x"}"#)
            .check(unknown_field)),
        C(case("still logged in after refused logouts", "GET", "/v1/me", Some("bob"), 200)),
        C(case("logout", "POST", "/v1/auth/logout", Some("bob"), 204)),
        C(case("access token refused after logout", "GET", "/v1/me", Some("bob"), 401)),
        C(case("refresh token refused after logout", "POST", "/v1/auth/refresh", None, 401)
            .json(r#"{"refresh_token":"{bob_refresh}"}"#)),
        C(case("garbage token", "GET", "/v1/me", Some("junk"), 401)),
        C(case("no token", "GET", "/v1/me", None, 401)),
        login_as("login bob for the rest", "bob", &[("bob", "/access_token")]),
        login_as("login alice", "alice", &[("alice", "/access_token")]),
        login_as("login globex alice", "galice", &[("galice", "/access_token")]),
        login_as("login globex bob", "gbob", &[("gbob", "/access_token")]),
        login_as("login root", "root", &[("root", "/access_token")]),
        // Records; another tenant's ids answer like ids that never existed.
        C(case("create record", "POST", "/v1/records", Some("alice"), 201)
            .json(r#"{"title":"plan","body":"secret"}"#)
            .save(&[("rec", "/id")])
            .limited(true)
            .check(location)),
        C(case("read record", "GET", "/v1/records/{rec}", Some("bob"), 200).check(record_plan)),
        C(case("list records", "GET", "/v1/records?limit=10", Some("bob"), 200)),
        C(case("cross-tenant read", "GET", "/v1/records/{rec}", Some("galice"), 404)),
        C(case("never-existing read", "GET", ACME_404, Some("galice"), 404)),
        C(case("cross-tenant delete", "DELETE", "/v1/records/{rec}", Some("galice"), 404)),
        C(case("cross-tenant list", "GET", "/v1/records", Some("galice"), 200)),
        C(case("odd id", "GET", "/v1/records/..%2F..%2Fetc", Some("bob"), 404)),
        // An id that does not decode to UTF-8: the same answers as any id of no record, after
        // the same permission check ("undecodable id, not permitted" below).
        C(case("undecodable id", "GET", "/v1/records/%FF", Some("bob"), 404)),
        C(case("delete record", "DELETE", "/v1/records/{rec}", Some("bob"), 204)),
        C(case("deleted record gone", "GET", "/v1/records/{rec}", Some("alice"), 404)),
        C(case("delete twice", "DELETE", "/v1/records/{rec}", Some("bob"), 404)),
        // Permissions and the tenant header.
        C(case("user reads audit", "GET", "/v1/tenant/audit", Some("bob"), 403).limited(true)),
        // Admin routes serve super admins only; anyone else's 403 there is limited like any
        // answer to a tenant's user (no route is exempt).
        C(case("user reads a tenant", "GET", "/v1/admin/tenants/acme", Some("bob"), 403).limited(true)),
        C(case("user suspends", "POST", "/v1/admin/tenants/acme/suspend", Some("bob"), 403).json("{}").limited(true)),
        // A method no admin route serves: 405, audited as an admin request (not as a read).
        C(case("user deletes a tenant", "DELETE", "/v1/admin/tenants/acme", Some("bob"), 405).limited(true)),
        // Who may ask comes before what is asked: the 403 (a denial in the trail), not a 400
        // or 415 about a body the caller had no right to send.
        C(case("user sets limits, malformed JSON", "PUT", "/v1/admin/tenants/acme/limits", Some("bob"), 403)
            .json("{bad").limited(true)),
        C(case("user suspends, text body", "POST", "/v1/admin/tenants/acme/suspend", Some("bob"), 403)
            .body(Body::Raw("text/plain", "now")).limited(true)),
        C(case("user verifies a trail, no tenant", "GET", "/v1/admin/audit/verify", Some("bob"), 403)
            .limited(true)),
        C(case("tenant admin verifies", "GET", "/v1/admin/audit/verify?tenant=acme", Some("alice"), 403).limited(true)),
        Step::MintReadOnly,
        C(case("read-only token reads", "GET", "/v1/records", Some("ro"), 200)),
        C(case("read-only token writes", "POST", "/v1/records", Some("ro"), 403)
            .json(r#"{"title":"t","body":"b"}"#)),
        C(case("undecodable id, not permitted", "DELETE", "/v1/records/%FF%FE", Some("ro"), 403)),
        // A token without a session is revoked by its `jti` at logout.
        C(case("logout without a session", "POST", "/v1/auth/logout", Some("ro"), 204).json("{}")),
        C(case("session-less token refused after logout", "GET", "/v1/records", Some("ro"), 401)),
        C(case("session-less token refused on every route", "GET", "/v1/me", Some("ro"), 401)),
        Step::MintWithoutJti,
        // The standard makes `jti` optional: such a token is revoked by the hash of its claims.
        C(case("token without jti works", "GET", "/v1/records", Some("nojti"), 200)),
        C(case("logout of a token without jti", "POST", "/v1/auth/logout", Some("nojti"), 204)),
        C(case("token without jti refused after logout", "GET", "/v1/records", Some("nojti"), 401)),
        C(case("tenant header mismatch", "GET", "/v1/me", Some("bob"), 403).headers(&[("x-tenant-id", "globex")]).limited(true)),
        C(case("tenant header match", "GET", "/v1/me", Some("bob"), 200).headers(&[("x-tenant-id", "acme")])),
        // Suspend and resume; tenant creation.
        C(case("globex before", "GET", "/v1/me", Some("gbob"), 200)),
        C(case("globex cross-tenant read", "GET", ACME_404, Some("gbob"), 404)),
        // A body on suspend or resume is an empty JSON object or nothing: anything else is
        // refused, and nothing is suspended.
        C(case("suspend, text body", "POST", "/v1/admin/tenants/globex/suspend", Some("root"), 415)
            .body(Body::Raw("text/plain", "garbage"))),
        C(case("suspend, malformed JSON", "POST", "/v1/admin/tenants/globex/suspend", Some("root"), 400)
            .body(Body::Raw("application/json", "garbage"))
            .check(malformed)),
        C(case("suspend, unknown field", "POST", "/v1/admin/tenants/globex/suspend", Some("root"), 400)
            .json(r#"{"owner":"x"}"#)
            .check(unknown_field)),
        C(case("resume, text body", "POST", "/v1/admin/tenants/globex/resume", Some("root"), 415)
            .body(Body::Raw("text/plain", "garbage"))),
        C(case("not suspended by refused bodies", "GET", "/v1/admin/tenants/globex", Some("root"), 200)
            .check(active)),
        C(case("globex still served", "GET", "/v1/me", Some("gbob"), 200)),
        C(case("suspend", "POST", "/v1/admin/tenants/globex/suspend", Some("root"), 200)
            .json("{}")
            .limited(false)
            .check(suspended)),
        C(case("suspended token", "GET", "/v1/me", Some("gbob"), 403).limited(true)),
        // The right password gets the same 401 as a wrong one: the answer tests no password.
        C(case("suspended login", "POST", "/v1/auth/login", None, 401).json(login("gbob"))),
        C(case("suspended login, wrong password", "POST", "/v1/auth/login", None, 401)
            .json(r#"{"tenant_id":"globex","username":"bob","password":"guess"}"#)),
        // No body at all is as good as `{}`.
        C(case("resume", "POST", "/v1/admin/tenants/globex/resume", Some("root"), 200).check(active)),
        C(case("resumed token", "GET", "/v1/me", Some("gbob"), 200)),
        C(case("create tenant", "PUT", "/v1/admin/tenants/initech", Some("root"), 201).json(r#"{"tier":"standard"}"#)),
        C(case("change tier", "PUT", "/v1/admin/tenants/initech", Some("root"), 200)
            .json(r#"{"tier":"premium"}"#)
            .check(created_tenant)),
        C(case("unknown tier", "PUT", "/v1/admin/tenants/initech", Some("root"), 400).json(r#"{"tier":"gold"}"#)),
        C(case("unknown tenant", "GET", "/v1/admin/tenants/nosuch", Some("root"), 404)),
        C(case("invalid tenant id", "GET", "/v1/admin/tenants/Not%20Valid", Some("root"), 400)),
        // Limits: a tiny quota reached, waited out, lifted by the admin, bypassed.
        C(case("tier quota", "GET", "/v1/me", Some("bob"), 200).check(tier_limit)),
        // A tier change keeps the overrides: they must fit the new tier.
        C(case("create a premium tenant", "PUT", "/v1/admin/tenants/tierco", Some("root"), 201)
            .json(r#"{"tier":"premium"}"#)),
        C(case("a burst within premium", "PUT", "/v1/admin/tenants/tierco/limits", Some("root"), 200)
            .json(r#"{"user_burst":1000}"#)),
        C(case("a tier its overrides do not fit", "PUT", "/v1/admin/tenants/tierco", Some("root"), 400)
            .json(r#"{"tier":"standard"}"#).check(names_stored_burst)),
        C(case("a lower limit the stored burst does not fit", "PUT", "/v1/admin/tenants/tierco/limits", Some("root"), 400)
            .json(r#"{"user_per_hour":600}"#).check(names_stored_burst)),
        C(case("null removes an override", "PUT", "/v1/admin/tenants/tierco/limits", Some("root"), 200)
            .json(r#"{"user_burst":null}"#).check(no_user_burst)),
        C(case("then the tier fits", "PUT", "/v1/admin/tenants/tierco", Some("root"), 200)
            .json(r#"{"tier":"standard"}"#)),
        // A burst above the hourly limit would let more through at once than the hour allows.
        C(case("burst above the limit", "PUT", "/v1/admin/tenants/acme/limits", Some("root"), 400)
            .json(r#"{"tenant_per_hour":10,"tenant_burst":1000}"#)),
        C(case("refused limits left unchanged", "GET", "/v1/me", Some("bob"), 200).check(tier_limit)),
        C(case("set a tiny quota", "PUT", "/v1/admin/tenants/acme/limits", Some("root"), 200)
            .json(r#"{"user_per_hour":3600,"user_burst":2}"#)),
        C(case("tiny quota on the next request", "GET", "/v1/me", Some("bob"), 200).check(tiny_limit)),
        Step::UntilLimited(case("limit reached", "GET", "/v1/me", Some("bob"), 429).limited(true), 8),
        Step::WaitRetryAfter,
        C(case("restored after Retry-After", "GET", "/v1/me", Some("bob"), 200)),
        Step::UntilLimited(case("limit reached again", "GET", "/v1/me", Some("bob"), 429), 8),
        C(case("admin lifts the quota", "PUT", "/v1/admin/tenants/acme/limits", Some("root"), 200)
            .json(r#"{"user_per_hour":300,"user_burst":30}"#)),
        C(case("lifted on the next request", "GET", "/v1/me", Some("bob"), 200).check(tier_limit)),
        // One request a minute: nothing refills while the bypass is open and closed again.
        C(case("slow quota", "PUT", "/v1/admin/tenants/acme/limits", Some("root"), 200)
            .json(r#"{"user_per_hour":60,"user_burst":2}"#)),
        Step::UntilLimited(case("limited before the bypass", "GET", "/v1/me", Some("bob"), 429), 8),
        C(case("bypass", "POST", "/v1/admin/tenants/acme/bypass", Some("root"), 200)
            .json(r#"{"seconds":60}"#)
            .check(bypass_open)),
        C(case("bypassed 1", "GET", "/v1/me", Some("bob"), 200)),
        C(case("bypassed 2", "GET", "/v1/me", Some("bob"), 200)),
        C(case("bypassed 3", "GET", "/v1/me", Some("bob"), 200)),
        C(case("bypass ended", "POST", "/v1/admin/tenants/acme/bypass", Some("root"), 200)
            .json(r#"{"seconds":0}"#)
            .check(bypass_closed)),
        C(case("limited after the bypass", "GET", "/v1/me", Some("bob"), 429)),
        C(case("quota restored", "PUT", "/v1/admin/tenants/acme/limits", Some("root"), 200)
            .json(r#"{"user_per_hour":300,"user_burst":30}"#)),
        C(case("served after restore", "GET", "/v1/me", Some("bob"), 200).check(tier_limit)),
        C(case("usage", "GET", "/v1/admin/tenants/acme", Some("root"), 200).check(usage)),
        C(case("super admin not limited", "GET", "/v1/me", Some("root"), 200).limited(false)),
        // Bodies.
        C(case("413", "POST", "/v1/records", Some("bob"), 413).body(Body::Big)),
        // The limit holds on routes that read no body too, before the handler runs: the
        // suspension below does not happen (the cases after it would answer 403).
        C(case("413 where no body is read", "GET", "/v1/me", Some("bob"), 413)
            .body(Body::Big)
            .limited(true)),
        C(case("413 before an admin action", "POST", "/v1/admin/tenants/acme/suspend", Some("root"), 413)
            .body(Body::Big)),
        C(case("malformed JSON", "POST", "/v1/records", Some("bob"), 400)
            .json(r#"{"title":"#)
            .check(malformed)),
        C(case("unknown field", "POST", "/v1/records", Some("bob"), 400)
            .json(r#"{"title":"t","body":"b","owner":"globex"}"#)
            .check(unknown_field)),
        C(case("login unknown field", "POST", "/v1/auth/login", None, 400)
            .json(r#"{"tenant_id":"acme","username":"bob","password":"password","role":"super_admin"}"#)),
        C(case("not JSON", "POST", "/v1/records", Some("bob"), 415).body(Body::Raw("text/plain", "hello"))),
        C(case("empty title", "POST", "/v1/records", Some("bob"), 400).json(r#"{"title":"","body":"b"}"#)),
        // PostgreSQL text holds no NUL: every backend refuses it alike, without naming one.
        C(case("NUL in a title", "POST", "/v1/records", Some("bob"), 400)
            .json(r#"{"title":"a\u0000b","body":""}"#).check(names_nul)),
        C(case("unknown path", "GET", "/v1/nowhere", Some("bob"), 404)),
        C(case("wrong method", "PATCH", "/v1/records", Some("bob"), 405).check(allow_records)),
        C(case("bad query", "GET", "/v1/tenant/audit?colour=red", Some("alice"), 400)),
        C(case("bad limit", "GET", "/v1/tenant/audit?limit=0", Some("alice"), 400)),
        // The audit trail has every kind of action and verifies, until altered.
        C(case("acme trail", "GET", "/v1/tenant/audit?limit=500", Some("alice"), 200).check(acme_trail)),
        C(case("globex trail", "GET", "/v1/tenant/audit?limit=500", Some("galice"), 200).check(globex_trail)),
        C(case("verify", "GET", "/v1/admin/audit/verify?tenant=acme", Some("root"), 200).check(valid)),
        Step::Tamper,
        C(case("verify after tampering", "GET", "/v1/admin/audit/verify?tenant=acme", Some("root"), 200)
            .check(invalid)),
        C(case("other tenants unaffected", "GET", "/v1/admin/audit/verify?tenant=globex", Some("root"), 200)
            .check(valid)),
    ]
}

/// Plays `steps` against `h`, asserting each case, and returns the transcript.
pub async fn run(h: &Harness, steps: &[Step]) -> Vec<Entry> {
    let who = h.flavor.name();
    let mut vars = Vars::new();
    vars.insert("junk".into(), "not.a.jwt".into());
    let mut out = Vec::new();
    let mut retry_after = 0u64;
    for step in steps {
        match step {
            Step::Case(c) => {
                let r = send(h, c, &vars).await;
                verify(who, c, &r);
                save(c, &r, &mut vars);
                out.push(entry(c.name, &r, sent_id(c)));
            }
            Step::UntilLimited(c, n) => {
                let mut last = None;
                for _ in 0..*n {
                    let r = send(h, c, &vars).await;
                    if r.status == 429 {
                        last = Some(r);
                        break;
                    }
                    assert_eq!(r.status, 200, "{who} {}: {}", c.name, r.text);
                }
                let r = last.unwrap_or_else(|| panic!("{who} {}: no 429 in {n} requests", c.name));
                verify(who, c, &r);
                retry_after = r
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After in whole seconds");
                assert!(retry_after >= 1, "{who}: Retry-After {retry_after}");
                out.push(entry(c.name, &r, None));
            }
            Step::WaitRetryAfter => {
                tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(200))
                    .await;
            }
            Step::MintReadOnly => {
                vars.insert(
                    "ro".into(),
                    h.mint("acme", "carol", "user", &["records:read"]),
                );
            }
            Step::MintWithoutJti => {
                vars.insert(
                    "nojti".into(),
                    h.mint_without_jti("acme", "dave", &["records:read"]),
                );
            }
            Step::Tamper => tamper(h).await,
        }
    }
    out
}

fn sent_id(c: &Case) -> Option<&'static str> {
    c.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
        .map(|(_, v)| *v)
}

async fn send(h: &Harness, c: &Case, vars: &Vars) -> Reply {
    let token = c.token.map(|t| {
        vars.get(t)
            .unwrap_or_else(|| panic!("{}: no token {t:?} yet", c.name))
            .clone()
    });
    let path = fill(c.path, vars);
    let big;
    let (body, ct): (Option<String>, Option<&str>) = match c.body {
        Body::None => (None, None),
        Body::Json(s) => (Some(fill(s, vars)), None),
        Body::Raw(ct, s) => (Some(s.to_owned()), Some(ct)),
        Body::Big => {
            big = serde_json::json!({"title": "x", "body": "a".repeat(70 * 1024)}).to_string();
            (Some(big), None)
        }
    };
    let mut headers: Vec<(&str, &str)> = c.headers.to_vec();
    if let Some(ct) = ct {
        headers.push(("content-type", ct));
    }
    h.send(c.method, &path, token.as_deref(), body.as_deref(), &headers)
        .await
}

#[track_caller]
fn verify(who: &str, c: &Case, r: &Reply) {
    let label = format!("{who} {:?}", c.name);
    assert_eq!(r.status, c.status, "{label}: {}", r.text);
    let id = r.header("x-request-id");
    assert!(
        id.is_some_and(|v| !v.is_empty()),
        "{label}: no X-Request-Id"
    );
    if let Some(sent) = sent_id(c) {
        assert_eq!(id, Some(sent), "{label}: X-Request-Id not echoed");
    }
    if c.status >= 400 {
        assert_problem(&label, r, c.status);
        // A problem body quotes the request id it answers.
        if let Some(quoted) = r.body["request_id"].as_str() {
            assert_eq!(Some(quoted), id, "{label}: request ids differ");
        }
    }
    if c.status == 429 {
        assert!(r.header("retry-after").is_some(), "{label}: no Retry-After");
    }
    match c.limited {
        Some(true) => {
            for h in RATE_HEADERS {
                assert!(
                    r.header(h).is_some(),
                    "{label}: {h} missing: {:?}",
                    r.headers
                );
            }
        }
        Some(false) => {
            for h in RATE_HEADERS {
                assert!(
                    r.header(h).is_none(),
                    "{label}: {h} present: {:?}",
                    r.headers
                );
            }
        }
        None => {}
    }
    if let Some(check) = c.check
        && let Err(e) = check(r)
    {
        panic!("{label}: {e}");
    }
}

fn save(c: &Case, r: &Reply, vars: &mut Vars) {
    for (name, pointer) in c.save {
        let v = r
            .body
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: no {pointer} in {}", c.name, r.text));
        vars.insert((*name).to_owned(), v.to_owned());
    }
}

/// Alters one stored acme `records.create` event, keeping it well-formed.
pub async fn tamper(h: &Harness) {
    // Let what is queued reach the store first.
    let _ = tokio::time::timeout(Duration::from_secs(5), h.app().audit().flush()).await;
    match h.app().audit_backend() {
        AuditBackend::File(path) => {
            let text = std::fs::read_to_string(path).expect("read the audit file");
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let i = lines
                .iter()
                .position(|l| l.contains("\"tenant\":\"acme\"") && l.contains("records.create"))
                .expect("an acme records.create line");
            lines[i] = lines[i].replacen("records.create", "records.cleate", 1);
            std::fs::write(path, lines.join("\n") + "\n").expect("write the audit file");
        }
        AuditBackend::Postgres(_) => {
            use sqlx::Connection as _;
            let url = h
                .app()
                .config()
                .database_url
                .clone()
                .expect("a database URL");
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            let mut tx = conn.begin().await.expect("begin");
            // As a superuser, skip the append-only trigger for this transaction only.
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .expect("bypass triggers");
            let n = sqlx::query(
                "UPDATE tenancy_audit.events
                    SET payload = convert_to(replace(convert_from(payload, 'UTF8'),
                                  'records.create', 'records.cleate'), 'UTF8')
                  WHERE tenant_id = 'acme' AND seq = (
                        SELECT min(seq) FROM tenancy_audit.events
                         WHERE tenant_id = 'acme'
                           AND position('records.create' in convert_from(payload, 'UTF8')) > 0)",
            )
            .execute(&mut *tx)
            .await
            .expect("alter an event")
            .rows_affected();
            assert_eq!(n, 1, "one acme records.create row altered");
            tx.commit().await.expect("commit");
        }
    }
}
