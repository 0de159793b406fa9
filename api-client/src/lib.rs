//! The one client of the master's fleet API (`/v1`): an operator's
//! identity kept on this machine (a [`Context`]), the server verified as
//! the master, typed calls in the wire types of `decnet-api`, refusals as
//! typed errors, and event streams split into frames.
//!
//! It never depends on the fleet's database or the server runner: what
//! uses it (the `decnet` CLI's remote commands) cannot open the database
//! (DESIGN.md §2, Nomad's `api` package and its client).

pub mod client;
pub mod context;
pub mod sse;

pub use client::{ApiError, FleetClient, LONG_OPERATION, MAX_ANSWER, segment};
pub use context::{Context, ContextError};
pub use sse::{SseError, SseFrame, SseParser};
