//! A destructive command's confirmation, the same wherever it runs: asked
//! at a terminal, refused without one unless `--yes`.

use std::io::{IsTerminal, Write};

use crate::exit::UsageError;

/// A destructive command's confirmation, wherever it runs: `--yes`, or the
/// host's name typed at a terminal; otherwise a usage error naming `verb`.
pub fn confirm_host(host: &str, yes: bool, verb: &str, question: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if std::io::stdin().is_terminal() {
        print!("{question} Type the host name to confirm: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() == host {
            return Ok(());
        }
    }
    Err(UsageError(format!(
        "refusing to {verb} {host} without confirmation; pass --yes"
    ))
    .into())
}

/// The question a burn asks at a terminal.
pub fn burn_question(host: &str) -> String {
    format!(
        "Burn {host}? Every certificate it has is revoked, whoever holds it; it must join again."
    )
}
