//! `decnet operator …`, `decnet login` and `decnet context …`: operators'
//! identities from both ends. Through a context the operator commands are
//! calls to the fleet API, which only an admin passes; on the master host,
//! without a context, they work on the fleet database directly (the
//! bootstrap, in `decnet-master`'s `operator_cmd`), with this module's
//! parsing and output, so the output is the same either way.

use decnet_api as api;
use decnet_pki::{Bundle, BundleKind};

use crate::args::{ContextCommand, OperatorCommand, parse_duration};
use crate::exit::UsageError;
use crate::table::{format_time, inert};
use decnet_api_client::context::{self, Context};
use decnet_api_client::{FleetClient, segment};

/// A role as given on the command line.
pub fn parse_role(s: &str) -> Result<api::OperatorRole, UsageError> {
    api::OperatorRole::parse(s)
        .ok_or_else(|| UsageError(format!("role {s:?}: use viewer, deployer or admin")))
}

/// An enrolment token's `--ttl`: at least a minute, at most
/// [`api::MAX_TOKEN_TTL_SECS`].
pub fn token_ttl(ttl: &str) -> Result<std::time::Duration, UsageError> {
    let d = parse_duration("--ttl", ttl, std::time::Duration::from_secs(60))?;
    if d.as_secs() > api::MAX_TOKEN_TTL_SECS {
        return Err(UsageError(format!(
            "--ttl {ttl:?} is too long (at most 7d)"
        )));
    }
    Ok(d)
}

/// `--hosts '*'` means every host, as no globs do.
pub fn scope(hosts: Vec<String>) -> Vec<String> {
    hosts
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty() && h != "*")
        .collect()
}

/// What adding an operator or a new token prints: the one-time token.
pub fn print_token(t: &api::OperatorToken, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(t)?);
    } else {
        println!(
            "operator {} may log in until {}:",
            t.operator,
            format_time(t.expires_at)
        );
        println!("  decnet login --master MASTER[:8770] --token {}", t.token);
        println!("(single use; the key is made on the operator's machine and never leaves it)");
    }
    Ok(())
}

/// `operator list`'s output, local or through a context.
pub fn print_operators(list: &[api::Operator], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no operators (decnet operator add NAME --role admin)");
        return Ok(());
    }
    print!(
        "{}",
        crate::table::render(
            &[
                "OPERATOR",
                "ROLE",
                "HOSTS",
                "STATE",
                "CERT EXPIRES",
                "ADDED BY"
            ],
            list.iter().map(|o| {
                vec![
                    o.name.clone(),
                    o.role.to_string(),
                    if o.hosts.is_empty() {
                        "*".into()
                    } else {
                        o.hosts.join(",")
                    },
                    match (o.revoked_at, &o.fingerprint) {
                        (Some(_), _) => "revoked".into(),
                        (None, None) => "not logged in".into(),
                        (None, Some(_)) => "active".into(),
                    },
                    o.cert_not_after
                        .map(|t| crate::table::format_expiry(t, crate::table::unix_now()))
                        .unwrap_or_else(|| "-".into()),
                    o.created_by.clone(),
                ]
            })
        )
    );
    Ok(())
}

/// `operator show`'s output (and after `set-role`), local or through a
/// context.
pub fn print_operator(o: &api::Operator, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(o)?);
        return Ok(());
    }
    println!("operator:     {}", inert(&o.name));
    println!("role:         {}", o.role);
    println!(
        "hosts:        {}",
        if o.hosts.is_empty() {
            "* (every host)".into()
        } else {
            o.hosts.join(", ")
        }
    );
    println!(
        "added:        {} by {}",
        format_time(o.created_at),
        o.created_by
    );
    println!(
        "revoked:      {}",
        o.revoked_at.map(format_time).unwrap_or_else(|| "no".into())
    );
    println!(
        "certificate:  {}",
        o.fingerprint.as_deref().unwrap_or("- (not logged in yet)")
    );
    if let Some(t) = o.cert_not_after {
        println!("expires:      {}", format_time(t));
    }
    Ok(())
}

/// The operator commands through a context (admins only: the master says
/// so otherwise).
pub async fn remote(client: &FleetClient, cmd: OperatorCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match cmd {
        OperatorCommand::Add {
            name,
            role,
            hosts,
            ttl,
            json,
        } => {
            let req = api::NewOperator {
                name,
                role: parse_role(&role)?,
                hosts: scope(hosts),
                token_ttl_secs: token_ttl(&ttl)?.as_secs(),
            };
            let t: api::OperatorToken = client
                .send(Method::POST, "/v1/operators", Some(&req))
                .await?;
            print_token(&t, json)
        }
        OperatorCommand::Token { name, ttl, json } => {
            let secs = token_ttl(&ttl)?.as_secs();
            let t: api::OperatorToken = client
                .send::<(), _>(
                    Method::POST,
                    &format!("/v1/operators/{}/token?ttl_secs={secs}", segment(&name)),
                    None,
                )
                .await?;
            print_token(&t, json)
        }
        OperatorCommand::List { json } => {
            let list: Vec<api::Operator> = client.get("/v1/operators").await?;
            print_operators(&list, json)
        }
        OperatorCommand::Show { name, json } => {
            let o: api::Operator = client
                .get(&format!("/v1/operators/{}", segment(&name)))
                .await?;
            print_operator(&o, json)
        }
        OperatorCommand::SetRole { name, role, hosts } => {
            let req = api::SetRole {
                role: parse_role(&role)?,
                hosts: hosts.map(scope),
            };
            let o: api::Operator = client
                .send(
                    Method::PUT,
                    &format!("/v1/operators/{}/role", segment(&name)),
                    Some(&req),
                )
                .await?;
            print_operator(&o, false)
        }
        OperatorCommand::Revoke { name } => {
            let _: api::Operator = client
                .send::<(), _>(
                    Method::POST,
                    &format!("/v1/operators/{}/revoke", segment(&name)),
                    None,
                )
                .await?;
            println!("operator {name} revoked; refused from its next request");
            Ok(())
        }
    }
}

/// `decnet login`: key here, certificate from the master, a context saved
/// and put in use.
pub async fn login(
    master: &str,
    token: Option<&str>,
    token_file: Option<&std::path::Path>,
    as_name: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    use decnet_swarm_client::join::{JoinError, JoinOptions, join, read_token};
    if let Some(n) = &as_name
        && !context::valid_name(n)
    {
        return Err(UsageError(format!(
            "--as {n:?}: a context name is a host-name-like word, not `local`"
        ))
        .into());
    }
    let token = read_token(token, token_file).map_err(|e| UsageError(e.to_string()))?;
    let master = decnet_swarm_client::transport::with_default_port(master, 8770);
    let staging = context::staging_dir().map_err(|e| {
        UsageError(format!(
            "cannot write under {}: {e}",
            context::config_root().display()
        ))
    })?;
    let joined = join(
        &master,
        &token,
        BundleKind::Operator,
        &staging,
        &JoinOptions::default(),
    )
    .await;
    let bundle = match joined {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(match e {
                JoinError::BadToken | JoinError::CaMismatch { .. } => {
                    UsageError(e.to_string()).into()
                }
                other => anyhow::anyhow!("{other}"),
            });
        }
    };
    let operator = match &bundle.identity.role {
        decnet_pki::Role::Operator(n) => n.to_string(),
        other => {
            let _ = std::fs::remove_dir_all(&staging);
            anyhow::bail!("the master issued a certificate for {other}, not an operator");
        }
    };
    if !staging
        .join(decnet_swarm_client::join::FLEET_API_FILE)
        .exists()
    {
        let _ = std::fs::remove_dir_all(&staging);
        anyhow::bail!(
            "the master did not say where its fleet API listens (is it older than this CLI, or started with --no-api?)"
        );
    }
    let name = as_name.unwrap_or_else(|| operator.clone());
    let dir = context::dir_of(&name);
    if dir.exists() {
        // A master chooses the operator's name: it must not silently
        // replace another master's context (and key) of that name.
        if !force {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(UsageError(format!(
                "a context named {name} exists already (see `decnet context list`): log in with --as OTHER, or --force to replace it"
            ))
            .into());
        }
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&staging, &dir)?;
    Context::use_name(&name)?;
    let ctx = Context::load(&name)?;
    println!(
        "logged in to {master} as operator {operator}; context {name} saved in {} and in use (fleet API {})",
        dir.display(),
        ctx.fleet_api
    );
    Ok(())
}

/// Where `login --renew` keeps a renewed pair, inside the context's
/// directory, until it has been presented and installed.
const RENEWED_DIR: &str = "renewed";

/// Whether `e` says the master refused the certificate (an answer, or a
/// handshake refused as revoked), rather than that it could not be asked.
fn refused(e: &decnet_api_client::ApiError) -> bool {
    !e.is_unanswered() || e.to_string().contains("Revoked")
}

/// One request (`GET /v1/whoami`) presenting `bundle`, tried three times
/// while it goes unanswered.
async fn present(ctx: &Context, bundle: &Bundle) -> Result<(), decnet_api_client::ApiError> {
    let client = FleetClient::with_bundle(ctx, bundle)?;
    let mut attempt = 0;
    loop {
        match client.get::<decnet_api::Whoami>("/v1/whoami").await {
            Ok(_) => return Ok(()),
            Err(e) if refused(&e) || attempt == 2 => return Err(e),
            Err(_) => attempt += 1,
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Make `bundle`, a renewed pair the master took, the context's own (one
/// commit), and drop its copy waiting in `waiting_dir`.
fn install_renewed(
    ctx: &Context,
    bundle: &Bundle,
    waiting_dir: &std::path::Path,
) -> anyhow::Result<()> {
    bundle.write(&ctx.dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot install the renewed certificate into {} ({e}); it waits in {}: run decnet login --renew again to install it",
            ctx.dir.display(),
            waiting_dir.display()
        )
    })?;
    let _ = std::fs::remove_dir_all(waiting_dir);
    Ok(())
}

/// `decnet login --renew`: a new key made here and a new certificate for
/// it, asked with the current (still valid) certificate of the context in
/// use (or `flag`'s). The master revokes the old certificate only when the
/// new one is first presented, which this does at once, before installing
/// it in the context (in one commit: a crash leaves the old or the new
/// pair, never a mix). Until then the new pair waits in the context's
/// `renewed/` directory and the old one stays in place and valid: a lost
/// answer, a crash, a full disk or a dropped connection costs nothing but
/// running this again, which first installs a waiting pair if the master
/// took it.
pub async fn renew(flag: Option<&str>) -> anyhow::Result<()> {
    let ctx = context::selected(flag)?.ok_or_else(|| {
        UsageError("no context in use to renew (decnet context use NAME, or --context NAME)".into())
    })?;
    let waiting_dir = ctx.dir.join(RENEWED_DIR);
    if let Ok(waiting) = Bundle::load(&waiting_dir, BundleKind::Operator) {
        // An earlier renewal could not be confirmed: if the master takes it,
        // it is the operator's certificate now; if the master cannot be
        // asked, it stays (it may be the only one the master accepts).
        let asked = present(&ctx, &waiting).await;
        if let Err(e) = &asked
            && !refused(e)
        {
            return Err(anyhow::anyhow!(
                "the master could not be asked ({e:#}); a renewed certificate waits in {}: run decnet login --renew again once the master answers",
                waiting_dir.display()
            ));
        }
        if asked.is_ok() {
            install_renewed(&ctx, &waiting, &waiting_dir)?;
            println!(
                "renewed {} in context {}: the renewal made earlier took (fingerprint {}); the previous certificate is revoked",
                waiting.identity.role, ctx.name, waiting.identity.fingerprint
            );
            return Ok(());
        }
    }
    let _ = std::fs::remove_dir_all(&waiting_dir);
    let old = Bundle::load(&ctx.dir, BundleKind::Operator)
        .map_err(|e| UsageError(format!("context {}: {e}", ctx.name)))?;
    let client = FleetClient::of(&ctx)?;
    let (key_pem, csr_pem) = decnet_pki::ca::generate_csr("decnet-login-renew")
        .map_err(|e| anyhow::anyhow!("cannot generate a key: {e}"))?;
    let r: decnet_api::RenewedOperator = client
        .send(
            reqwest::Method::POST,
            "/v1/whoami/renew",
            Some(&decnet_api::RenewOperator { csr_pem }),
        )
        .await?;
    let identity = decnet_pki::PeerIdentity::from_pem(&r.cert_pem)
        .map_err(|e| anyhow::anyhow!("the renewed certificate is unusable: {e}"))?;
    // During a CA rotation the master trusts a second CA (the one that
    // signed this certificate): taken only with an endorsement by a CA this
    // context already trusts.
    let ca_pem = if r.ca_pem.is_empty() {
        old.ca_pem.clone()
    } else {
        decnet_pki::trust::accept(&old.ca_pem, &r.ca_pem, &r.endorsements_pem)
            .map_err(|e| anyhow::anyhow!("the master's trust set is refused: {e}"))?
    };
    let bundle = Bundle {
        kind: BundleKind::Operator,
        cert_pem: r.cert_pem.clone(),
        key_pem,
        ca_pem,
        identity,
    };
    // The same operator, under a CA this context trusts, for the key made here.
    bundle.verify(&old.identity.role).map_err(|e| {
        anyhow::anyhow!("the master's answer is not a renewal of this context's operator: {e}")
    })?;
    // Kept aside (a full disk says so now, with the old pair still valid),
    // then presented, then installed.
    bundle.write(&waiting_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot save the renewed certificate in {} ({e}); the previous certificate is kept and still valid: run decnet login --renew again",
            waiting_dir.display()
        )
    })?;
    if let Err(e) = present(&ctx, &bundle).await {
        if refused(&e) {
            let _ = std::fs::remove_dir_all(&waiting_dir);
            return Err(anyhow::anyhow!(
                "the master refused the renewed certificate ({e:#}); the previous certificate is kept"
            ));
        }
        // Did it take all the same (an answer lost)? Then the old one is refused.
        match FleetClient::of(&ctx)?
            .get::<decnet_api::Whoami>("/v1/whoami")
            .await
        {
            Ok(_) => {
                let _ = std::fs::remove_dir_all(&waiting_dir);
                return Err(anyhow::anyhow!(
                    "the master could not be asked with the renewed certificate ({e:#}); the previous certificate is kept and still valid: run decnet login --renew again"
                ));
            }
            Err(old_e) if refused(&old_e) => {}
            Err(old_e) => {
                return Err(anyhow::anyhow!(
                    "the master could not be reached to confirm the renewal ({old_e:#}); the previous certificate is kept in context {} and the renewed one waits in {}: run decnet login --renew again once the master answers",
                    ctx.name,
                    waiting_dir.display()
                ));
            }
        }
    }
    install_renewed(&ctx, &bundle, &waiting_dir)?;
    println!(
        "renewed {} in context {}: valid until {} (fingerprint {}); the previous certificate is revoked",
        old.identity.role,
        ctx.name,
        crate::table::format_time(r.not_after),
        r.fingerprint
    );
    Ok(())
}

/// `decnet context …`
pub fn context_command(cmd: ContextCommand) -> anyhow::Result<()> {
    match cmd {
        ContextCommand::List => {
            let current = Context::current_name();
            let names = Context::names();
            if names.is_empty() {
                println!("no contexts (decnet login --master HOST --token TOKEN)");
            }
            for n in names {
                let mark = if current.as_deref() == Some(n.as_str()) {
                    "*"
                } else {
                    " "
                };
                let api = Context::load(&n)
                    .map(|c| c.fleet_api)
                    .unwrap_or_else(|_| "?".into());
                println!("{mark} {n}\t{api}");
            }
            Ok(())
        }
        ContextCommand::Use { name } => {
            if name != context::LOCAL {
                Context::load(&name)?;
            }
            Context::use_name(&name)?;
            println!("context {name} in use");
            Ok(())
        }
        ContextCommand::Remove { name } => {
            context::remove(&name)?;
            println!("context {name} removed");
            Ok(())
        }
    }
}
