use std::time::Duration;

use super::{Fixture, TimeControl};
use crate::{Denylist, ErrorKind, MAX_JTI_BYTES};

macro_rules! ok {
    ($e:expr, $case:literal) => {
        $e.await
            .unwrap_or_else(|e| panic!(concat!($case, ": {}"), e))
    };
}

/// The [`Denylist`] conformance suite.
///
/// `now` is the backend's current time in seconds since the Unix epoch (its clock's, or the
/// system's); expiry cases move time with `time` ([`TimeControl::Manual`] with the clock the
/// backend was built on, or [`TimeControl::Real`], which waits about three seconds).
pub async fn denylist<D: Denylist + ?Sized>(
    list: &D,
    now: impl Fn() -> i64,
    time: TimeControl,
    fx: &Fixture,
) {
    let (a, b) = (fx.tenant("deny-a"), fx.tenant("deny-b"));
    let t0 = now();

    // Nothing is revoked until it is.
    assert!(
        !ok!(list.is_revoked(&a, "j1"), "fresh"),
        "fresh: a jti nobody revoked is revoked"
    );
    ok!(list.revoke(&a, "j1", t0 + 3600), "revoke");
    assert!(
        ok!(list.is_revoked(&a, "j1"), "revoked"),
        "revoked: not seen"
    );
    assert!(
        !ok!(list.is_revoked(&a, "j2"), "other jti"),
        "other jti: revoking j1 revoked j2"
    );
    // Revoking twice is harmless.
    ok!(list.revoke(&a, "j1", t0 + 3600), "revoke again");
    assert!(ok!(list.is_revoked(&a, "j1"), "revoked twice"));

    // Isolation: the same jti in another tenant is another token.
    assert!(
        !ok!(list.is_revoked(&b, "j1"), "isolation"),
        "isolation: A's revocation reached B"
    );

    // A moment already past revokes nothing.
    ok!(list.revoke(&a, "past", t0 - 1), "revoke past");
    assert!(
        !ok!(list.is_revoked(&a, "past"), "past"),
        "past: an entry already expired is held"
    );

    // Hostile jtis are opaque: separators and wildcards of any backend's syntax do not make
    // two jtis (or two tenants) meet.
    let hostile = [
        "x:y",
        "x",
        "*",
        "x*",
        "{x}",
        "%",
        "_",
        "x'; DROP TABLE t; --",
        "",
        " ",
        "line\nbreak",
        "nul\0byte",
        "ünïcödé ☃",
    ];
    ok!(list.revoke(&a, "x:y", t0 + 3600), "hostile revoke");
    ok!(list.revoke(&a, "x*", t0 + 3600), "hostile revoke");
    ok!(list.revoke(&a, "{x}", t0 + 3600), "hostile revoke");
    for jti in hostile {
        let expected = matches!(jti, "x:y" | "x*" | "{x}");
        assert_eq!(
            ok!(list.is_revoked(&a, jti), "hostile is_revoked"),
            expected,
            "hostile: {jti:?}"
        );
        assert!(
            !ok!(list.is_revoked(&b, jti), "hostile isolation"),
            "hostile isolation: {jti:?}"
        );
    }
    // A jti that spells another tenant's entry reaches neither that entry nor its own.
    ok!(list.revoke(&b, "x", t0 + 3600), "revoke in b");
    let b_like = format!("{}:x", b.as_str());
    assert!(!ok!(
        list.is_revoked(&a, &b_like),
        "hostile tenant-like jti"
    ));
    assert!(!ok!(list.is_revoked(&a, "x"), "b's jti in a"));
    assert!(ok!(list.is_revoked(&b, "x"), "b's own jti"));

    // The longest jti is stored; a longer one is refused, not cut.
    let longest = "j".repeat(MAX_JTI_BYTES);
    ok!(list.revoke(&a, &longest, t0 + 3600), "longest jti");
    assert!(ok!(list.is_revoked(&a, &longest), "longest jti is_revoked"));
    let too_long = "j".repeat(MAX_JTI_BYTES + 1);
    let err = list
        .revoke(&a, &too_long, t0 + 3600)
        .await
        .expect_err("too long: a jti over the limit was accepted");
    assert_eq!(err.kind(), ErrorKind::Invalid, "too long: {err}");
    assert!(!ok!(list.is_revoked(&a, &too_long), "too long is_revoked"));
    // So are an empty jti (every such token would share one entry) and one holding a control
    // character (it would reach the logs that name a revoked token).
    for bad in ["", "line\nbreak", "nul\0byte"] {
        let err = list
            .revoke(&a, bad, t0 + 3600)
            .await
            .expect_err("a jti check_jti refuses was accepted");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{bad:?}: {err}");
        assert!(!ok!(list.is_revoked(&a, bad), "refused jti is_revoked"));
    }

    // Expiry: an entry ends at its `expires_at`; a later revocation extends it, an earlier
    // one does not shorten it.
    ok!(list.revoke(&a, "short", t0 + 2), "revoke short");
    ok!(list.revoke(&a, "extended", t0 + 2), "revoke extended");
    ok!(list.revoke(&a, "extended", t0 + 3600), "extend");
    ok!(list.revoke(&a, "kept", t0 + 3600), "revoke kept");
    ok!(list.revoke(&a, "kept", t0 + 2), "shorten");
    assert!(ok!(list.is_revoked(&a, "short"), "short before expiry"));
    time.advance(Duration::from_secs(3)).await;
    assert!(
        !ok!(list.is_revoked(&a, "short"), "short after expiry"),
        "expiry: an entry outlived its expires_at"
    );
    assert!(
        ok!(list.is_revoked(&a, "extended"), "extended"),
        "extend: a later expires_at did not extend the entry"
    );
    assert!(
        ok!(list.is_revoked(&a, "kept"), "kept"),
        "shorten: an earlier expires_at shortened the entry"
    );
    assert!(ok!(list.is_revoked(&a, "j1"), "j1 still revoked"));
}
