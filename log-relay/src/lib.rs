//! decnet log relay: workers ship their log files to the master as RFC 5425
//! syslog over mutual TLS, and the master credits every line to the peer
//! certificate's CN.
//!
//! * [`frame`] — octet-counted framing with a maximum frame size (pure);
//! * [`syslog`] — the RFC 5424 parser and the line wrapper (pure);
//! * [`byte_class`] — the byte classes the parser and the JSON record scan
//!   for, eight bytes at a time (pure);
//! * [`json_record`] — the JSON record of a received line, written by hand (pure);
//! * [`forwarder`] — the worker side: tail, batch, persist offsets, reconnect;
//! * [`listener`] — the master side: gate, decode, write (on the
//!   `decnet-server` runner);
//! * [`budget`] — what one peer may make the listener write (token buckets, pure);
//! * [`disk`] — log files rotated by size, the free-space watermark;
//! * [`neutralize`] — hostile text made safe to read (pure; its home is
//!   `decnet-telemetry`, which the CLI shares);
//! * [`metrics`] — the listener's and forwarder's series.

pub mod budget;
pub mod byte_class;
pub mod disk;
pub mod forwarder;
pub mod frame;
pub mod json_record;
pub mod listener;
pub mod metrics;
pub use decnet_telemetry::neutralize;
pub mod syslog;
