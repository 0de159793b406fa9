//! `decnet console --operator NAME` on the master host, without a context:
//! a one-time console URL made straight in the fleet database (the one
//! console command that needs the master's files; the rest are
//! `decnet-cli`'s).

/// `decnet console --operator NAME` on the master host.
pub async fn console_local(
    home: &crate::home::MasterHome,
    a: decnet_cli::events_cmd::ConsoleArgs,
) -> anyhow::Result<()> {
    let Some(name) = a.operator else {
        return Err(crate::usage::UsageError(
            "on the master host without a context, name the operator the console acts as: --operator NAME (or use a context: decnet login)".into(),
        )
        .into());
    };
    let db = crate::usage::open_db(home).await?;
    let op = db.operator(&name).await?;
    if op.is_none_or(|o| o.revoked_at.is_some()) {
        return Err(crate::usage::UsageError(format!(
            "no active operator {name} (see decnet operator list)"
        ))
        .into());
    }
    let ticket = decnet_pki::random_hex(32);
    let expires_at = db.create_console_ticket(&ticket, &name).await?;
    db.audit(&decnet_fleet::AuditEntry::now(
        crate::usage::cli_actor(),
        "console.login_url",
        &name,
        decnet_fleet::AuditOutcome::Ok,
        "",
    ))
    .await?;
    db.close().await;
    let url = format!(
        "https://{}:{}/login?ticket={ticket}",
        a.url_host, a.console_port
    );
    decnet_cli::events_cmd::print_console_url(&url, expires_at, a.print_url);
    Ok(())
}
