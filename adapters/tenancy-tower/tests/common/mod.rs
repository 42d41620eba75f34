//! What the tower tests share.

use tenancy_http::RouteRule;

/// `/items/{id}`, audited as `items.read` with the item id from the path.
pub(crate) fn items_rule() -> RouteRule {
    RouteRule::new("/items/{id}")
        .unwrap()
        .audit("items.read")
        .unwrap()
        .resource("item", "id")
}
