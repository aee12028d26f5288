//! Pre-encoded messages for fan-out.
//!
//! A route update is the same for every node of a site except its nonce. Encoding it once per
//! site and appending each stream's nonce as one more field (protobuf messages concatenate:
//! the wire form of a message is the concatenation of its fields) turns a per-stream clone
//! and encode of a few hundred rows into a reference count and a few bytes.

use bytes::{BufMut, Bytes};
use prost::Message;

use crate::v1::RouteUpdate;

/// The field number of `RouteUpdate.nonce`.
const NONCE_FIELD: u32 = 2;

/// A `RouteUpdate` encoded without its nonce, plus the nonce of one stream. Send-only: it
/// decodes to nothing.
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
}

impl Message for EncodedRouteUpdate {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.body);
        if !self.nonce.is_empty() {
            prost::encoding::string::encode(NONCE_FIELD, &self.nonce, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.body.len()
            + if self.nonce.is_empty() {
                0
            } else {
                prost::encoding::string::encoded_len(NONCE_FIELD, &self.nonce)
            }
    }

    fn clear(&mut self) {
        self.body = Bytes::new();
        self.nonce.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::v1::{RouteRow, TableVersion};

    #[test]
    fn the_shared_body_plus_a_nonce_decodes_as_the_full_update() {
        let full = RouteUpdate {
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
        };
        let e = EncodedRouteUpdate {
            body: EncodedRouteUpdate::encode_shared(&full),
            nonce: full.nonce.clone(),
        };
        let bytes = e.encode_to_vec();
        assert_eq!(bytes.len(), e.encoded_len());
        assert_eq!(RouteUpdate::decode(bytes.as_slice()).unwrap(), full);
    }
}
