//! The binary: configuration errors name the setting, `token` mints a token the server
//! accepts, `audit verify` checks the JSONL file, `db check` and `migrate` need a database.

mod common;

use common::{Harness, bin};

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
    let token = common::mint_with_cli(&[], "acme", "dave", "tenant_admin");
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

/// `audit verify --checkpoint FILE --checkpoint-key HEX`: valid when the chain still
/// reaches the signed head with the signed hash; invalid when the checkpoint disagrees
/// (another hash at its `seq`, or a `seq` past the end) or the chain was altered; refused
/// when the checkpoint's signature is not the given key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_against_a_signed_checkpoint() {
    use tenancy_audit::chain::{ChainHead, Digest};
    use tenancy_audit::checkpoint::{CheckpointSigner, verifying_key_to_hex};
    use tenancy_audit::store::{AuditStore as _, FileAuditStore};

    let h = Harness::memory().await;
    let token = h.login("acme", "alice").await;
    h.create_records(&token, 3).await;
    let file = h.app().config().audit_file();
    let dir = h.stop().await;

    let acme: tenancy_core::TenantId = "acme".parse().unwrap();
    let store = FileAuditStore::builder(file.clone())
        .read_only()
        .open()
        .await
        .unwrap();
    let head = store.head(&acme).await.unwrap().expect("acme has a chain");
    drop(store);
    let signer = CheckpointSigner::from_seed("ops-1", [7; 32]);
    let key = verifying_key_to_hex(&signer.verifying_key());
    let write = |name: &str, head: ChainHead, signer: &CheckpointSigner| {
        let cp = signer.sign(&acme, head, time::OffsetDateTime::now_utc());
        let p = dir.path().join(name);
        std::fs::write(&p, serde_json::to_string(&cp).unwrap()).unwrap();
        p
    };
    let verify = |checkpoint: &std::path::Path, key: &str| {
        let out = bin()
            .args(["audit", "verify", "--tenant", "acme", "--file"])
            .arg(&file)
            .arg("--checkpoint")
            .arg(checkpoint)
            .args(["--checkpoint-key", key])
            .output()
            .unwrap();
        let summary = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok();
        (
            out.status.success(),
            summary,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let matching = write("matching.json", head, &signer);
    let (ok, summary, err) = verify(&matching, &key);
    assert!(ok, "{err}");
    let summary = summary.expect("a summary");
    assert_eq!(summary["valid"], true, "{summary}");
    // A login and three records.
    assert!(
        summary["events"].as_u64().is_some_and(|n| n >= 4),
        "{summary}"
    );

    let rewritten = ChainHead {
        seq: head.seq,
        hash: Digest([0xab; 32]),
    };
    let disagreeing = write("disagreeing.json", rewritten, &signer);
    let (ok, summary, err) = verify(&disagreeing, &key);
    assert!(!ok, "{err}");
    let summary = summary.expect("a summary");
    assert_eq!(summary["valid"], false, "{summary}");
    assert_eq!(summary["reason"], "rewritten", "{summary}");

    let beyond = ChainHead {
        seq: head.seq + 5,
        hash: head.hash,
    };
    let truncated = write("beyond.json", beyond, &signer);
    let (ok, summary, _) = verify(&truncated, &key);
    assert!(!ok);
    assert_eq!(summary.expect("a summary")["reason"], "truncated");

    let stranger = CheckpointSigner::from_seed("ops-1", [8; 32]);
    let forged = write("forged.json", head, &stranger);
    let (ok, summary, err) = verify(&forged, &key);
    assert!(
        !ok && summary.is_none(),
        "a forged checkpoint is refused: {err}"
    );
    assert!(err.contains("--checkpoint"), "{err}");

    // The chain altered under a checkpoint that matched it.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("records.create", "records.delete", 1)).unwrap();
    let (ok, summary, err) = verify(&matching, &key);
    assert!(!ok, "{err}");
    let summary = summary.expect("a summary");
    assert_eq!(summary["valid"], false, "{summary}");
    assert!(summary["first_bad_seq"].is_u64(), "{summary}");
}

/// `audit checkpoint` signs the verified head into a file (making its key on first use, both
/// readable by the owner only); a tail cut afterwards verifies without the checkpoint
/// (`anchored: false`) but not against it, and the next `audit checkpoint` refuses to sign
/// over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_checkpoint_makes_a_cut_tail_detectable() {
    let h = Harness::memory().await;
    let token = h.login("acme", "alice").await;
    h.create_records(&token, 3).await;
    let file = h.app().config().audit_file();
    let dir = h.stop().await;
    let (key_file, out) = (
        dir.path().join("ops.key"),
        dir.path().join("acme.checkpoint"),
    );
    let checkpoint = || {
        bin()
            .args(["audit", "checkpoint", "--tenant", "acme", "--file"])
            .arg(&file)
            .arg("--key-file")
            .arg(&key_file)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let made = checkpoint();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let signed_seq = made["seq"].as_u64().unwrap();
    assert!(signed_seq >= 4, "a login and three records: {made}");
    #[cfg(unix)]
    for f in [&key_file, &out] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    // A second run on the unchanged chain verifies against the first and signs again.
    assert!(checkpoint().status.success());

    let verify = |with_checkpoint: bool| {
        let mut cmd = bin();
        cmd.args(["audit", "verify", "--tenant", "acme", "--file"])
            .arg(&file);
        if with_checkpoint {
            cmd.arg("--checkpoint")
                .arg(&out)
                .args(["--checkpoint-key", &key]);
        }
        let o = cmd.output().unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.success(), summary)
    };
    let (ok, summary) = verify(true);
    assert!(ok && summary["anchored"] == true, "{summary}");

    // Cut the last event off the file.
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    std::fs::write(&file, kept[..kept.len() - 1].join("\n") + "\n").unwrap();
    let (ok, summary) = verify(false);
    assert!(ok, "without a checkpoint the cut goes unseen: {summary}");
    assert_eq!(summary["anchored"], false, "{summary}");
    let (ok, summary) = verify(true);
    assert!(!ok, "against the checkpoint the cut is found: {summary}");
    assert_eq!(summary["valid"], false, "{summary}");
    let before = std::fs::read_to_string(&out).unwrap();
    let refused = checkpoint();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        before,
        "checkpoint kept"
    );
    drop(dir);
}
