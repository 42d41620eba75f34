//! Route rules: which routes are public, which are exempt from rate limits, and which are
//! audited under which action.
//!
//! Patterns use the syntax axum and actix-web share: literal segments, `{name}` for one
//! segment, and a final `{*name}` for the rest of the path (zero or more segments). The first
//! rule whose method and pattern match a request applies. Matching runs on the request path
//! itself, so both adapters (and plain hyper or tonic services) classify a request the same
//! way without asking the framework's router.
//!
//! A path segment matches a literal when its percent-decoded text equals it, and parameters
//! are captured decoded, as handlers receive them: actix-web routes `/v1/r%65cords/42` to the
//! handler of `/v1/records/{id}`, so its rule (audit, limits) must apply to it too, and the
//! audit record names record `42` whether it was sent as `42` or `%34%32`. A rule for `GET`
//! also applies to `HEAD`, which axum answers with the `GET` handler.
//!
//! ```
//! use tenancy_http::{RouteRule, RouteTable};
//!
//! let table = RouteTable::new(vec![
//!     RouteRule::new("/health")?.public(),
//!     RouteRule::new("/v1/admin/{*rest}")?.exempt(),
//!     RouteRule::new("/v1/records/{id}")?.method("GET").audit("records.read")?.resource("record", "id"),
//! ]);
//! let m = table.find("GET", "/v1/records/42").unwrap();
//! assert_eq!(m.template(), "/v1/records/{id}");
//! assert_eq!(m.param("id"), Some("42"));
//! assert!(table.find("GET", "/v1/admin/tenants/acme").unwrap().rule().is_exempt());
//! assert!(table.find("DELETE", "/v1/records/42").is_none());
//! // Encoded and HEAD requests reach the same handler, so the same rule applies.
//! let m = table.find("HEAD", "/v1/r%65cords/%34%32").unwrap();
//! assert_eq!((m.template(), m.param("id")), ("/v1/records/{id}", Some("42")));
//! # Ok::<(), tenancy_http::Error>(())
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use crate::{Error, Result};

/// Longest path parameter kept for an audit record, in bytes.
const PARAM_MAX_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// How a route is audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSpec {
    /// The action recorded (`records.read`).
    pub action: String,
    /// The resource type recorded, when the route names one.
    pub resource_kind: Option<String>,
    /// The path parameter holding the resource id.
    pub resource_param: Option<String>,
    /// Whether the response waits until the event is stored.
    pub sync: bool,
}

/// One route rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Shared: every request on the route hands it to the metrics facade as a label.
    template: Arc<str>,
    segments: Vec<Segment>,
    method: Option<String>,
    public: bool,
    exempt: bool,
    audits_own_denials: bool,
    audit: Option<AuditSpec>,
}

fn check_action(action: &str) -> Result<()> {
    let ok = !action.is_empty()
        && action.len() <= 64
        && action.as_bytes()[0].is_ascii_lowercase()
        && action.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(tenancy_core::ParseError::new(
            "audit action",
            "must be 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter",
        )
        .into())
    }
}

impl RouteRule {
    /// A rule for every method on `pattern`: authenticated, limited, not audited.
    pub fn new(pattern: &str) -> Result<Self> {
        let err = |reason| Error::InvalidRoute {
            pattern: pattern.to_owned(),
            reason,
        };
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| err("must start with '/'"))?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let seg = if let Some(name) =
                    part.strip_prefix("{*").and_then(|p| p.strip_suffix('}'))
                {
                    if i + 1 != parts.len() {
                        return Err(err("`{*name}` must be the last segment"));
                    }
                    Segment::Rest(check_param(name).ok_or_else(|| err("bad parameter name"))?)
                } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
                {
                    Segment::Param(check_param(name).ok_or_else(|| err("bad parameter name"))?)
                } else if part.contains(['{', '}']) {
                    return Err(err("braces only around a whole segment"));
                } else if part.is_empty() && i + 1 != parts.len() {
                    return Err(err("empty segment"));
                } else {
                    Segment::Literal((*part).to_owned())
                };
                segments.push(seg);
            }
        }
        Ok(Self {
            template: Arc::from(pattern),
            segments,
            method: None,
            public: false,
            exempt: false,
            audits_own_denials: false,
            audit: None,
        })
    }

    /// Applies only to this method (`GET`, `POST`, ...; compared case-sensitively, as HTTP
    /// methods are). A rule for `GET` also applies to `HEAD` (the same handler answers it).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }

    /// No authentication, tenant or tenant limit: the route serves anyone (health, metrics,
    /// login). An anonymous per-address limit still applies when one is configured.
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Authenticated, but not rate limited (admin routes).
    pub fn exempt(mut self) -> Self {
        self.exempt = true;
        self
    }

    /// The handler records its own 401 and 403 answers (a login that audits every attempt in
    /// the tenant's trail): the layer adds no generic `http.denied` record for them. Denials
    /// the layer itself gives (authentication, tenant, limits) are still recorded.
    pub fn handler_audits_denials(mut self) -> Self {
        self.audits_own_denials = true;
        self
    }

    /// Audits every response of this route under `action` (`area.verb`).
    pub fn audit(mut self, action: &str) -> Result<Self> {
        check_action(action)?;
        self.audit = Some(AuditSpec {
            action: action.to_owned(),
            resource_kind: None,
            resource_param: None,
            sync: false,
        });
        Ok(self)
    }

    /// Names the audited resource: its type, and the path parameter that holds its id.
    /// Has no effect unless the route is audited.
    pub fn resource(mut self, kind: &str, param: &str) -> Self {
        if let Some(a) = &mut self.audit {
            a.resource_kind = Some(kind.to_owned());
            a.resource_param = Some(param.to_owned());
        }
        self
    }

    /// The response waits until the audit event is stored; when it cannot be stored the
    /// client gets a 503 instead of the handler's answer. Has no effect unless audited.
    pub fn audit_sync(mut self) -> Self {
        if let Some(a) = &mut self.audit {
            a.sync = true;
        }
        self
    }

    /// The pattern as configured: the route template used in metrics and audit records.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Whether the route is public.
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// Whether the route is exempt from rate limits.
    pub fn is_exempt(&self) -> bool {
        self.exempt
    }

    /// Whether the handler records its own denials ([`RouteRule::handler_audits_denials`]).
    pub fn audits_own_denials(&self) -> bool {
        self.audits_own_denials
    }

    /// How the route is audited, if it is.
    pub fn audit_spec(&self) -> Option<&AuditSpec> {
        self.audit.as_ref()
    }

    fn matches(&self, method: &str, path: &str) -> Option<Vec<(String, String)>> {
        if self
            .method
            .as_deref()
            .is_some_and(|m| m != method && !(m == "GET" && method == "HEAD"))
        {
            return None;
        }
        let rest = path.strip_prefix('/')?;
        // The path's segments are walked, not collected: every rule before the one that
        // matches is tried on every request.
        let mut parts = (!rest.is_empty())
            .then(|| rest.split('/'))
            .into_iter()
            .flatten();
        // Where the first segment not yet walked starts in `rest`.
        let mut walked = 0;
        let mut params = Vec::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => {
                    let part = parts.next().filter(|p| decode_segment(p) == l.as_str())?;
                    walked += part.len() + 1;
                }
                Segment::Param(name) => {
                    let v = parts.next().filter(|v| !v.is_empty())?;
                    params.push((name.clone(), bounded(&decode_segment(v))));
                    walked += v.len() + 1;
                }
                Segment::Rest(name) => {
                    let v = rest.get(walked.min(rest.len())..).unwrap_or_default();
                    params.push((name.clone(), bounded(&decode_segment(v))));
                    return Some(params);
                }
            }
        }
        parts.next().is_none().then_some(params)
    }
}

fn check_param(name: &str) -> Option<String> {
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| name.to_owned())
}

/// A path segment percent-decoded, as axum and actix-web decode path parameters for
/// handlers: each valid escape decoded, a malformed one (`%zz`, a `%` at the end) kept as it
/// is; bytes that are not UTF-8
/// once decoded become U+FFFD, as actix-web hands them to handlers (the reference server's
/// axum routes decode them alike, so that both frameworks' handlers, and the audit record,
/// see the same text).
///
/// ```
/// use tenancy_http::routes::decode_segment;
///
/// assert_eq!(decode_segment("caf%C3%A9"), "café");
/// assert_eq!(decode_segment("%zz"), "%zz");
/// assert_eq!(decode_segment("%41%zz%42%"), "A%zzB%");
/// assert_eq!(decode_segment("%FF%FE"), "\u{FFFD}\u{FFFD}");
/// ```
pub fn decode_segment(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            match escaped(bytes, i) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(text) => Cow::Owned(text),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// The byte that the escape `%XX` starting at `bytes[i]` stands for.
fn escaped(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let hex = bytes.get(i + 1..i + 3)?;
    // Two hex digits: `from_str_radix` alone would also take a sign (`%+A`).
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// A path with its escapes of unreserved characters (letters, digits, `-._~`) decoded, which
/// RFC 3986 (§6.2.2.2) makes the same path; every other escape stays as sent. actix-web
/// decodes before it matches routes and axum does not: an axum server that normalises with
/// this before routing routes `/v1/r%65cords` as `/v1/records`, as actix-web does.
///
/// ```
/// use tenancy_http::routes::decode_unreserved;
///
/// assert_eq!(decode_unreserved("/v1/r%65cords"), "/v1/records");
/// assert_eq!(decode_unreserved("/a%2Fb%20c"), "/a%2Fb%20c");
/// assert_eq!(decode_unreserved("/x%zz"), "/x%zz");
/// assert_eq!(decode_unreserved("/v1/records/é%41"), "/v1/records/éA");
/// ```
pub fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    // Bytes, not chars: hyper and `http` accept raw UTF-8 in a path, and its bytes are
    // copied unchanged (a byte taken for a char would turn `é` into `Ã©`).
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match escaped(bytes, i).filter(|v| v.is_ascii_alphanumeric() || b"-._~".contains(v)) {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only escapes of ASCII characters were replaced, by those characters, in a `&str`: the
    // bytes are UTF-8. Were they not, the path is kept as sent rather than mangled.
    match String::from_utf8(out) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(_) => Cow::Borrowed(path),
    }
}

fn bounded(v: &str) -> String {
    if v.len() <= PARAM_MAX_LEN {
        return v.to_owned();
    }
    let mut end = PARAM_MAX_LEN;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_owned()
}

/// A rule that matched a request, with the path parameters it captured.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    rule: Arc<RouteRule>,
    params: Vec<(String, String)>,
}

impl RouteMatch {
    /// The rule.
    pub fn rule(&self) -> &RouteRule {
        &self.rule
    }

    /// The route template.
    pub fn template(&self) -> &str {
        &self.rule.template
    }

    /// The route template, shared.
    pub(crate) fn shared_template(&self) -> &Arc<str> {
        &self.rule.template
    }

    /// A captured path parameter, percent-decoded as handlers receive it (at most 128 bytes).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Route rules in order; the first match applies.
#[derive(Debug, Clone, Default)]
pub struct RouteTable(Vec<Arc<RouteRule>>);

impl RouteTable {
    /// A table of `rules`, tried in order.
    pub fn new(rules: Vec<RouteRule>) -> Self {
        Self(rules.into_iter().map(Arc::new).collect())
    }

    /// Appends a rule.
    pub fn push(&mut self, rule: RouteRule) {
        self.0.push(Arc::new(rule));
    }

    /// The first rule matching `method` and `path`.
    pub fn find(&self, method: &str, path: &str) -> Option<RouteMatch> {
        self.0.iter().find_map(|r| {
            r.matches(method, path).map(|params| RouteMatch {
                rule: Arc::clone(r),
                params,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_validated() {
        for bad in [
            "",
            "v1",
            "/a/{*rest}/b",
            "/a{b}",
            "/a/{}",
            "/a//b",
            "/{a-b}",
        ] {
            assert!(RouteRule::new(bad).is_err(), "{bad}");
        }
        assert!(RouteRule::new("/").is_ok());
        assert!(RouteRule::new("/a/").is_ok());
        assert!(RouteRule::new("/x").unwrap().audit("Bad Action").is_err());
    }

    #[test]
    fn matching() {
        let t = RouteTable::new(vec![
            RouteRule::new("/").unwrap(),
            RouteRule::new("/v1/records/{id}").unwrap().method("GET"),
            RouteRule::new("/v1/admin/{*rest}").unwrap(),
        ]);
        assert_eq!(t.find("GET", "/").unwrap().template(), "/");
        assert!(t.find("GET", "/v1/records/").is_none());
        assert!(t.find("GET", "/v1/records/1/x").is_none());
        assert!(t.find("POST", "/v1/records/1").is_none());
        assert_eq!(t.find("GET", "/v1/admin").unwrap().param("rest"), Some(""));
        assert_eq!(
            t.find("PUT", "/v1/admin/tenants/acme")
                .unwrap()
                .param("rest"),
            Some("tenants/acme")
        );
        assert!(t.find("GET", "/v1/adminx").is_none());
        assert!(t.find("GET", "no-slash").is_none());
        let long = format!("/v1/records/{}", "é".repeat(100));
        let m = t.find("GET", &long).unwrap();
        assert!(m.param("id").unwrap().len() <= PARAM_MAX_LEN);
    }

    #[test]
    fn encoded_segments_and_head_match_as_their_handler_is_reached() {
        let t = RouteTable::new(vec![
            RouteRule::new("/v1/records/{id}").unwrap().method("GET"),
            RouteRule::new("/v1/records").unwrap().method("POST"),
            RouteRule::new("/files/{*rest}").unwrap(),
        ]);
        let m = t.find("GET", "/v1/r%65cords/%34%32").unwrap();
        assert_eq!(
            (m.template(), m.param("id")),
            ("/v1/records/{id}", Some("42"))
        );
        assert_eq!(
            t.find("GET", "/v1/RECORDS/42")
                .map(|m| m.template().to_owned()),
            None
        );
        assert_eq!(
            t.find("GET", "/v1/records/caf%C3%A9").unwrap().param("id"),
            Some("café")
        );
        // A slash inside a segment stays inside it: no literal has one.
        assert!(t.find("GET", "/v1%2Frecords/1").is_none());
        assert!(t.find("GET", "/v1/records%2F1").is_none());
        // Malformed escapes are kept as sent; bytes that are not UTF-8 become U+FFFD, as
        // actix-web hands them to handlers.
        for (raw, param) in [
            ("%zz", "%zz"),
            ("%4", "%4"),
            ("a%", "a%"),
            ("%ff%fe", "\u{FFFD}\u{FFFD}"),
            ("a%ffb", "a\u{FFFD}b"),
        ] {
            let path = format!("/v1/records/{raw}");
            assert_eq!(
                t.find("GET", &path).unwrap().param("id"),
                Some(param),
                "{raw}"
            );
        }
        assert!(t.find("GET", "/v1/rec%zzords/1").is_none());
        assert_eq!(
            t.find("PUT", "/files/a%2Fb/c%20d").unwrap().param("rest"),
            Some("a/b/c d")
        );
        // HEAD is answered by the GET handler; nothing else is.
        assert_eq!(
            t.find("HEAD", "/v1/records/7").unwrap().template(),
            "/v1/records/{id}"
        );
        assert!(t.find("HEAD", "/v1/records").is_none());
        assert!(t.find("head", "/v1/records/7").is_none());
        assert!(t.find("POST", "/v1/records/7").is_none());
    }

    #[test]
    fn raw_utf8_in_a_path_keeps_its_bytes() {
        // hyper and `http` accept raw UTF-8 in a path; actix-web hands `éA` to handlers.
        assert_eq!(decode_unreserved("/v1/records/é%41"), "/v1/records/éA");
        assert_eq!(decode_unreserved("/v1/r%65cords/日本"), "/v1/records/日本");
        assert_eq!(
            decode_unreserved("/é%2F%C3%A9%zz"),
            "/é%2F%C3%A9%zz",
            "escapes of reserved and non-ASCII bytes stay as sent"
        );
        assert_eq!(decode_segment("é%41"), "éA");
        assert_eq!(decode_segment("é%C3%A9"), "éé");
        let t = RouteTable::new(vec![RouteRule::new("/v1/records/{id}").unwrap()]);
        let path = decode_unreserved("/v1/r%65cords/é%41");
        assert_eq!(t.find("GET", &path).unwrap().param("id"), Some("éA"));
    }

    #[test]
    fn an_escape_is_two_hex_digits() {
        // `u8::from_str_radix` takes a leading `+`: `%+A` is not the escape of a newline.
        for raw in ["%+A", "%+0", "%-1", "a%+fb"] {
            assert_eq!(decode_segment(raw), raw);
            assert_eq!(decode_unreserved(raw), raw);
        }
        assert_eq!(decode_segment("%0a%0A"), "\n\n");
    }

    /// Matching as it was first written (the path's segments collected, then compared), kept
    /// as the reference the walking matcher is held to.
    fn collecting(rule: &RouteRule, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let mut parts = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect::<Vec<_>>()
        };
        let mut params = Vec::new();
        let mut i = 0;
        for seg in &rule.segments {
            match seg {
                Segment::Literal(l) => {
                    if parts.get(i)? != l {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let v = parts.get(i).filter(|v| !v.is_empty())?;
                    params.push((name.clone(), bounded(v)));
                }
                Segment::Rest(name) => {
                    let v = parts.split_off(i.min(parts.len())).join("/");
                    params.push((name.clone(), bounded(&v)));
                    return Some(params);
                }
            }
            i += 1;
        }
        (i == parts.len()).then_some(params)
    }

    #[test]
    fn walking_matches_as_collecting_did() {
        let rules: Vec<RouteRule> = [
            "/",
            "/a",
            "/a/",
            "/a/b",
            "/a/{x}",
            "/a/{x}/b",
            "/{x}/{y}",
            "/a/{*rest}",
            "/{x}/{*rest}",
            "/a/b/{*rest}",
        ]
        .iter()
        .map(|p| RouteRule::new(p).unwrap())
        .collect();
        // Every path of up to four segments over a small alphabet, with and without a
        // trailing slash, plus paths without a leading one.
        let words = ["", "a", "b", "x"];
        let mut paths = vec![String::new(), "a".to_owned(), "a/b".to_owned()];
        for n in 0..=4u32 {
            for mut k in 0..words.len().pow(n) {
                let mut p = String::new();
                for _ in 0..n {
                    p.push('/');
                    p.push_str(words[k % words.len()]);
                    k /= words.len();
                }
                paths.push(if p.is_empty() { "/".to_owned() } else { p });
            }
        }
        let mut matched = 0;
        for rule in &rules {
            for path in &paths {
                let got = rule.matches("GET", path);
                matched += usize::from(got.is_some());
                assert_eq!(
                    got,
                    collecting(rule, path),
                    "{} on {path:?}",
                    rule.template()
                );
            }
        }
        assert!(matched > 100, "{matched}");
    }
}
