//! `swarm doctor`'s side in the CLI: its thresholds from the arguments,
//! its report as a table, its verdict as the exit code.

use crate::args::parse_duration;

/// The thresholds.
#[derive(Clone, Copy, Debug)]
pub struct DoctorPolicy {
    /// Warn about certificates expiring within this many seconds.
    pub expiry_warning: i64,
    /// A host silent this long is an error.
    pub silent_after: i64,
    /// Warn when a host's clock is off by more than this (ms).
    pub max_skew_ms: i64,
}

/// The doctor's thresholds from `swarm doctor`'s arguments.
pub fn doctor_policy(
    expiry_warning: &str,
    silent_after: &str,
    max_skew: &str,
) -> anyhow::Result<DoctorPolicy> {
    Ok(DoctorPolicy {
        expiry_warning: parse_duration(
            "--expiry-warning",
            expiry_warning,
            std::time::Duration::ZERO,
        )?
        .as_secs() as i64,
        silent_after: parse_duration(
            "--silent-after",
            silent_after,
            std::time::Duration::from_secs(1),
        )?
        .as_secs() as i64,
        max_skew_ms: parse_duration("--max-skew", max_skew, std::time::Duration::ZERO)?.as_millis()
            as i64,
    })
}

/// `swarm doctor`'s exit: 0 all clear, 1 warnings, 3 errors.
pub fn doctor_verdict(code: i32) -> anyhow::Result<()> {
    match code {
        0 => Ok(()),
        1 => Err(crate::exit::ExitWith {
            code,
            message: "swarm doctor: warnings found".into(),
        }
        .into()),
        _ => Err(crate::exit::ExitWith {
            code,
            message: "swarm doctor: errors found".into(),
        }
        .into()),
    }
}
