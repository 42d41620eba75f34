use super::Fixture;
use crate::{
    Error, QuotaOverrides, TenantDirectory, TenantId, TenantSettings, TenantStatus, TierName,
    Upsert, update_settings,
};

/// `get`, with `try_get` held to the same answer whenever it gives one.
async fn get<D: TenantDirectory + ?Sized>(dir: &D, tenant: &TenantId) -> Option<TenantSettings> {
    let now = dir
        .try_get(tenant)
        .map(|r| r.unwrap_or_else(|e| panic!("try_get: {e}")));
    let got = dir.get(tenant).await.unwrap_or_else(|e| panic!("get: {e}"));
    if let Some(now) = now {
        assert_eq!(now, got, "try_get disagrees with get");
    }
    got
}

/// The [`TenantDirectory`] conformance suite. The directory should hold no tenant with this
/// fixture's prefix; tenants of other runs may be present.
pub async fn tenant_directory<D: TenantDirectory + ?Sized>(dir: &D, fx: &Fixture) {
    let (a, b) = (fx.tenant("dir-a"), fx.tenant("dir-b"));
    let standard = TierName::parse("standard").unwrap_or_else(|e| panic!("{e}"));
    let premium = TierName::parse("premium").unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(get(dir, &a).await, None, "unknown tenant");
    let s = TenantSettings::new(standard.clone());
    assert_eq!(
        dir.put(&a, s.clone())
            .await
            .unwrap_or_else(|e| panic!("put: {e}")),
        Upsert::Created
    );
    assert_eq!(get(dir, &a).await, Some(s.clone()));
    assert_eq!(
        get(dir, &b).await,
        None,
        "isolation: B exists because A does"
    );

    // Every field round trips, and changes are visible on the next call.
    let changed = TenantSettings {
        status: TenantStatus::Suspended,
        tier: premium,
        overrides: QuotaOverrides {
            tenant_per_hour: Some(7),
            tenant_burst: Some(3),
            user_per_hour: Some(2),
            user_burst: Some(1),
        },
        bypass_until: Some(
            time::OffsetDateTime::from_unix_timestamp(1_900_000_000)
                .unwrap_or_else(|e| panic!("{e}")),
        ),
    };
    assert_eq!(
        dir.put(&a, changed.clone())
            .await
            .unwrap_or_else(|e| panic!("put: {e}")),
        Upsert::Updated
    );
    assert_eq!(
        get(dir, &a).await,
        Some(changed.clone()),
        "change not visible"
    );
    // Times are kept to the microsecond, in every backend; `update_settings` returns what
    // is kept.
    let at = |nanos: i128| {
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or_else(|e| panic!("{e}"))
    };
    let fine = TenantSettings {
        bypass_until: Some(at(1_900_000_000_123_456_789)),
        ..changed.clone()
    };
    let kept = TenantSettings {
        bypass_until: Some(at(1_900_000_000_123_456_000)),
        ..changed.clone()
    };
    dir.put(&a, fine.clone())
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));
    assert_eq!(
        get(dir, &a).await,
        Some(kept.clone()),
        "sub-microsecond time"
    );
    let (_, written) = update_settings(dir, &a, |_| Ok::<_, Error>(fine.clone()))
        .await
        .unwrap_or_else(|e| panic!("update_settings: {e}"));
    assert_eq!(
        written, kept,
        "update_settings returned other than what is kept"
    );
    assert_eq!(get(dir, &a).await, Some(kept));
    dir.put(&a, changed.clone())
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));

    dir.put(&b, s.clone())
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));
    assert_eq!(
        get(dir, &a).await,
        Some(changed.clone()),
        "isolation: B's put changed A"
    );
    let listed: Vec<_> = dir
        .list()
        .await
        .unwrap_or_else(|e| panic!("list: {e}"))
        .into_iter()
        .filter(|(t, _)| t.as_str().starts_with(fx.prefix()))
        .collect();
    assert_eq!(
        listed,
        vec![(a.clone(), changed), (b.clone(), s)],
        "list, ordered by tenant id"
    );

    assert!(
        dir.remove(&a)
            .await
            .unwrap_or_else(|e| panic!("remove: {e}"))
    );
    assert!(
        !dir.remove(&a)
            .await
            .unwrap_or_else(|e| panic!("remove: {e}"))
    );
    assert_eq!(get(dir, &a).await, None, "removed tenant still known");
    assert!(
        get(dir, &b).await.is_some(),
        "isolation: removing A removed B"
    );
    dir.remove(&b)
        .await
        .unwrap_or_else(|e| panic!("remove: {e}"));

    conditional_writes(dir, fx).await;
}

/// `put_if` writes only over what it expects, and `update_settings` loses no concurrent
/// change.
async fn conditional_writes<D: TenantDirectory + ?Sized>(dir: &D, fx: &Fixture) {
    let c = fx.tenant("dir-c");
    let standard = TierName::parse("standard").unwrap_or_else(|e| panic!("{e}"));
    let premium = TierName::parse("premium").unwrap_or_else(|e| panic!("{e}"));
    let s = TenantSettings::new(standard);
    let put_if = |expected: Option<TenantSettings>, new: TenantSettings| {
        let c = c.clone();
        async move {
            dir.put_if(&c, expected.as_ref(), new)
                .await
                .unwrap_or_else(|e| panic!("put_if: {e}"))
        }
    };

    assert_eq!(
        put_if(Some(s.clone()), s.clone()).await,
        None,
        "a write expecting settings of a tenant that does not exist"
    );
    assert_eq!(
        get(dir, &c).await,
        None,
        "a refused put_if created the tenant"
    );
    assert_eq!(put_if(None, s.clone()).await, Some(Upsert::Created));
    let mut other = TenantSettings::new(premium);
    other.status = TenantStatus::Suspended;
    assert_eq!(
        put_if(None, other.clone()).await,
        None,
        "a create over an existing tenant"
    );
    assert_eq!(
        put_if(Some(other.clone()), other.clone()).await,
        None,
        "a write expecting settings the tenant does not have"
    );
    assert_eq!(
        get(dir, &c).await,
        Some(s.clone()),
        "a refused put_if wrote"
    );
    assert_eq!(
        put_if(Some(s.clone()), other.clone()).await,
        Some(Upsert::Updated)
    );
    assert_eq!(get(dir, &c).await, Some(other.clone()));

    // Four concurrent read-change-writes, each adding one to the same override: none lost.
    let add_one = || {
        update_settings(dir, &c, |current| {
            let mut s = current.ok_or(Error::NotFound)?;
            s.overrides.tenant_per_hour = Some(s.overrides.tenant_per_hour.unwrap_or(0) + 1);
            Ok::<_, Error>(s)
        })
    };
    let (r1, r2, r3, r4) = tokio::join!(add_one(), add_one(), add_one(), add_one());
    for r in [r1, r2, r3, r4] {
        assert_eq!(
            r.unwrap_or_else(|e| panic!("update_settings: {e}")).0,
            Upsert::Updated
        );
    }
    let after = get(dir, &c).await.unwrap_or_else(|| panic!("tenant gone"));
    assert_eq!(
        after.overrides.tenant_per_hour,
        Some(4),
        "concurrent updates lost a change"
    );
    assert!(after.is_suspended(), "an update undid the suspension");

    // The change's own refusal is returned, with nothing written.
    let refused = update_settings(dir, &fx.tenant("dir-absent"), |current| {
        current.ok_or(Error::NotFound)
    })
    .await;
    assert!(matches!(refused, Err(Error::NotFound)), "{refused:?}");
    assert_eq!(get(dir, &fx.tenant("dir-absent")).await, None);

    dir.remove(&c)
        .await
        .unwrap_or_else(|e| panic!("remove: {e}"));
}
