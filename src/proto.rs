//! The OpenIAP Flow schema, generated from `proto/` by `build.rs`.
//!
//! Every `bytes` field is [`bytes::Bytes`], and [`google::protobuf::Any`] is
//! compiled here (not taken from `prost-types`) so that `Any::value` is
//! `Bytes` as well: decoding an [`Envelope`] from a `Bytes` frame copies no
//! payload bytes. Every message implements [`prost::Name`], so its type URL
//! (`type.googleapis.com/openiap.<Name>`) comes from the type itself.

pub use self::openiap::*;

/// Package `openiap`: the Envelope, every request, response and record.
#[allow(
    missing_docs,
    clippy::all,
    clippy::use_self,
    unreachable_pub,
    unused_qualifications
)]
pub mod openiap {
    include!(concat!(env!("OUT_DIR"), "/openiap.rs"));
}

/// Well-known types compiled from the `google.protobuf` package.
pub mod google {
    /// `google.protobuf` (Any and Timestamp), compiled with `Bytes` fields.
    #[allow(
        missing_docs,
        clippy::all,
        clippy::use_self,
        unreachable_pub,
        unused_qualifications
    )]
    pub mod protobuf {
        include!(concat!(env!("OUT_DIR"), "/google.protobuf.rs"));
    }
}

/// The encoded `FileDescriptorSet` of the compiled schema (tests and tools
/// compare it with the protocol tables).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/openiap_descriptor.bin"));
