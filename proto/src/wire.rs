//! Pre-encoded route updates for fan-out.
//!
//! A route update is the same for every node of a site except its nonce. Encoding it once per
//! site and appending each stream's nonce as one more field (protobuf messages concatenate:
//! the wire form of a message is the concatenation of its fields) turns a per-stream clone
//! and encode of a few hundred rows into a reference count and a few bytes.
//!
//! [`EncodedRouteUpdate::grpc_chunks`] goes one step further and hands out the gRPC message as
//! three chunks, so that the shared body is never copied into a per-stream buffer either: the
//! controller's `Watch` server writes them as they are.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::v1::{RouteUpdate, TableVersion};

/// The field number of `RouteUpdate.version`.
const VERSION_FIELD: u32 = 1;

/// The field number of `RouteUpdate.nonce`.
const NONCE_FIELD: u32 = 2;

/// The field number of `RouteUpdate.computed_unix_ms`.
const COMPUTED_FIELD: u32 = 4;

/// A `RouteUpdate` encoded without its nonce, plus the nonce of one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedRouteUpdate {
    /// The update's wire form, nonce left empty.
    pub body: Bytes,
    /// This stream's nonce.
    pub nonce: String,
}

impl EncodedRouteUpdate {
    /// Encodes `update` once (its nonce is cleared: each stream sets its own).
    pub fn encode_shared(update: &RouteUpdate) -> Bytes {
        let mut u = update.clone();
        u.nonce.clear();
        Bytes::from(u.encode_to_vec())
    }

    /// `body` (an update as [`EncodedRouteUpdate::encode_shared`] gave it) stamped with
    /// another table's `version` and time, without decoding or encoding its rows: the two
    /// fields are appended, and protobuf reads the last value of a field that occurs twice
    /// (a message field is merged: `TableVersion`'s epoch and version, both set, are both
    /// rewritten). At 500 sites, decoding and encoding again the updates a table did not
    /// change was most of a publication. `None` when `version` holds a zero, which a merge
    /// would not write over: the caller encodes the update whole instead.
    pub fn restamp(body: &[u8], version: TableVersion, computed_unix_ms: u64) -> Option<Bytes> {
        if version.epoch == 0 || version.version == 0 {
            return None;
        }
        let mut out = BytesMut::with_capacity(body.len() + 32);
        out.extend_from_slice(body);
        prost::encoding::message::encode(VERSION_FIELD, &version, &mut out);
        prost::encoding::uint64::encode(COMPUTED_FIELD, &computed_unix_ms, &mut out);
        Some(out.freeze())
    }

    /// The length of the whole message: body and nonce field.
    pub fn encoded_len(&self) -> usize {
        self.body.len()
            + if self.nonce.is_empty() {
                0
            } else {
                prost::encoding::string::encoded_len(NONCE_FIELD, &self.nonce)
            }
    }

    /// The message as one length-prefixed gRPC message (uncompressed), in three chunks: the
    /// 5-byte prefix, the shared body (not copied), this stream's nonce field.
    ///
    /// # Errors
    /// When the message is longer than a gRPC length prefix can say (4 GiB).
    pub fn grpc_chunks(&self) -> Result<[Bytes; 3], std::num::TryFromIntError> {
        let len = u32::try_from(self.encoded_len())?;
        let mut prefix = BytesMut::with_capacity(5);
        prefix.put_u8(0);
        prefix.put_u32(len);
        let mut nonce = BytesMut::with_capacity(self.encoded_len() - self.body.len());
        if !self.nonce.is_empty() {
            prost::encoding::string::encode(NONCE_FIELD, &self.nonce, &mut nonce);
        }
        Ok([prefix.freeze(), self.body.clone(), nonce.freeze()])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::v1::RouteRow;

    fn full() -> RouteUpdate {
        RouteUpdate {
            version: Some(TableVersion { epoch: 3, version: 9 }),
            nonce: "node-7-2".into(),
            site: "aws-use1".into(),
            rows: vec![RouteRow {
                dst: "gcp-euw3".into(),
                reason: "direct".into(),
                ..Default::default()
            }],
            known_sites: vec!["aws-use1".into(), "gcp-euw3".into()],
            max_relays: 2,
            ..Default::default()
        }
    }

    #[test]
    fn the_chunks_are_one_grpc_message_that_decodes_as_the_full_update() {
        let full = full();
        let e = EncodedRouteUpdate {
            body: EncodedRouteUpdate::encode_shared(&full),
            nonce: full.nonce.clone(),
        };
        let chunks = e.grpc_chunks().unwrap();
        // The body is shared, not copied.
        assert_eq!(chunks[1].as_ptr(), e.body.as_ptr());
        let wire: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(wire[0], 0, "uncompressed");
        let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - 5);
        assert_eq!(len, e.encoded_len());
        assert_eq!(RouteUpdate::decode(&wire[5..]).unwrap(), full);
    }

    #[test]
    fn a_restamped_body_decodes_as_the_update_with_the_new_version_and_time() {
        let mut old = full();
        old.nonce.clear();
        old.computed_unix_ms = 1_000;
        let body = EncodedRouteUpdate::encode_shared(&old);
        let v = TableVersion { epoch: 4, version: 1 };
        let stamped = EncodedRouteUpdate::restamp(&body, v, 2_000).unwrap();
        let want = RouteUpdate {
            version: Some(v),
            computed_unix_ms: 2_000,
            ..old.clone()
        };
        assert_eq!(RouteUpdate::decode(stamped.clone()).unwrap(), want);
        // Stamped again from the same body: nothing accumulates.
        let again = EncodedRouteUpdate::restamp(&body, TableVersion { epoch: 4, version: 2 }, 3_000).unwrap();
        assert_eq!(again.len(), stamped.len());
        assert_eq!(RouteUpdate::decode(again).unwrap().computed_unix_ms, 3_000);
        // A zero a merge would keep the old value for is refused.
        assert!(EncodedRouteUpdate::restamp(&body, TableVersion { epoch: 0, version: 9 }, 1).is_none());
    }

    #[test]
    fn an_empty_nonce_adds_nothing() {
        let mut full = full();
        full.nonce.clear();
        let e = EncodedRouteUpdate {
            body: EncodedRouteUpdate::encode_shared(&full),
            nonce: String::new(),
        };
        let chunks = e.grpc_chunks().unwrap();
        assert!(chunks[2].is_empty());
        assert_eq!(RouteUpdate::decode(chunks[1].clone()).unwrap(), full);
    }
}
