//! `tenancy-server`: serve the reference API, or run one of its maintenance commands.

use std::process::ExitCode;
use std::time::Duration;

use tenancy_server::app::{self, AuditBackend};
use tenancy_server::config::{Config, DEV_JWT_SECRET, KeyConfig};
use tenancy_server::{Error, users};

const USAGE: &str = "\
usage: tenancy-server [COMMAND]

commands:
  serve                                  serve the API (the default)
  token --tenant T --user U --role R [--ttl SECONDS]
                                         mint an access token with the configured key
  audit verify --tenant T [--file PATH] [--checkpoint FILE --checkpoint-key HEX]
                                         verify a tenant's audit chain (database, else the JSONL file)
  audit checkpoint --tenant T --key-file KEY --out FILE [--file PATH]
                                         verify the chain (against FILE's checkpoint when there is
                                         one), then sign its head into FILE; KEY holds the signing
                                         seed, made on first use: keep both away from the log
  db check                               run the catalog audit (needs TENANCY_DATABASE_URL)
  migrate                                run the migrations (needs TENANCY_DATABASE_URL)
  help                                   this text

settings come from TENANCY_* variables and TENANCY_CONFIG (a TOML file); see the README.";

#[allow(clippy::print_stderr)]
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tenancy-server: {e}");
    ExitCode::FAILURE
}

/// `--name value` pairs after the command words.
fn flags(args: &[String], allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        if !allowed.contains(&name) {
            return Err(format!("unknown option --{name}"));
        }
        let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        out.push((name.to_owned(), v.clone()));
    }
    Ok(out)
}

fn flag<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::main]
async fn main() -> ExitCode {
    tenancy_server::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = match words.as_slice() {
        [] | ["serve"] => serve().await,
        ["token", rest @ ..] => token(&args[args.len() - rest.len()..]),
        ["audit", "verify", rest @ ..] => audit_verify(&args[args.len() - rest.len()..]).await,
        ["audit", "checkpoint", rest @ ..] => {
            audit_checkpoint(&args[args.len() - rest.len()..]).await
        }
        ["db", "check"] => db_check().await,
        ["migrate"] => migrate().await,
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("unknown command\n\n{USAGE}")),
    };
    run.unwrap_or_else(fail)
}

async fn serve() -> Result<ExitCode, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let dev_key = config.dev_key;
    let demo = config.demo_users;
    let server = tenancy_server::start(config)
        .await
        .map_err(|e| error_chain(&e))?;
    let addr = server.local_addr();
    let app = server.app();
    println!(
        "tenancy-server listening on http://{addr} ({} mode)",
        app.config().env.as_str()
    );
    let stores = app.stores();
    println!(
        "  records: {}  sessions: {}  revoked tokens: {}  limits: {}  audit: {}",
        stores.records,
        stores.sessions,
        stores.revoked_tokens,
        stores.limits,
        app.audit_location(),
    );
    if dev_key {
        println!(
            "  tokens: HS256 with the public dev secret (set TENANCY_JWT_SECRET for anything real)"
        );
    }
    if demo {
        println!(
            "  demo users (password \"{}\"): alice (tenant_admin) and bob (user) in acme and globex, root (super_admin) in platform",
            users::DEMO_PASSWORD
        );
        println!("  log in:");
        println!(
            "    curl -s --json '{{\"tenant_id\":\"acme\",\"username\":\"alice\",\"password\":\"password\"}}' http://{addr}/v1/auth/login"
        );
    }
    println!("  API description: http://{addr}/openapi.json   stop with Ctrl-C");
    tenancy_server::shutdown_signal().await;
    println!("shutting down: finishing requests and flushing the audit trail");
    match server.shutdown().await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The events the store could not take are safe in the spool and stored at the next
        // start: nothing is lost, so the stop is a clean one (exit 0), with a warning.
        Err(e @ Error::Unavailable(_)) => {
            warn_spooled(&error_chain(&e));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(error_chain(&e)),
    }
}

#[allow(clippy::print_stderr)]
fn warn_spooled(why: &str) {
    eprintln!(
        "tenancy-server: {why}; the remaining audit events are kept in the spool and stored at \
         the next start"
    );
}

fn error_chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn token(args: &[String]) -> Result<ExitCode, String> {
    let f = flags(args, &["tenant", "user", "role", "ttl"])?;
    let need = |n: &str| flag(&f, n).ok_or_else(|| format!("token needs --{n}\n\n{USAGE}"));
    let tenant = tenancy_core::TenantId::parse(need("tenant")?).map_err(|e| e.to_string())?;
    let user = tenancy_core::UserId::parse(need("user")?).map_err(|e| e.to_string())?;
    let role = tenancy_core::Role::parse(need("role")?).map_err(|e| e.to_string())?;
    if role.is_super_admin() && tenant.as_str() != "platform" {
        // The server refuses such a token (403): a platform role outside the platform.
        return Err("--role super_admin belongs to --tenant platform".into());
    }
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let ttl = match flag(&f, "ttl") {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .ok_or("--ttl must be 1 to 86400 seconds")?,
        None => config.access_token_ttl.as_secs(),
    };
    let key = app::signing_key(&config)
        .map_err(|e| e.to_string())?
        .ok_or("no signing key: set TENANCY_JWT_SECRET or TENANCY_JWT_PRIVATE_KEY_FILE")?;
    if matches!(&config.key, KeyConfig::Secret(s) if s == DEV_JWT_SECRET) {
        eprintln_dev();
    }
    let issuer =
        tenancy_auth::TokenIssuer::builder(key, config.issuer.clone(), config.audience.clone())
            .access_ttl(Duration::from_secs(ttl))
            .build()
            .map_err(|e| e.to_string())?;
    let t = issuer
        .access_token(&tenant, &user, &role, &users::permissions_for(&role), None)
        .map_err(|e| e.to_string())?;
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stderr)]
fn eprintln_dev() {
    eprintln!("note: signed with the public dev secret");
}

async fn audit_verify(args: &[String]) -> Result<ExitCode, String> {
    use tenancy_audit::checkpoint::{Checkpoint, verifying_key_from_hex};
    let f = flags(args, &["tenant", "file", "checkpoint", "checkpoint-key"])?;
    let tenant = flag(&f, "tenant").ok_or(format!("audit verify needs --tenant\n\n{USAGE}"))?;
    let tenant = tenancy_core::TenantId::parse(tenant).map_err(|e| e.to_string())?;
    let mut trusted = Vec::new();
    match (flag(&f, "checkpoint"), flag(&f, "checkpoint-key")) {
        (Some(path), Some(hex)) => {
            let key = verifying_key_from_hex(hex).map_err(|e| format!("--checkpoint-key: {e}"))?;
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("--checkpoint {path}: {e}"))?;
            let cp: Checkpoint =
                serde_json::from_str(&text).map_err(|e| format!("--checkpoint {path}: {e}"))?;
            trusted.push(cp.verify(&key).map_err(|e| format!("--checkpoint: {e}"))?);
        }
        (None, None) => {}
        _ => return Err("--checkpoint and --checkpoint-key go together".into()),
    }
    let v = verify_chain(flag(&f, "file"), &tenant, &trusted).await?;
    println!("{}", summary(&v, &trusted));
    Ok(if v.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The verification summary, and whether a signed checkpoint anchored it: without one, a cut
/// tail or a history rewritten from its start verifies (only the chain's inner links are
/// checked).
fn summary(
    v: &tenancy_audit::verify::Verification,
    trusted: &[tenancy_audit::checkpoint::TrustedCheckpoint],
) -> serde_json::Value {
    let mut s = v.summary();
    s["anchored"] = serde_json::Value::Bool(!trusted.is_empty());
    s
}

/// Verifies `tenant`'s chain in the configured store (the JSONL file at `file` when given).
async fn verify_chain(
    file: Option<&str>,
    tenant: &tenancy_core::TenantId,
    trusted: &[tenancy_audit::checkpoint::TrustedCheckpoint],
) -> Result<tenancy_audit::verify::Verification, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let backend = match (&config.database_url, file) {
        (_, Some(file)) => AuditBackend::File(file.into()),
        (Some(url), None) => {
            let owner = config.database_owner_url.as_deref().unwrap_or(url);
            AuditBackend::Postgres(
                tenancy_audit::store::PgAuditStore::builder(owner)
                    .connect()
                    .map_err(|e| e.to_string())?,
            )
        }
        (None, None) => AuditBackend::File(config.audit_file()),
    };
    let result = match &backend {
        AuditBackend::File(path) => {
            if !path.exists() {
                return Err(format!("no audit file at {}", path.display()));
            }
            let store = tenancy_audit::store::FileAuditStore::builder(path.clone())
                .read_only()
                .open()
                .await
                .map_err(|e| e.to_string())?;
            tenancy_audit::verify::verify(&store, tenant, trusted).await
        }
        AuditBackend::Postgres(pg) => tenancy_audit::verify::verify(pg, tenant, trusted).await,
    };
    result.map_err(|e| e.to_string())
}

/// The key id of the checkpoints `audit checkpoint` signs.
const CHECKPOINT_KEY_ID: &str = "tenancy-server";

/// `audit checkpoint`: verifies the chain (against the previous checkpoint in `--out`, when
/// there is one, so that a tail cut or a history rewritten since then is caught), then signs
/// its head into `--out`. Run it periodically (cron) and keep the key and the checkpoint
/// somewhere the log's writers cannot reach: the checkpoint is what makes a cut tail
/// detectable.
async fn audit_checkpoint(args: &[String]) -> Result<ExitCode, String> {
    use tenancy_audit::checkpoint::{Checkpoint, CheckpointSigner, verifying_key_to_hex};
    let f = flags(args, &["tenant", "file", "key-file", "out"])?;
    let need =
        |name: &str| flag(&f, name).ok_or(format!("audit checkpoint needs --{name}\n\n{USAGE}"));
    let tenant = tenancy_core::TenantId::parse(need("tenant")?).map_err(|e| e.to_string())?;
    let (key_file, out) = (need("key-file")?, need("out")?);
    let signer = match std::fs::read_to_string(key_file) {
        Ok(text) => CheckpointSigner::from_seed_hex(CHECKPOINT_KEY_ID, &text)
            .map_err(|e| format!("--key-file {key_file}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer =
                CheckpointSigner::generate(CHECKPOINT_KEY_ID).map_err(|e| e.to_string())?;
            write_private(key_file, &signer.seed_hex())
                .map_err(|e| format!("--key-file {key_file}: {e}"))?;
            #[allow(clippy::print_stderr)]
            {
                eprintln!("tenancy-server: made a new checkpoint key in {key_file}");
            }
            signer
        }
        Err(e) => return Err(format!("--key-file {key_file}: {e}")),
    };
    let mut trusted = Vec::new();
    match std::fs::read_to_string(out) {
        Ok(text) => {
            let previous: Checkpoint =
                serde_json::from_str(&text).map_err(|e| format!("--out {out}: {e}"))?;
            trusted.push(
                previous
                    .verify(&signer.verifying_key())
                    .map_err(|e| format!("--out {out}: {e}"))?,
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("--out {out}: {e}")),
    }
    let v = verify_chain(flag(&f, "file"), &tenant, &trusted).await?;
    if !v.is_valid() {
        println!("{}", summary(&v, &trusted));
        return Err("the chain does not verify: no checkpoint written".into());
    }
    let head = v
        .head
        .ok_or(format!("tenant {tenant} has no audit events to sign"))?;
    let cp = signer.sign(&tenant, head, time::OffsetDateTime::now_utc());
    let text = serde_json::to_string(&cp).map_err(|e| e.to_string())?;
    write_private(out, &text).map_err(|e| format!("--out {out}: {e}"))?;
    println!(
        "{}",
        serde_json::json!({
            "tenant": tenant.as_str(),
            "seq": head.seq,
            "key": verifying_key_to_hex(&signer.verifying_key()),
            "out": out,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to `path` whole (a temporary file renamed over it), readable by the owner
/// only.
fn write_private(path: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = format!("{path}.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn database_urls(config: &Config) -> Result<(String, String), String> {
    let url = config
        .database_url
        .clone()
        .ok_or("TENANCY_DATABASE_URL is not set")?;
    let owner = config
        .database_owner_url
        .clone()
        .unwrap_or_else(|| url.clone());
    Ok((url, owner))
}

async fn db_check() -> Result<ExitCode, String> {
    use sqlx::Connection as _;
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let (url, owner) = database_urls(&config)?;
    let opts: sqlx::postgres::PgConnectOptions =
        url.parse().map_err(|e: sqlx::Error| e.to_string())?;
    let mut conn = sqlx::PgConnection::connect(&owner)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let user = opts.get_username().to_owned();
    let bypasses = app::role_bypasses_rls(&mut conn, &user)
        .await
        .map_err(|e| error_chain(&e))?;
    let role = if bypasses && config.env != tenancy_server::Env::Prod {
        config.database_runtime_role.clone()
    } else {
        user
    };
    let role = tenancy_db::schema::RoleName::parse(&role).map_err(|e| e.to_string())?;
    let findings = app::catalog_findings(&mut conn, Some(&role))
        .await
        .map_err(|e| error_chain(&e))?;
    if findings.is_empty() {
        println!("catalog audit for role {role}: no findings");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "catalog audit for role {role}: {} finding(s)",
            findings.len()
        );
        for f in findings {
            println!("  - {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

async fn migrate() -> Result<ExitCode, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let (_, owner) = database_urls(&config)?;
    app::migrate(&owner).await.map_err(|e| error_chain(&e))?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
