//! The worker updater daemon.
//!
//! Not implemented yet: it lands with the updater issue.
