//! The stored form of a link's aggregates (the `stats` keyspace): MessagePack, versioned, and
//! checked when read.

use serde::{Deserialize, Serialize};

use super::Aggregates;

/// The stored form of a link's aggregates.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    v: u8,
    aggregates: Aggregates,
}

const SNAPSHOT_VERSION: u8 = 1;

/// Encodes aggregates for the `stats` keyspace (MessagePack, fields by position).
pub fn encode_snapshot(aggregates: &Aggregates) -> Option<Vec<u8>> {
    #[derive(Serialize)]
    struct Ref<'a> {
        v: u8,
        aggregates: &'a Aggregates,
    }
    rmp_serde::to_vec(&Ref {
        v: SNAPSHOT_VERSION,
        aggregates,
    })
    .ok()
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Aggregates, String> {
    let record: SnapshotRecord = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    if record.v != SNAPSHOT_VERSION {
        return Err(format!("unknown aggregates version {}", record.v));
    }
    record.aggregates.check()?;
    Ok(record.aggregates)
}
