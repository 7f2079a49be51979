#![doc = include_str!("../README.md")]

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
pub mod view;
pub mod websocket;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "codec")]
pub mod codec;
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) mod file_io;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "transport")]
pub mod transport;

pub use error::Error;
