//! openiap-wire: the sans-IO core of the OpenIAP Flow wire protocol.
//!
//! (Crate docs with a runnable example are written once the modules land.)

pub mod command;
pub mod connection;
pub mod envelope;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
pub mod reorder;
pub mod stream;

#[cfg(feature = "codec")]
pub mod codec;

pub use error::Error;
