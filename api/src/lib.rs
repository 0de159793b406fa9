//! The wire types of the master's fleet API (`/v1`, the operator listener):
//! what `decnet master serve` answers and what the `decnet` CLI (through a
//! context) and any other client send and read. Defined once, here, so the
//! server and its clients cannot drift (Nomad's `api` package).
//!
//! These are not the fleet database's rows: the master converts at the API
//! edge. Depends on serde (and serde_json, for the few documents the
//! agents shape themselves) only; with the `openapi` feature (the master's)
//! each type also describes itself for the OpenAPI document the master
//! serves at `/v1/openapi.json`.

use serde::{Deserialize, Serialize};

/// What an operator may do: each role includes the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OperatorRole {
    /// Every read: list, show, status, check, releases, audit, doctor.
    Viewer,
    /// Viewer, plus deploy, teardown, update, rollback, renew.
    Deployer,
    /// Everything: enroll, tokens, decommission, burn, operators, the CA.
    Admin,
}

impl OperatorRole {
    /// The spelling on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Deployer => "deployer",
            OperatorRole::Admin => "admin",
        }
    }

    /// Parse `viewer`, `deployer` or `admin`.
    pub fn parse(s: &str) -> Option<OperatorRole> {
        match s {
            "viewer" => Some(OperatorRole::Viewer),
            "deployer" => Some(OperatorRole::Deployer),
            "admin" => Some(OperatorRole::Admin),
            _ => None,
        }
    }

    /// The least role that holds `p`.
    pub fn least_for(p: Permission) -> OperatorRole {
        match p {
            Permission::Read => OperatorRole::Viewer,
            Permission::Deploy => OperatorRole::Deployer,
            Permission::Admin => OperatorRole::Admin,
        }
    }

    /// Whether this role holds `p`.
    pub fn permits(self, p: Permission) -> bool {
        self >= OperatorRole::least_for(p)
    }
}

impl std::fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs: the permission of each `/v1` route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Reading the fleet.
    Read,
    /// Changing what runs on hosts.
    Deploy,
    /// Changing who may do what, and the fleet's membership.
    Admin,
}

/// One worker host as the fleet API shows it (`GET /v1/hosts`,
/// `GET /v1/hosts/{name}`): the same fields `decnet swarm list --json` and
/// `swarm show --json` print.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Host {
    /// Host name (the agent CN).
    pub name: String,
    /// Address the master dials.
    pub address: String,
    /// Agent port.
    pub agent_port: u16,
    /// Updater port.
    pub updater_port: u16,
    /// SANs in the agent certificate.
    pub sans: Vec<String>,
    /// Fingerprint of the current agent certificate.
    pub agent_fingerprint: Option<String>,
    /// Fingerprint of the current updater certificate.
    pub updater_fingerprint: Option<String>,
    /// A renewed agent certificate the agent has not presented yet.
    pub agent_pending: Option<String>,
    /// A renewed updater certificate the updater has not presented yet.
    pub updater_pending: Option<String>,
    /// `enrolled`, `active`, `unreachable`, `decommissioned`, `suspect`, `burned`.
    pub status: String,
    /// When it was enrolled (unix seconds).
    pub enrolled_at: i64,
    /// Last change of its record (unix seconds).
    pub updated_at: i64,
    /// Last successful contact (unix seconds).
    pub last_seen: Option<i64>,
    /// Last contact error.
    pub last_error: Option<String>,
    /// Agent version reported at the last contact.
    pub agent_version: Option<String>,
    /// Last reported deployment state (JSON text, as the agent sent it).
    pub state_json: Option<String>,
    /// The host's clock minus the master's at its last heartbeat (ms).
    pub clock_skew_ms: Option<i64>,
    /// When its last heartbeat arrived (unix seconds); none: it sends none.
    pub last_heartbeat: Option<i64>,
    /// When the current agent certificate expires (unix seconds).
    pub agent_cert_not_after: Option<i64>,
    /// When the current updater certificate expires (unix seconds).
    pub updater_cert_not_after: Option<i64>,
    /// Revoked certificates of the host (`GET /v1/hosts/{name}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_fingerprints: Option<Vec<String>>,
}

/// One audit entry (`GET /v1/audit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// When (unix seconds).
    pub at: i64,
    /// Who: `operator:<name>`, `local:<unix user>`, `join:<address>`, …
    pub actor: String,
    /// What (`swarm.enroll`, `operator.add`, …).
    pub action: String,
    /// On what (usually a host or operator name).
    pub target: String,
    /// `ok`, `failed` or `refused`.
    pub outcome: String,
    /// Free text; never a secret.
    pub detail: String,
    /// Where the request came from: the fleet API client's address (none
    /// for the CLI on the master host, whose actor says so, and for the
    /// daemons' own actions).
    #[serde(default)]
    pub source: Option<String>,
}

/// An operator (`GET /v1/operators`, `GET /v1/operators/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operator {
    /// The name (CN `operator@<name>`).
    pub name: String,
    /// What it may do.
    pub role: OperatorRole,
    /// Host-name globs it is limited to; empty: every host.
    pub hosts: Vec<String>,
    /// When it was added (unix seconds).
    pub created_at: i64,
    /// Who added it.
    pub created_by: String,
    /// When it was revoked; none: it is active.
    pub revoked_at: Option<i64>,
    /// Its current certificate's fingerprint; none: it has not logged in.
    pub fingerprint: Option<String>,
    /// When that certificate expires (unix seconds).
    pub cert_not_after: Option<i64>,
}

/// `POST /v1/operators`: add an operator and get its enrolment token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// The name.
    pub name: String,
    /// Its role.
    pub role: OperatorRole,
    /// Host-name globs; empty: every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// How long the token is valid (seconds).
    pub token_ttl_secs: u64,
}

/// The answer to adding an operator (or re-issuing its token): the
/// one-time token its `decnet login` needs. Shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperatorToken {
    /// The operator.
    pub operator: String,
    /// `<id>.<secret>.<ca-sha256>`.
    pub token: String,
    /// When it expires (unix seconds).
    pub expires_at: i64,
}

/// `PUT /v1/operators/{name}/role`: change an operator's role and scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// The new role.
    pub role: OperatorRole,
    /// New host globs; absent: unchanged; empty: every host.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

/// `POST /v1/tokens`: a single-use join token for a worker host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// The host that will join.
    pub host: String,
    /// The address the master dials.
    pub address: String,
    /// Extra SANs.
    #[serde(default)]
    pub sans: Vec<String>,
    /// Whether its updater may join too.
    #[serde(default)]
    pub updater: bool,
    /// How long it is valid (seconds).
    pub ttl_secs: u64,
}

/// The answer to [`NewJoinToken`]: the token, shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinToken {
    /// The host.
    pub host: String,
    /// `<id>.<secret>.<ca-sha256>`.
    pub token: String,
    /// Whether its updater may join too.
    pub updater: bool,
    /// How long it is valid (seconds).
    pub ttl_secs: u64,
}

/// `POST /v1/hosts/{name}/decommission`: what it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Decommissioned {
    /// The host.
    pub host: String,
    /// Certificates revoked.
    pub revoked: usize,
    /// Issued bundle directories removed from the master.
    pub removed_bundles: usize,
}

/// `POST /v1/hosts/{name}/renew`: the agent renews at its next heartbeat;
/// the updater was asked directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewRequested {
    /// The host.
    pub host: String,
    /// Whether the host has an updater (and so was asked).
    pub has_updater: bool,
    /// Why the updater did not take the request, if it did not.
    pub updater_error: Option<String>,
}

/// `POST /v1/deploy`: deploy a config to hosts, as a job of the master
/// daemon (the request carries an `Idempotency-Key` header).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The deployment config (JSON text, as in the file).
    pub config_json: String,
    /// What to call it in the audit log (the file's name).
    pub config_name: String,
    /// Target hosts; empty: every live host the operator sees.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Wait for the deckies to start.
    pub wait: bool,
    /// Hosts talked to at once.
    pub parallel: usize,
}

/// The header carrying a mutating request's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// A job of the master daemon (`GET /v1/jobs/{id}`, and the answer to
/// starting one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Its id.
    pub id: String,
    /// What it does (`deploy`).
    pub kind: String,
    /// Who asked.
    pub actor: String,
    /// `running`, `done`, `failed`, `cancelled`, `interrupted`.
    pub state: String,
    /// When it started (unix seconds).
    pub created_at: i64,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// The request (JSON text).
    pub request: String,
    /// The result (JSON text), once finished.
    pub result: Option<String>,
    /// Per-host progress (`GET /v1/jobs/{id}` only).
    #[serde(default)]
    pub hosts: Vec<JobHost>,
}

/// One host of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobHost {
    /// The host.
    pub host: String,
    /// `pending`, `ok`, `failed`.
    pub state: String,
    /// Why, or what.
    pub detail: String,
}

/// `GET /v1/jobs/{id}/events?after=N&wait_ms=M`: the progress lines after
/// `N` (waiting up to `M` ms for one), and the job's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvents {
    /// The job's state now.
    pub state: String,
    /// The lines, in order.
    pub events: Vec<JobEvent>,
}

/// One progress line of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    /// Its number (from 1).
    pub seq: i64,
    /// When (unix seconds).
    pub at: i64,
    /// The line (lines starting `warning:` belong on stderr).
    pub line: String,
}

/// `GET /v1/whoami`: the identity and grant of the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Whoami {
    /// The operator.
    pub name: String,
    /// Its role.
    pub role: OperatorRole,
    /// Its host scope; empty: every host.
    pub hosts: Vec<String>,
}

/// The body of every error the fleet API answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable short kind: `forbidden`, `not_found`, `bad_request`, `conflict`, `unavailable`.
    pub error: String,
    /// What went wrong, for a person.
    pub detail: String,
    /// The role a refused request needs, when that is why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_role: Option<String>,
}

/// The `role` a `decnet login` joins with at the control API's `POST /join`.
pub const JOIN_ROLE_OPERATOR: &str = "operator";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below() {
        use OperatorRole::{Admin, Deployer, Viewer};
        use Permission::{Deploy, Read};
        let admin = Permission::Admin;
        assert!(Viewer.permits(Read) && !Viewer.permits(Deploy) && !Viewer.permits(admin));
        assert!(Deployer.permits(Read) && Deployer.permits(Deploy) && !Deployer.permits(admin));
        assert!(Admin.permits(Read) && Admin.permits(Deploy) && Admin.permits(admin));
        for r in [Viewer, Deployer, Admin] {
            assert_eq!(OperatorRole::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert_eq!(OperatorRole::parse("root"), None);
    }

    #[test]
    fn unknown_fields_in_requests_are_refused() {
        assert!(
            serde_json::from_str::<NewOperator>(
                r#"{"name":"a","role":"viewer","token_ttl_secs":60,"admin":true}"#
            )
            .is_err()
        );
    }
}

/// `POST /v1/hosts/{name}/teardown`: what to tear down.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TeardownRequest {
    /// Only this decky (every decky of the host when absent).
    #[serde(default)]
    pub decky: Option<String>,
}

/// The answer to a teardown: the deckies its agent tore down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TornDown {
    /// The host.
    pub host: String,
    /// The deckies torn down (empty: there was nothing to tear down).
    pub deckies: Vec<String>,
}

/// The answer to a burn (`POST /v1/hosts/{name}/burn`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Burned {
    /// The host.
    pub host: String,
    /// Certificates revoked.
    pub revoked: usize,
    /// Issued bundle directories removed from the master.
    pub removed_bundles: usize,
    /// The deckies torn down before the burn, when its agent could do it.
    pub torn_down: Option<Vec<String>>,
    /// Why they could not be torn down, otherwise.
    pub teardown_error: Option<String>,
}

/// `PUT /v1/hosts/{name}/endpoint`: where the master dials a host (absent
/// fields unchanged).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetEndpoint {
    /// New address.
    #[serde(default)]
    pub address: Option<String>,
    /// New agent port.
    #[serde(default)]
    pub agent_port: Option<u16>,
    /// New updater port.
    #[serde(default)]
    pub updater_port: Option<u16>,
}

/// `POST /v1/deploy/plan`: what each agent would run for a config, nothing
/// run (`swarm deploy --dry-run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployPlanRequest {
    /// The deployment config's JSON text.
    pub config_json: String,
    /// Target hosts (every live host the operator sees when empty).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `GET /v1/ca`: the CA and the master certificate (public facts only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CaInfo {
    /// The CA directory on the master.
    pub ca_dir: String,
    /// SHA-256 fingerprint of the CA certificate, hex.
    pub ca_fingerprint: String,
    /// The CA's subject.
    pub ca_subject: String,
    /// When the CA certificate expires (unix seconds).
    pub ca_not_after: i64,
    /// The master certificate's fingerprint, when its bundle is there.
    pub master_fingerprint: Option<String>,
    /// When the master certificate expires.
    pub master_not_after: Option<i64>,
}

/// The answer to a release upload (`PUT /v1/releases/{sha256}`): the
/// master holds the tarball under its digest for update jobs to push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseUploaded {
    /// Its SHA-256, hex (the digest the master computed).
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// `POST /v1/update`: push an uploaded release to hosts (a job; `swarm
/// update`). The manifests travel as the operator's CLI made (and signed)
/// them; the updaters verify them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The uploaded tarball's SHA-256.
    pub sha256: String,
    /// The release label.
    pub label: String,
    /// The release version (empty: none).
    #[serde(default)]
    pub version: String,
    /// The manifests, as JSON (one per target daemon).
    pub manifests_json: String,
    /// Target hosts (every live host the operator sees when `all`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Every live host the operator sees.
    #[serde(default)]
    pub all: bool,
    /// Hosts updated at once.
    pub max_parallel: usize,
    /// Hosts updated first, one at a time.
    #[serde(default)]
    pub canary: usize,
    /// Replace each updater's own binary too.
    #[serde(default)]
    pub include_self: bool,
    /// Keep going after a host fails.
    #[serde(default)]
    pub continue_on_error: bool,
    /// Install below the active version (updaters without a keyring).
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// `POST /v1/whoami/renew` (`decnet login --renew`): a CSR for the
/// operator's new key, made on its machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenewOperator {
    /// The PKCS#10 request, PEM.
    pub csr_pem: String,
}

/// The renewed operator certificate; the one presented is revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewedOperator {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its SHA-256 fingerprint, hex.
    pub fingerprint: String,
    /// When it expires (unix seconds).
    pub not_after: i64,
    /// The CA certificates the master trusts now (during a CA rotation:
    /// both), PEM; the context takes them through `endorsements_pem`.
    #[serde(default)]
    pub ca_pem: String,
    /// Endorsements of new CAs by the CA the context trusts (rotation only).
    #[serde(default)]
    pub endorsements_pem: String,
}

/// The longest an operator's enrolment token may live (the API clamps
/// what it is asked; the CLI refuses more).
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

pub mod worker;
pub use worker::{AgentStatus, DeckyState, EvidenceArchive, EvidenceList, RawJson};

/// One host's row of `swarm status` / `swarm check` (`GET /v1/status`,
/// `GET /v1/check`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostReport {
    /// Host.
    pub host: String,
    /// Whether the agent answered.
    pub reachable: bool,
    /// Agent version.
    pub version: Option<String>,
    /// The agent's status (status command; absent from a check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AgentStatus>,
    /// The error, when it did not answer properly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the host's record last changed (unix seconds): this contact.
    pub updated_at: Option<i64>,
}

/// What one agent would run for a config (`POST /v1/deploy/plan`, a dry
/// run): its rendered plan as the agent sent it, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostPlan {
    /// Host.
    pub host: String,
    /// The rendered plan (the agent's text, not decoded on the master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RawJson>,
    /// Why the agent gave no plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a deploy on one host (a deploy job's result is a list
/// of these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostDeploy {
    /// Host.
    pub host: String,
    /// Operation id, when accepted.
    pub operation_id: Option<String>,
    /// Final decky states (when waited for).
    #[serde(default)]
    pub deckies: Vec<DeckyState>,
    /// How the agent mapped a LAN config onto the host, if it had to (as
    /// the agent sent it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocation: Option<RawJson>,
    /// Why the host failed, if it did.
    pub error: Option<String>,
}

impl HostDeploy {
    /// Whether every decky on the host ended up running (or cleanly exited).
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
            && self
                .deckies
                .iter()
                .all(|d| d.state == "running" || d.state == "exited")
    }
}

/// How an update, a rollback or a self-update ended on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The new release is live and healthy.
    Updated,
    /// The new release was unhealthy; the previous one runs again.
    RolledBack,
    /// It failed (nothing to roll back to, the revert failed, or the host
    /// could not be reached).
    Failed,
    /// Not attempted (a halted or cancelled rollout).
    Skipped,
}

impl UpdateOutcome {
    /// The spelling on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOutcome::Updated => "updated",
            UpdateOutcome::RolledBack => "rolled_back",
            UpdateOutcome::Failed => "failed",
            UpdateOutcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for UpdateOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's result of a rollout or a rollback (an update job's result is
/// a list of these; `POST /v1/hosts/{name}/rollback` answers one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateResult {
    /// Host.
    pub host: String,
    /// How it ended.
    pub outcome: UpdateOutcome,
    /// Active release label afterwards, when known.
    pub release: Option<String>,
    /// What happened.
    pub detail: String,
    /// Why a new release was refused, as the updater saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ProbeFailure>,
}

/// The evidence of a failed update, from the updater's answer (worker
/// text, made inert by the master).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProbeFailure {
    /// One line per probe attempt of the new release.
    pub probe: Vec<String>,
    /// The probe of the restored release.
    pub restore_probe: Vec<String>,
    /// The failed agent's last output (without terminal escape codes).
    pub agent_output: String,
}

pub mod events;
pub use events::{
    AlertCreated, AlertDelivery, AlertRule, AlertTestResult, ConsoleLogin, Event, EventTopic,
    NewAlertRule,
};
