//! The worker agent daemon.
//!
//! Not implemented yet: it lands with the agent issue.
