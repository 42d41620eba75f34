//! `tenancy-actix-server`: serve the reference API on actix-web. Settings are the
//! `TENANCY_*` variables and `TENANCY_CONFIG` file of `tenancy-server`; its maintenance
//! commands (`token`, `audit verify`, `db check`, `migrate`) are run with `tenancy-server`.

use std::process::ExitCode;

use tenancy_server::Config;

const USAGE: &str = "\
usage: tenancy-actix-server [serve]

Serves the reference API on actix-web with the same settings as tenancy-server
(TENANCY_* variables and TENANCY_CONFIG); use tenancy-server for token, audit verify,
db check and migrate.";

#[allow(clippy::print_stderr)]
fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("tenancy-actix-server: {text}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    tenancy_server::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["serve"] => {}
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("tenancy-actix-server: unknown command\n\n{USAGE}");
            }
            return ExitCode::FAILURE;
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let server = match tenancy_actix_server::start(config).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let app = server.app();
    println!(
        "tenancy-actix-server listening on http://{} ({} mode, audit in {})",
        server.local_addr(),
        app.config().env.as_str(),
        app.audit_location()
    );
    if app.config().demo_users {
        println!(
            "  log in: curl -s http://{}/v1/auth/login -H 'content-type: application/json' \\\n    -d '{{\"tenant_id\":\"acme\",\"username\":\"alice\",\"password\":\"password\"}}'",
            server.local_addr()
        );
    }
    tenancy_server::shutdown_signal().await;
    println!("stopping: finishing in-flight requests and flushing the audit queue");
    match server.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        // The events the store could not take are safe in the spool and stored at the next
        // start: nothing is lost, so the stop is a clean one (exit 0), with a warning.
        Err(e @ tenancy_actix_server::Error::App(tenancy_server::Error::Unavailable(_))) => {
            let _ = fail(&e);
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "tenancy-actix-server: the remaining audit events are kept in the spool \
                     and stored at the next start"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
