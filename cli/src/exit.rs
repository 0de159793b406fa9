//! How a command ends: usage errors (exit code 2), verdicts with their own
//! code, and the process exit code for any error a command returns.

/// A usage or setup error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A command's verdict that is not a plain failure: exit with this code
/// (e.g. `swarm doctor`: 1 warnings, 3 errors) after printing the message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitWith {
    /// The exit code.
    pub code: i32,
    /// What to say on stderr.
    pub message: String,
}

/// The process exit code for an error a command returned: an
/// [`ExitWith`]'s own, 2 for a usage error (a bad argument, no usable
/// context, a request the API refused as malformed), else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(e) = err.chain().find_map(|e| e.downcast_ref::<ExitWith>()) {
        e.code
    } else if err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<decnet_api_client::ContextError>()
            || e.downcast_ref::<decnet_api_client::ApiError>()
                .is_some_and(decnet_api_client::ApiError::is_usage)
    }) {
        2
    } else {
        1
    }
}

/// Turn a "did everything succeed" flag into the exit status.
pub fn partial(all_ok: bool, what: &str) -> anyhow::Result<()> {
    if all_ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{what}"))
    }
}
