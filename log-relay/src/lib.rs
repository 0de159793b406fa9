//! RFC 5425 syslog over mTLS between workers and the master.
//!
//! Not implemented yet: the codec, parser, forwarder and listener land with
//! the log-relay issue.
