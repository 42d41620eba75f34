//! The binary: configuration errors name the setting, `token` mints a token the server
//! accepts, `audit verify` checks the JSONL file, `db check` and `migrate` need a database.

mod common;

use std::process::Command;

use common::Harness;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenancy-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TENANCY_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn bad_settings_name_the_variable_and_fail() {
    let out = bin().env("TENANCY_ENV", "prod").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TENANCY_JWT_SECRET"), "{err}");
    let out = bin()
        .env("TENANCY_LISTEN", "localhost-ish")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("TENANCY_LISTEN"));
    let out = bin().arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    let out = bin().args(["db", "check"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("TENANCY_DATABASE_URL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_work_and_the_file_verifies() {
    let h = Harness::memory().await;
    let out = bin()
        .args([
            "token",
            "--tenant",
            "acme",
            "--user",
            "dave",
            "--role",
            "tenant_admin",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let me = h.get("/v1/me", &token).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.body["user_id"], "dave");
    assert_eq!(me.body["role"], "tenant_admin");
    let created = h
        .post(
            "/v1/records",
            Some(&token),
            &serde_json::json!({"title": "t", "body": "b"}),
        )
        .await;
    assert_eq!(created.status, 201);
    let file = h.app().config().audit_file();
    let dir = h.stop().await;

    let verify = |path: &std::path::Path| {
        bin()
            .args(["audit", "verify", "--tenant", "acme", "--file"])
            .arg(path)
            .output()
            .unwrap()
    };
    let ok = verify(&file);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(summary["valid"], true);
    assert!(summary["events"].as_u64().unwrap() >= 1);

    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("records.create", "records.delete", 1)).unwrap();
    let bad = verify(&file);
    assert!(!bad.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(summary["valid"], false);
    assert!(summary["first_bad_seq"].is_u64());
    drop(dir);
}
