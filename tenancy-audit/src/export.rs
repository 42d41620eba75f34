//! Exports of stored records: JSON lines and CloudEvents 1.0 (structured JSON).
//!
//! Exports are built from the stored bytes, which are already redacted: an export never
//! contains more than the store does.
//!
//! - JSON lines: one object per record with `tenant`, `seq`, `event_id`, `occurred_at`,
//!   `prev_hash`, `hash` and `payload`, the stored bytes embedded verbatim as JSON, so that a
//!   reader can recompute each hash from the line alone.
//! - CloudEvents: `specversion` `1.0`, `id` the event id, `source` as given, `type`
//!   `tenancy.audit.<action>`, `time`, `subject` (`<kind>/<id>` of the resource),
//!   `datacontenttype` `application/json`, `data` the event, and the extension attributes
//!   `tenantid`, `auditseq` and `audithash`.
//!
//! ```
//! use tenancy_audit::{codec::Codec, export, store::{AuditStore, MemoryAuditStore}};
//! use tenancy_core::{AuditEvent, Outcome, TenantId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tenancy_audit::Error> {
//! let store = MemoryAuditStore::new();
//! let acme = TenantId::parse("acme")?;
//! let e = AuditEvent::new(acme.clone(), "records.read", Outcome::Success).with_resource("record", "7");
//! store.append(&[Codec::default().encode(&e)?]).await?;
//! let mut out = Vec::new();
//! export::export(&store, &acme, export::Format::CloudEvents { source: "/tenancy/audit" }, &mut out).await?;
//! let ce: serde_json::Value = serde_json::from_slice(&out).unwrap();
//! assert_eq!(ce["type"], "tenancy.audit.records.read");
//! assert_eq!(ce["subject"], "record/7");
//! # Ok(()) }
//! ```

use std::io::Write;

use serde_json::{Value, json};
use tenancy_core::TenantId;
use time::format_description::well_known::Rfc3339;

use crate::chain::StoredRecord;
use crate::codec::decode;
use crate::store::{AuditStore, ScanCursor};
use crate::verify::PAGE;
use crate::{Error, Result};

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format<'a> {
    /// One record per line, the stored bytes verbatim.
    JsonLines,
    /// One CloudEvents 1.0 JSON object per line, with this `source` (a URI reference).
    CloudEvents {
        /// The CloudEvents `source`.
        source: &'a str,
    },
}

fn time_text(t: time::OffsetDateTime) -> Result<String> {
    t.format(&Rfc3339)
        .map_err(|e| Error::malformed("record time", e))
}

/// One record as a JSON line (with its newline).
///
/// # Errors
/// [`Error::Malformed`] when the stored bytes are not JSON.
pub fn json_line(r: &StoredRecord) -> Result<Vec<u8>> {
    // Check that the payload is JSON, so the line is too; embed it byte for byte.
    serde_json::from_slice::<Value>(&r.payload)
        .map_err(|e| Error::malformed("event payload", e))?;
    let head = json!({
        "tenant": r.tenant.as_str(),
        "seq": r.seq,
        "event_id": r.event_id.to_string(),
        "occurred_at": time_text(r.occurred_at)?,
        "prev_hash": r.prev_hash.to_string(),
        "hash": r.hash.to_string(),
    });
    let mut out = serde_json::to_vec(&head).map_err(Error::Encode)?;
    // Replace the closing brace with the payload field.
    out.pop();
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(&r.payload);
    out.extend_from_slice(b"}\n");
    Ok(out)
}

/// One record as a CloudEvents 1.0 JSON object.
///
/// # Errors
/// [`Error::Malformed`] when the stored bytes do not decode.
pub fn cloud_event(r: &StoredRecord, source: &str) -> Result<Value> {
    let event = decode(&r.payload)?;
    let data = serde_json::to_value(&event).map_err(Error::Encode)?;
    let mut ce = json!({
        "specversion": "1.0",
        "id": event.event_id.to_string(),
        "source": source,
        "type": format!("tenancy.audit.{}", event.action),
        "time": time_text(event.occurred_at)?,
        "datacontenttype": "application/json",
        "tenantid": r.tenant.as_str(),
        "auditseq": r.seq,
        "audithash": r.hash.to_string(),
        "data": data,
    });
    if let Some(res) = &event.resource {
        let subject = match &res.id {
            Some(id) => format!("{}/{id}", res.kind),
            None => res.kind.clone(),
        };
        ce["subject"] = Value::String(subject);
    }
    Ok(ce)
}

/// Writes `tenant`'s whole chain to `out` in `format`; returns the number of records.
///
/// # Errors
/// Store errors, [`Error::Io`] when writing fails, [`Error::Malformed`] for undecodable records.
pub async fn export<S: AuditStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    format: Format<'_>,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let mut cursor = ScanCursor::START;
    let mut n = 0;
    loop {
        let page = store.scan(tenant, cursor, PAGE).await?;
        for r in &page.records {
            let mut line = match format {
                Format::JsonLines => json_line(r)?,
                Format::CloudEvents { source } => {
                    serde_json::to_vec(&cloud_event(r, source)?).map_err(Error::Encode)?
                }
            };
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            out.write_all(&line)
                .map_err(|e| Error::io("write export", e))?;
            n += 1;
        }
        match page.next {
            Some(c) => cursor = c,
            None => return Ok(n),
        }
    }
}
