//! `decnet operator …` on the master host without a context: the operator
//! commands on the fleet database and the CA directly (the bootstrap: the
//! first admin is added here, as the master's service user). Parsing and
//! output are `decnet-cli`'s, shared with the same commands through a
//! context.

use decnet_api as api;
use decnet_cli::operator_cmd::{
    parse_role, print_operator, print_operators, print_token, scope, token_ttl,
};

use crate::cli::OperatorCommand;
use crate::home::MasterHome;
use crate::usage::{UsageError, cli_actor, open_db};

pub use decnet_cli::operator_cmd::{context_command, login, remote, renew};

/// The operator commands on the master host's own database and CA.
pub async fn local(home: &MasterHome, cmd: OperatorCommand) -> anyhow::Result<()> {
    let db = open_db(home).await?;
    let r = local_on(home, &db, cmd).await;
    db.close().await;
    r
}

async fn view(db: &decnet_fleet::FleetDb, name: &str) -> anyhow::Result<api::Operator> {
    crate::fleet_api::operator_view(db, name)
        .await?
        .ok_or_else(|| UsageError(format!("no operator named {name}")).into())
}

fn operator_error(e: decnet_fleet::operators::OperatorError) -> anyhow::Error {
    use decnet_fleet::operators::OperatorError;
    match e {
        OperatorError::Db(e) => anyhow::Error::from(e).context("the fleet database"),
        other => UsageError(other.to_string()).into(),
    }
}

async fn local_on(
    home: &MasterHome,
    db: &decnet_fleet::FleetDb,
    cmd: OperatorCommand,
) -> anyhow::Result<()> {
    let audit = |action: &'static str, target: String, detail: String| async move {
        crate::usage::audit(db, action, &target, decnet_fleet::AuditOutcome::Ok, detail).await
    };
    match cmd {
        OperatorCommand::Add {
            name,
            role,
            hosts,
            ttl,
            json,
        } => {
            let role = parse_role(&role)?;
            let hosts = scope(hosts);
            let ttl = token_ttl(&ttl)?;
            let name = crate::fleet_api::check_operator(&name, &hosts).map_err(UsageError)?;
            let ca = crate::authorities::signing_ca(&home.ca_layout(), db).await?;
            let (token, expires_at) = db
                .add_operator(&ca, &name, role.as_str(), &hosts, ttl, &cli_actor())
                .await
                .map_err(operator_error)?;
            audit(
                "operator.add",
                name.to_string(),
                format!("role={role} hosts={hosts:?} token={}", token.id),
            )
            .await?;
            print_token(&token_answer(&name, &token, expires_at), json)
        }
        OperatorCommand::Token { name, ttl, json } => {
            let ttl = token_ttl(&ttl)?;
            let name = crate::fleet_api::check_operator(&name, &[]).map_err(UsageError)?;
            let ca = crate::authorities::signing_ca(&home.ca_layout(), db).await?;
            let (token, expires_at) = db
                .operator_token(&ca, &name, ttl, &cli_actor())
                .await
                .map_err(operator_error)?;
            audit(
                "operator.token",
                name.to_string(),
                format!("token={}", token.id),
            )
            .await?;
            print_token(&token_answer(&name, &token, expires_at), json)
        }
        OperatorCommand::List { json } => {
            print_operators(&crate::fleet_api::operator_views(db).await?, json)
        }
        OperatorCommand::Show { name, json } => print_operator(&view(db, &name).await?, json),
        OperatorCommand::SetRole { name, role, hosts } => {
            let role = parse_role(&role)?;
            let hosts = hosts.map(scope);
            crate::fleet_api::check_operator(&name, hosts.as_deref().unwrap_or(&[]))
                .map_err(UsageError)?;
            db.set_operator_role(&name, role.as_str(), hosts.as_deref())
                .await
                .map_err(operator_error)?;
            audit(
                "operator.set_role",
                name.clone(),
                format!("role={role} hosts={hosts:?}"),
            )
            .await?;
            print_operator(&view(db, &name).await?, false)
        }
        OperatorCommand::Revoke { name } => {
            let revoked = db.revoke_operator(&name).await.map_err(operator_error)?;
            audit(
                "operator.revoke",
                name.clone(),
                format!("revoked certificates: {}", revoked.len()),
            )
            .await?;
            println!(
                "operator {name} revoked ({} certificate(s) on the deny list); refused from its next request",
                revoked.len()
            );
            Ok(())
        }
    }
}

fn token_answer(
    name: &decnet_pki::HostName,
    token: &decnet_swarm_client::join::TokenText,
    expires_at: i64,
) -> api::OperatorToken {
    api::OperatorToken {
        operator: name.to_string(),
        token: token.to_string(),
        expires_at,
    }
}
