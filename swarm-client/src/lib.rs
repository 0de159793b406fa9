//! Typed async clients of the two worker daemons (`AgentClient`,
//! `UpdaterClient`).
//!
//! Not implemented yet: the agent and updater daemons arrive with their own
//! issues, and their clients land together with them.
