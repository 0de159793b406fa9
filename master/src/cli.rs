//! The `decnet` command line: argument definitions and the commands.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage or setup error
//! (bad arguments, missing CA, refused without confirmation).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use decnet_fleet::enrollment::{self, EnrollRequest};
use decnet_fleet::{
    AuditOutcome, CertRecord, CertRole, FleetDb, HostStatus, RenewPolicy, unix_now,
};
use decnet_pki::{Bundle, BundleKind, HostName, LeafSpec, Role};

use crate::home::MasterHome;
use crate::table::{fleet_table, format_time};
use crate::usage::{UsageError, audit, cli_actor, load_ca, open_db, partial};

/// decnet: mTLS control plane for worker fleets.
#[derive(Debug, Parser)]
#[command(name = "decnet", version, about, propagate_version = true)]
pub struct Cli {
    /// decnet home directory (CA, database, bundles).
    #[arg(long, global = true, env = "DECNET_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Fleet database URL (sqlite://PATH or postgres://…); default
    /// sqlite://<home>/master.db.
    #[arg(
        long,
        global = true,
        env = "DECNET_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Run operator commands against the master named by this context
    /// (`decnet login` makes one; `local`: none, work on this host's files);
    /// default: the one `decnet context use` chose.
    #[arg(long, global = true, env = "DECNET_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Log line format on stderr: text (colour only on a terminal, never
    /// with NO_COLOR) or json (one object per line).
    #[arg(long, global = true, env = "DECNET_LOG_FORMAT", default_value = "text")]
    pub log_format: decnet_telemetry::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log level when `DECNET_LOG` says nothing: `info` for the
    /// daemons (`master serve`, `listener`: what they accept and refuse is
    /// their operator's record, as for the agent and updater), `warn` for
    /// commands (their output is the answer).
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Listener { .. } | Command::Master(MasterCommand::Serve { .. }) => "info",
            _ => "warn",
        }
    }
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Manage the worker fleet.
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// Run a whole local fleet on loopback (CA, listener, N workers with agent,
    /// updater and forwarder), drive it through deploy, update, revert and
    /// logs, verifying every step; cleans up unless --keep.
    Demo {
        /// Number of workers.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Leave the fleet running at the end and print how to talk to it.
        #[arg(long)]
        keep: bool,
        /// Put the demo here instead of a new temp dir.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Build and sign release tarballs.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Receive the fleet's logs: RFC 5425 syslog over mTLS, credited to the
    /// peer certificate's CN.
    Listener {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0")]
        host: std::net::IpAddr,
        /// Listen port.
        #[arg(long, default_value_t = 6514)]
        port: u16,
        /// Raw log file (one line per message); default <home>/logs/fleet.log.
        #[arg(long, value_name = "PATH")]
        log_path: Option<PathBuf>,
        /// JSON log file (one object per message); default <home>/logs/fleet.json.
        #[arg(long, value_name = "PATH")]
        json_path: Option<PathBuf>,
        /// Accept plain TCP instead of TLS (loopback addresses only).
        #[arg(long)]
        plaintext: bool,
        /// Largest accepted frame in bytes.
        #[arg(long, default_value_t = 65536)]
        max_frame: usize,
        /// Close a connection silent this many seconds.
        #[arg(long, default_value_t = 600)]
        idle_timeout: u64,
        /// Per-certificate budgets, rotation and the free-space watermark.
        #[command(flatten)]
        storage: crate::listener_cmd::LogStorageArgs,
        /// The Prometheus endpoint.
        #[command(flatten)]
        metrics: decnet_server::metrics::MetricsArgs,
    },
    /// The master daemon: control API (heartbeats) and log listener.
    #[command(subcommand)]
    Master(MasterCommand),
    /// Show the audit log (newest first).
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only what this actor did: `operator:NAME`, `local:USER`, or a bare
        /// name (that operator or that local user).
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The people (and scripts) who drive the fleet: roles, host scopes,
    /// enrolment tokens, revocation. Admins only through a context; on the
    /// master host, as its service user, without one (the bootstrap).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Log in to a master as an operator: make a key here (it never leaves
    /// this machine), enrol it with a one-time token from `decnet operator
    /// add`, and save a context for every later command.
    Login {
        /// The master's control API, HOST[:8770] (where workers join).
        #[arg(long, value_name = "HOST[:PORT]", required_unless_present = "renew")]
        master: Option<String>,
        /// Renew the certificate of the context in use (or --context NAME)
        /// before it expires: a new key made here, the old certificate
        /// revoked. No token needed while the certificate is valid.
        #[arg(long, conflicts_with_all = ["master", "token", "token_file", "as_name", "force"])]
        renew: bool,
        /// The token (or --token-file; argv is visible to local users).
        #[arg(long, env = "DECNET_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A file holding the token (mode 0600).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Save the context under this name (default: the operator's name;
        /// `--context NAME` says the same).
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
        /// Replace a context of the same name (its key with it).
        #[arg(long)]
        force: bool,
    },
    /// The saved contexts (`decnet login` makes them).
    #[command(subcommand)]
    Context(ContextCommand),
    /// Long operations the master daemon runs (a deploy through a context):
    /// list, show, follow (resumes where it is), cancel.
    #[command(subcommand)]
    Job(JobCommand),
    /// The master's event stream (through a context): host state, silent
    /// hosts, certificates, jobs, audit entries, log lines. The backlog,
    /// or with --follow everything from now on (resuming after a cut).
    Events(crate::events_cmd::EventsArgs),
    /// Webhooks for events that need a person (admin, through a context).
    #[command(subcommand)]
    Alert(crate::events_cmd::AlertCommand),
    /// Open the web console: a one-time URL (single use, about a minute)
    /// that signs a browser in as you (through a context), or as
    /// --operator (on the master host).
    Console(crate::events_cmd::ConsoleArgs),
}

pub use decnet_cli::job_cmd::JobCommand;

/// `decnet operator …`
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Add an operator and print its one-time enrolment token.
    Add {
        /// Its name (CN operator@NAME).
        name: String,
        /// viewer (reads), deployer (viewer plus deploy, teardown, update,
        /// rollback, renew) or admin (everything).
        #[arg(long)]
        role: String,
        /// Host-name globs it is limited to (comma-separated, e.g. 'w*,lab?');
        /// default: every host.
        #[arg(long, value_delimiter = ',', value_name = "GLOB,…")]
        hosts: Vec<String>,
        /// How long the token is valid (e.g. 1h, 30m; at most 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A new one-time token for an operator (a login on a new machine, or
    /// after its certificate expired).
    Token {
        /// The operator.
        name: String,
        /// How long the token is valid.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the operators.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one operator.
    Show {
        /// The operator.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change an operator's role (and, with --hosts, its host scope).
    SetRole {
        /// The operator.
        name: String,
        /// viewer, deployer or admin.
        role: String,
        /// New host globs (comma-separated; '*' for every host).
        #[arg(long, value_delimiter = ',', value_name = "GLOB,…")]
        hosts: Option<Vec<String>>,
    },
    /// Revoke an operator: refused from its next request on, open
    /// connections included; its certificates join the CRL.
    Revoke {
        /// The operator.
        name: String,
    },
}

/// `decnet context …`
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the saved contexts (the one in use marked `*`).
    List,
    /// Use this context from now on (`local`: none).
    Use {
        /// The context.
        name: String,
    },
    /// Remove a context (its key with it).
    Remove {
        /// The context.
        name: String,
    },
}

/// A host name as given on the command line, in its one normal form (what
/// enrolment stores: lowercase), so `W9` and `w9` are the same host in
/// every command.
fn host_name(s: &str) -> Result<String, String> {
    HostName::new(s)
        .map(|h| h.as_str().to_string())
        .map_err(|e| e.to_string())
}

/// Who a certificate is for: shared by `swarm enroll` and `swarm token create`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Host name: becomes the agent CN (DNS label characters only).
    #[arg(value_parser = host_name, long)]
    pub host: String,
    /// Address the master dials (IP or DNS name); also added as a SAN.
    /// Required, except for `swarm enroll --reissue`, which keeps the recorded one.
    #[arg(long)]
    pub address: Option<String>,
    /// Extra SANs (comma separated).
    #[arg(long, value_delimiter = ',', value_name = "SAN,…")]
    pub sans: Vec<String>,
    /// Also cover the host's updater (CN updater@<host>).
    #[arg(long)]
    pub updater: bool,
}

/// Where the CA lives.
#[derive(Debug, Args)]
pub struct CaDirArg {
    /// CA directory (default <home>/ca).
    #[arg(long, env = "DECNET_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
}

/// `decnet ca rotation …`
#[derive(Debug, Subcommand)]
pub enum RotationCommand {
    /// Create the new CA and begin: masters trust both CAs and sign with
    /// the new one; workers take the new trust set and renew under it.
    Start {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The phase, and per host which CA its certificates chain to, whether
    /// it trusts both, and when it was last heard.
    Status {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop the old CA: refused while a host, operator or monitor still
    /// holds a certificate of it (listed), unless --force (which names
    /// exactly who is cut off). The old key is destroyed, or archived with
    /// --archive-key.
    Finish {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Finish even though the listed hosts/operators are cut off.
        #[arg(long)]
        force: bool,
        /// Move the old CA key (and certificate) into DIR (0700) instead
        /// of destroying it, to be taken offline.
        #[arg(long, value_name = "DIR")]
        archive_key: Option<PathBuf>,
        /// Wait up to SECS for the last hosts to renew before deciding.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Go back to the old CA alone: it signs again, hosts renew back under
    /// it, and the new CA's key is destroyed once nothing depends on it.
    Abort {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Complete even though the listed hosts are cut off.
        #[arg(long)]
        force: bool,
        /// Wait up to SECS for the hosts to renew back before deciding.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
}

/// `decnet ca …`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA and the master's own `decnet-master` bundle.
    Init {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Replace an existing CA (every issued certificate stops being trusted).
        #[arg(long)]
        force: bool,
        /// Extra SANs for the master certificate (comma separated).
        #[arg(long, value_delimiter = ',', value_name = "SAN,…")]
        sans: Vec<String>,
    },
    /// Replace the master's own certificate (the old one is revoked; workers
    /// accept the new one at once, and refuse the old one from their next
    /// revocation list). A running `decnet master serve` switches by itself.
    RotateMaster {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// SANs of the new certificate (default: the old one's).
        #[arg(long, value_delimiter = ',', value_name = "SAN,…")]
        sans: Vec<String>,
    },
    /// Issue a certificate for a metrics scraper (CN `monitor@NAME`): the
    /// only identity the daemons' mTLS `/metrics` endpoints admit. Issuing
    /// NAME again revokes its earlier certificate.
    IssueMonitor {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// The monitor's name (e.g. prometheus).
        name: String,
        /// Where to write monitor.key, monitor.crt and ca.crt; default
        /// <home>/monitors/NAME.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Revoke every certificate of monitor NAME (the daemons refuse it from
    /// their next revocation list).
    RevokeMonitor {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// The monitor's name.
        name: String,
    },
    /// Replace the CA without downtime: `start` (a new CA beside the
    /// current one; every host trusts both and renews under the new one),
    /// `status`, `finish` (the old CA is dropped and its key destroyed or
    /// archived), `abort` (back to the old CA alone).
    #[command(subcommand)]
    Rotation(RotationCommand),
    /// Show the CA and the master bundle.
    Show {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `decnet master …`
#[derive(Debug, Subcommand)]
pub enum MasterCommand {
    /// Serve the control API over mTLS (and the log listener beside it).
    Serve {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Listen address of the control API and the listener.
        #[arg(long, default_value = "0.0.0.0")]
        host: std::net::IpAddr,
        /// Control API port.
        #[arg(long, default_value_t = 8770)]
        port: u16,
        /// Fleet API port (operators, `/v1`; their certificates only).
        #[arg(long, default_value_t = 8771)]
        api_port: u16,
        /// Do not serve the fleet API.
        #[arg(long)]
        no_api: bool,
        /// Web console port (TLS with the master's certificate; browsers
        /// sign in with a one-time URL from `decnet console`).
        #[arg(long, default_value_t = 8772)]
        console_port: u16,
        /// Do not serve the web console.
        #[arg(long)]
        no_console: bool,
        /// Log listener port (the listener runs here: a separate
        /// `decnet listener` on the same port is refused with a hint).
        #[arg(long, default_value_t = 6514)]
        listener_port: u16,
        /// Do not run the log listener (run `decnet listener` on its own).
        #[arg(long)]
        no_listener: bool,
        /// Raw log file; default <home>/logs/fleet.log.
        #[arg(long, value_name = "PATH")]
        log_path: Option<PathBuf>,
        /// JSON log file; default <home>/logs/fleet.json.
        #[arg(long, value_name = "PATH")]
        json_path: Option<PathBuf>,
        /// Per-certificate log budgets, rotation and the free-space watermark.
        #[command(flatten)]
        storage: crate::listener_cmd::LogStorageArgs,
        /// Mark a host unreachable after this many seconds without a heartbeat.
        #[arg(long, default_value_t = 90)]
        unreachable_after: u64,
        /// Validity of renewed certificates (e.g. 825d, 12h, 90s).
        #[arg(long, default_value = "825d")]
        leaf_validity: String,
        /// At most one renewal per host and role within this (e.g. 60s, 0s).
        #[arg(long, default_value = "60s")]
        renew_min_interval: String,
        /// How long a certificate replaced by a renewal stays accepted after
        /// its successor was first presented; then it is revoked.
        #[arg(long, default_value = "5m")]
        renew_grace: String,
        /// Delete audit entries older than this (e.g. 400d; 0 keeps them forever).
        #[arg(long, default_value = "400d")]
        audit_retention: String,
        /// Connections to workers held at once by all fleet-wide requests
        /// together (`status`, `check`, deploys, updates, the doctor),
        /// whatever each one's `--max-parallel`.
        #[arg(long, default_value_t = crate::fleet_ops::DEFAULT_MAX_OUTBOUND)]
        max_outbound: usize,
        /// The Prometheus endpoint.
        #[command(flatten)]
        metrics: decnet_server::metrics::MetricsArgs,
    },
}

/// `decnet swarm token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use token for HOST; print it once.
    Create {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// The host, its address and SANs, and whether its updater may join too.
        #[command(flatten)]
        target: HostArgs,
        /// Lifetime, e.g. 15m, 2h, 900s.
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
}

/// The longest validity or lifetime accepted anywhere (the CA's own).
pub const MAX_DURATION: std::time::Duration =
    std::time::Duration::from_secs(decnet_pki::ca::CA_VALIDITY_DAYS as u64 * 86_400);

/// `"15m"`, `"2h"`, `"825d"`, `"900s"`, `"900"` → a duration between
/// `min` and [`MAX_DURATION`]; anything else is a usage error naming `flag`.
pub fn parse_duration(
    flag: &str,
    s: &str,
    min: std::time::Duration,
) -> Result<std::time::Duration, UsageError> {
    let t = s.trim();
    let parsed = match t.parse::<u64>() {
        Ok(n) => Ok(std::time::Duration::from_secs(n)),
        Err(_) => humantime::parse_duration(t).map_err(|e| e.to_string()),
    };
    match parsed {
        Ok(d) if d < min => Err(UsageError(format!(
            "{flag} {s:?} is too short (at least {})",
            humantime::format_duration(min)
        ))),
        Ok(d) if d > MAX_DURATION => Err(UsageError(format!(
            "{flag} {s:?} is too long (at most {} days)",
            decnet_pki::ca::CA_VALIDITY_DAYS
        ))),
        Ok(d) => Ok(d),
        Err(e) => Err(UsageError(format!(
            "{flag} {s:?} is not a duration ({e}; e.g. 90s, 15m, 12h, 825d)"
        ))),
    }
}

/// `decnet release …`
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Create an Ed25519 release signing key (KEY, 0600) and its public key (KEY.pub).
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Pack DIR (its bin/ and share/, never keys, .env, databases or logs)
    /// into a .tar.gz with its SHA-256 and its manifests (target, label,
    /// version, digest), signed with --sign.
    Pack {
        /// The release directory (with bin/decnet-agent and/or bin/decnet-updater).
        dir: PathBuf,
        /// The tarball to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Release label (default: the directory name).
        #[arg(long)]
        label: Option<String>,
        /// Release version (semver, e.g. 1.4.0 or v1.4.0-rc.1), compared by
        /// updaters to refuse downgrades; none: ordered by signing time.
        #[arg(long = "release-version", value_name = "VERSION")]
        release_version: Option<String>,
        /// Sign with this private key.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Sign a downgrade permit: updaters with a release keyring install
        /// it even below their floor (needs --sign).
        #[arg(long, requires = "sign")]
        permit_downgrade: bool,
    },
}

/// `decnet swarm …`
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Issue a worker's agent (and updater) bundle and record the host.
    Enroll {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// The host, its address and SANs, and whether to issue its updater bundle.
        #[command(flatten)]
        target: HostArgs,
        /// Re-enroll an enrolled host: fresh certificates, the old ones revoked.
        #[arg(long)]
        reissue: bool,
        /// Write the bundles here (only here: no copy of the keys stays on
        /// the master) as <DIR>/agent and <DIR>/updater, ready to copy to
        /// the worker's ~/.decnet/.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// The master's control API as workers reach it, HOST[:8770],
        /// recorded in the bundles: the worker heartbeats, renews and fetches
        /// revocations there (a worker without a master refuses to start).
        #[arg(long, value_name = "HOST[:8770]", env = "DECNET_MASTER_ADDRESS")]
        master: Option<String>,
        /// Agent port the master dials (default 8765; a reissue keeps the recorded one).
        #[arg(long)]
        agent_port: Option<u16>,
        /// Updater port the master dials (default 8766; a reissue keeps the recorded one).
        #[arg(long)]
        updater_port: Option<u16>,
        /// Certificate validity (e.g. 825d, 12h); agents renew at about 2/3 of it.
        #[arg(long, default_value = "825d")]
        valid_for: String,
    },
    /// List enrolled hosts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one host.
    Show {
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change where the master dials a host (address or ports).
    SetEndpoint {
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
        /// New address.
        #[arg(long)]
        address: Option<String>,
        /// New agent port.
        #[arg(long)]
        agent_port: Option<u16>,
        /// New updater port.
        #[arg(long)]
        updater_port: Option<u16>,
    },
    /// One-time join tokens (the worker generates its own key).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask a host to renew its certificates: the agent at its next
    /// heartbeat, the updater (asked directly) at once.
    Renew {
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
    },
    /// Deploy a deployment config (JSON, see wiki/Agent.md) to hosts.
    Deploy {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// The deployment config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Target host (repeatable); all live hosts when omitted.
        #[arg(value_parser = host_name, long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Return once the agents accepted the deploy, without waiting.
        #[arg(long)]
        no_wait: bool,
        /// Ask each agent what it would run (its compose file, the LAN
        /// addresses and any relocalisation) without running anything;
        /// prints JSON.
        #[arg(long, conflicts_with = "no_wait")]
        dry_run: bool,
        /// Hosts talked to at once.
        #[arg(long, default_value_t = crate::fleet_ops::DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
        max_parallel: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the evidence archives of a host (what torn-down process deckies
    /// left in their working directories), or fetch one of a decky: the
    /// newest, or `--id`, as a gzipped tar.
    Evidence {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
        /// Fetch this decky's archive (list when omitted).
        decky: Option<String>,
        /// The archive to fetch (default: the decky's newest).
        #[arg(long, requires = "decky")]
        id: Option<String>,
        /// Where to write it (default `./HOST-DECKY-ID.tar.gz`; never
        /// overwritten).
        #[arg(long, short = 'o', value_name = "FILE", requires = "decky")]
        out: Option<std::path::PathBuf>,
        /// Print JSON (the list).
        #[arg(long)]
        json: bool,
    },
    /// Tear down one decky or every decky of a host.
    Teardown {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
        /// Only this decky.
        #[arg(long)]
        decky: Option<String>,
    },
    /// Show the deckies of one host or of every host.
    Status {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Host name (all hosts when omitted).
        #[arg(value_parser = host_name)]
        host: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Hosts talked to at once.
        #[arg(long, default_value_t = crate::fleet_ops::DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
        max_parallel: usize,
    },
    /// Report what needs attention: expiring certificates, silent hosts,
    /// clock skew (from heartbeats), and, by dialing every host, pin
    /// mismatches. Exit code: 0 all clear, 1 warnings, 3 errors.
    Doctor {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Warn about certificates expiring within this (e.g. 30d).
        #[arg(long, default_value = "30d")]
        expiry_warning: String,
        /// A host silent longer than this is an error (e.g. 90s, 5m).
        #[arg(long, default_value = "90s")]
        silent_after: String,
        /// Warn when a host's clock is off by more than this (e.g. 5s).
        #[arg(long, default_value = "5s")]
        max_skew: String,
        /// Do not dial the hosts (database checks only; no pin check).
        #[arg(long)]
        no_probe: bool,
        /// Hosts talked to at once.
        #[arg(long, default_value_t = crate::fleet_ops::DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
        max_parallel: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Probe every host's agent concurrently and record who answered.
    Check {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Hosts talked to at once.
        #[arg(long, default_value_t = crate::fleet_ops::DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
        max_parallel: usize,
    },
    /// Push a release to hosts' updaters: canaries first, bounded
    /// parallelism, halt at the first failure.
    #[command(group(clap::ArgGroup::new("targets").required(true).multiple(false).args(["hosts", "all"])))]
    Update {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// A release directory (packed on the fly) or a .tar.gz.
        #[arg(long, value_name = "DIR|TARBALL")]
        release: PathBuf,
        /// Target host (repeatable).
        #[arg(value_parser = host_name, long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Every live host.
        #[arg(long)]
        all: bool,
        /// Hosts updated at once.
        #[arg(long, default_value_t = 4)]
        max_parallel: usize,
        /// Update this many hosts first, one at a time; a failure there halts the rollout.
        #[arg(long, default_value_t = 0)]
        canary: usize,
        /// Also replace each updater's own binary (bin/decnet-updater in the release).
        #[arg(long)]
        include_self: bool,
        /// Keep going after a host fails.
        #[arg(long)]
        continue_on_error: bool,
        /// Release label (default: directory or file name).
        #[arg(long)]
        label: Option<String>,
        /// Release version (semver); updaters refuse a version below the
        /// active one (with a release keyring: below their floor). None:
        /// ordered by signing time.
        #[arg(long = "release-version", value_name = "VERSION")]
        release_version: Option<String>,
        /// Install even when the version is below the active one (updaters
        /// without a release keyring only; with one, see --permit-downgrade).
        #[arg(long)]
        allow_downgrade: bool,
        /// Sign the release with this key.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Sign a downgrade permit into the manifests: updaters with a
        /// release keyring install it below their floor (needs --sign).
        #[arg(long, requires = "sign")]
        permit_downgrade: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a host's previous release.
    Rollback {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
    },
    /// A host's installed releases (active first) and its update history.
    Releases {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A compromised host (suspect, or known stolen): revoke every
    /// certificate it has, whoever holds it; it stays listed, burned, until
    /// it joins again with a fresh token.
    Burn {
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Remove a host from the fleet: revoke its certificates and delete the
    /// master's copies of its bundles.
    Decommission {
        /// CA location.
        #[command(flatten)]
        ca: CaDirArg,
        /// Host name.
        #[arg(value_parser = host_name)]
        host: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        home,
        database_url,
        command,
        context,
        ..
    } = cli;
    let resolve = |ca: Option<PathBuf>| MasterHome::resolve(home.clone(), ca, database_url.clone());
    let command = match command {
        Command::Login { renew: true, .. } => {
            return crate::operator_cmd::renew(context.as_deref()).await;
        }
        Command::Login {
            master,
            token,
            token_file,
            as_name,
            force,
            ..
        } => {
            let master = master.ok_or_else(|| UsageError("--master is required".into()))?;
            // `decnet login --context NAME` names the context it saves (as
            // --as does); a DECNET_CONTEXT in the environment does not.
            let from_env = std::env::var("DECNET_CONTEXT").ok();
            let named = context.filter(|c| from_env.as_deref() != Some(c.as_str()));
            if let (Some(a), Some(c)) = (&as_name, &named)
                && a != c
            {
                return Err(UsageError(format!(
                    "--as {a} and --context {c} name two contexts: give one"
                ))
                .into());
            }
            return crate::operator_cmd::login(
                &master,
                token.as_deref(),
                token_file.as_deref(),
                as_name.or(named),
                force,
            )
            .await;
        }
        Command::Context(c) => return crate::operator_cmd::context_command(c),
        // Commands of the master host itself, or of no master at all.
        c @ (Command::Demo { .. }
        | Command::Release(_)
        | Command::Master(_)
        | Command::Listener { .. }
        | Command::Ca(CaCommand::Init { .. })) => c,
        c => match decnet_api_client::context::selected(context.as_deref())? {
            Some(ctx) => return crate::remote::run(&ctx, c).await,
            None => c,
        },
    };
    match command {
        Command::Login { .. } | Command::Context(_) => unreachable!("handled above"),
        Command::Job(_) => Err(UsageError(
            "jobs run in the master daemon: use a context (decnet login, decnet context use NAME)"
                .into(),
        )
        .into()),
        Command::Events(_) | Command::Alert(_) => Err(UsageError(
            "events and alerts live in the master daemon: use a context (decnet login, decnet context use NAME)"
                .into(),
        )
        .into()),
        Command::Console(a) => crate::console_cmd::console_local(&resolve(None), a).await,
        Command::Operator(c) => crate::operator_cmd::local(&resolve(None), c).await,
        Command::Ca(CaCommand::Init { ca, force, sans }) => {
            ca_init(&resolve(ca.ca_dir), force, &sans).await
        }
        Command::Ca(CaCommand::Show { ca, json }) => ca_show(&resolve(ca.ca_dir), json),
        Command::Ca(CaCommand::Rotation(cmd)) => match cmd {
            RotationCommand::Start { ca, json } => {
                crate::ca_rotation_cmd::start(&resolve(ca.ca_dir), json).await
            }
            RotationCommand::Status { ca, json } => {
                crate::ca_rotation_cmd::status(&resolve(ca.ca_dir), json).await
            }
            RotationCommand::Finish {
                ca,
                force,
                archive_key,
                wait,
            } => {
                let old_key = match archive_key {
                    Some(d) => crate::ca_rotation_cmd::OldKey::ArchiveTo(d),
                    None => crate::ca_rotation_cmd::OldKey::Destroy,
                };
                crate::ca_rotation_cmd::finish(
                    &resolve(ca.ca_dir),
                    force,
                    old_key,
                    std::time::Duration::from_secs(wait),
                )
                .await
            }
            RotationCommand::Abort { ca, force, wait } => {
                crate::ca_rotation_cmd::abort(
                    &resolve(ca.ca_dir),
                    force,
                    std::time::Duration::from_secs(wait),
                )
                .await
            }
        },
        Command::Ca(CaCommand::IssueMonitor { ca, name, out }) => {
            crate::monitor_cmd::issue(&resolve(ca.ca_dir), &name, out.as_deref()).await
        }
        Command::Ca(CaCommand::RevokeMonitor { ca, name }) => {
            crate::monitor_cmd::revoke(&resolve(ca.ca_dir), &name).await
        }
        Command::Ca(CaCommand::RotateMaster { ca, sans }) => {
            ca_rotate_master(&resolve(ca.ca_dir), &sans).await
        }
        Command::Swarm(SwarmCommand::Enroll {
            ca,
            target:
                HostArgs {
                    host,
                    address,
                    sans,
                    updater,
                },
            reissue,
            out_dir,
            master,
            agent_port,
            updater_port,
            valid_for,
        }) => {
            let validity = parse_duration(
                "--valid-for",
                &valid_for,
                std::time::Duration::from_secs(10),
            )?;
            let req = EnrollRequest {
                validity: Some(validity),
                host,
                address,
                sans,
                updater,
                reissue,
                out_dir,
                master: master.map(|m| decnet_swarm_client::transport::with_default_port(&m, 8770)),
                agent_port,
                updater_port,
            };
            swarm_enroll(&resolve(ca.ca_dir), &req).await
        }
        Command::Swarm(SwarmCommand::Deploy {
            ca,
            config,
            hosts,
            no_wait,
            dry_run,
            max_parallel,
            json,
        }) => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            if dry_run {
                let r =
                    crate::fleet_ops::deploy_plan(&db, &home.ca_layout(), &config, &hosts).await;
                db.close().await;
                return partial(r?, "some agents refused the config");
            }
            let r = crate::fleet_ops::deploy(
                &db,
                &home.ca_layout(),
                &cli_actor(),
                &config,
                &hosts,
                crate::fleet_ops::DeployOptions {
                    wait: !no_wait,
                    json,
                    parallel: max_parallel,
                },
            )
            .await;
            db.close().await;
            partial(r?, "the deploy did not succeed on every host")
        }
        Command::Swarm(SwarmCommand::SetEndpoint {
            host,
            address,
            agent_port,
            updater_port,
        }) => {
            let home = resolve(None);
            let db = open_db(&home).await?;
            let req = decnet_api::SetEndpoint {
                address,
                agent_port,
                updater_port,
            };
            let r = crate::ops::set_endpoint(&db, &host, &req, &cli_actor()).await;
            db.close().await;
            r.map_err(crate::ops::OpError::into_cli)?;
            println!("{host}: endpoint updated");
            Ok(())
        }
        Command::Swarm(SwarmCommand::Evidence {
            ca,
            host,
            decky,
            id,
            out,
            json,
        }) => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let r = async {
                use crate::fleet_ops::{NewFile, evidence_fetch, evidence_file, evidence_id};
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                let list = crate::fleet_ops::evidence_list(&db, &pool, &host).await?;
                let Some(decky) = decky else {
                    return crate::fleet_ops::print_evidence_list(&host, &list, json);
                };
                let id = evidence_id(&list, &host, &decky, id.as_deref())?;
                let out = out.unwrap_or_else(|| evidence_file(&host, &decky, &id));
                let (new_file, mut file) = NewFile::create(&out).await?;
                let max = decnet_swarm_client::agent::MAX_EVIDENCE;
                match evidence_fetch(&db, &pool, &cli_actor(), &host, &decky, &id, &mut file, max)
                    .await
                {
                    Ok(bytes) => {
                        new_file.commit(file).await?;
                        print_evidence_fetched(&host, &decky, &id, bytes, &out);
                        Ok(())
                    }
                    Err(e) => {
                        drop(file);
                        new_file.abandon();
                        Err(e)
                    }
                }
            }
            .await;
            db.close().await;
            r
        }
        Command::Swarm(SwarmCommand::Teardown { ca, host, decky }) => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let r = async {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                crate::fleet_ops::teardown(&db, &pool, &cli_actor(), &host, decky.as_deref()).await
            }
            .await;
            db.close().await;
            crate::fleet_ops::print_torn_down(&host, &r?);
            Ok(())
        }
        Command::Swarm(SwarmCommand::Status {
            ca,
            host,
            json,
            max_parallel,
        }) => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let r = crate::fleet_ops::status(
                &db,
                &home.ca_layout(),
                host.as_deref(),
                json,
                max_parallel,
            )
            .await;
            db.close().await;
            partial(r?, "some hosts did not answer")
        }
        Command::Swarm(SwarmCommand::Doctor {
            ca,
            expiry_warning,
            silent_after,
            max_skew,
            no_probe,
            max_parallel,
            json,
        }) => {
            let policy = doctor_policy(&expiry_warning, &silent_after, &max_skew)?;
            let code = crate::doctor::run(
                &resolve(ca.ca_dir),
                &policy,
                (!no_probe).then_some(max_parallel),
                json,
            )
            .await?;
            doctor_verdict(code)
        }
        Command::Swarm(SwarmCommand::Check {
            ca,
            json,
            max_parallel,
        }) => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let r = crate::fleet_ops::check(&db, &home.ca_layout(), json, max_parallel).await;
            db.close().await;
            partial(r?, "some hosts did not answer")
        }
        Command::Demo { workers, keep, dir } => {
            if workers == 0 || workers > 20 {
                return Err(UsageError("--workers must be between 1 and 20".into()).into());
            }
            let opts = crate::demo::DemoOptions { workers, keep, dir };
            tokio::select! {
                r = crate::demo::run(&opts) => r,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("\ninterrupted; cleaning up");
                    Err(anyhow::anyhow!("demo interrupted"))
                }
            }
        }
        Command::Release(ReleaseCommand::Keygen { out, force }) => {
            if out.exists() && !force {
                return Err(UsageError(format!(
                    "{} exists; pass --force to replace it",
                    out.display()
                ))
                .into());
            }
            let public = decnet_pki::signing::ReleaseSigner::generate_to(&out)?;
            println!(
                "private key: {} (0600; keep it off the workers)",
                out.display()
            );
            println!(
                "public key:  {} = {public}",
                decnet_pki::signing::public_key_path(&out).display()
            );
            println!("Workers: decnet-updater serve --release-pubkey <that .pub file>");
            Ok(())
        }
        Command::Release(ReleaseCommand::Pack {
            dir,
            out,
            label,
            release_version,
            sign,
            permit_downgrade,
        }) => {
            let signing = signing_of(sign.as_deref(), permit_downgrade)?;
            let label = label.unwrap_or_else(|| dir_label(&dir));
            let p = crate::release::pack(&dir, &out, &label, release_version.as_deref(), &signing)
                .map_err(|e| UsageError(format!("{e:#}")))?;
            println!("{}  {}", p.sha256, p.tarball.display());
            println!(
                "label {} version {} — {} file(s){}",
                p.label,
                p.version,
                p.files.len(),
                match (signing.signer.is_some(), permit_downgrade) {
                    (true, true) => ", manifests signed with a downgrade permit",
                    (true, false) => ", manifests signed",
                    _ => "",
                }
            );
            Ok(())
        }
        Command::Swarm(SwarmCommand::Update {
            ca,
            release,
            hosts,
            all,
            max_parallel,
            canary,
            include_self,
            continue_on_error,
            label,
            release_version,
            allow_downgrade,
            sign,
            permit_downgrade,
            json,
        }) => {
            let _ = all;
            let home = resolve(ca.ca_dir);
            // Unknown or decommissioned hosts are refused before anything is packed.
            let db = open_db(&home).await?;
            crate::fleet_ops::select_hosts(&db, &hosts).await?;
            let packed = pack_release(
                &release,
                label.as_deref(),
                release_version.as_deref(),
                sign.as_deref(),
                permit_downgrade,
            )?;
            let rel = &packed.release;
            let plan = crate::rollout::RolloutPlan {
                hosts,
                allow_downgrade,
                max_parallel,
                canary,
                include_self,
                continue_on_error,
            };
            if !json {
                println!("release {} (sha256 {})", rel.label, rel.sha256);
            }
            let results =
                crate::rollout::rollout(&db, &home.ca_layout(), &cli_actor(), rel, &plan, !json)
                    .await;
            db.close().await;
            crate::rollout::print_rollout(&results?, json)
        }
        Command::Swarm(SwarmCommand::Token(TokenCommand::Create {
            ca,
            target:
                HostArgs {
                    host,
                    address,
                    sans,
                    updater,
                },
            ttl,
        })) => {
            let home = resolve(ca.ca_dir);
            let req = token_request(host, address, sans, updater, &ttl)?;
            let db = open_db(&home).await?;
            let ca = crate::authorities::signing_ca(&home.ca_layout(), &db).await?;
            let token = crate::ops::create_join_token(&db, &ca, &req, &cli_actor()).await;
            db.close().await;
            let token = token.map_err(crate::ops::OpError::into_cli)?;
            print_join_token(
                &token.to_string(),
                &req.host,
                req.updater,
                req.ttl.as_secs(),
            );
            Ok(())
        }
        Command::Swarm(SwarmCommand::Renew { host }) => {
            let home = resolve(None);
            let db = open_db(&home).await?;
            let r = async {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                crate::ops::request_renewal(&db, &pool, &host, &cli_actor())
                    .await
                    .map_err(crate::ops::OpError::into_cli)
            }
            .await;
            db.close().await;
            let r = r?;
            print_renewal(
                &host,
                r.updater.is_some(),
                r.updater.and_then(|u| u.err()).as_deref(),
            );
            Ok(())
        }
        Command::Swarm(SwarmCommand::Rollback { ca, host }) => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let r = async {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                crate::rollout::rollback(&db, &pool, &cli_actor(), &host).await
            }
            .await;
            db.close().await;
            crate::rollout::print_rollback(&r?)
        }
        Command::Swarm(SwarmCommand::Releases { ca, host, json }) => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let r = async {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                releases_report(&db, &pool, &host).await
            }
            .await;
            db.close().await;
            print_releases(&r?, json)
        }
        Command::Listener {
            ca,
            host,
            port,
            log_path,
            json_path,
            plaintext,
            max_frame,
            idle_timeout,
            storage,
            metrics,
        } => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let settings = crate::listener_cmd::ListenerSettings {
                listen: std::net::SocketAddr::new(host, port),
                log_path: log_path.unwrap_or_else(|| home.home.join("logs/fleet.log")),
                json_path: json_path.unwrap_or_else(|| home.home.join("logs/fleet.json")),
                plaintext,
                max_frame,
                idle_timeout: std::time::Duration::from_secs(idle_timeout),
                grace: RenewPolicy::default().grace,
                budget: storage.budget(),
                disk: storage.disk(),
            };
            let material = if plaintext {
                // Never used for plain TCP; any material will do.
                None
            } else {
                let bundle = crate::fleet_ops::master_bundle(&home.ca_layout())?;
                Some(
                    decnet_pki::MaterialSource::from_parts(bundle, None)
                        .context("building the TLS configuration")?,
                )
            };
            let r = async {
                let l = crate::listener_cmd::bind(
                    material.as_ref(),
                    db.clone(),
                    &settings,
                    crate::listener_cmd::ListenerHost::OnItsOwn,
                )
                .await?;
                decnet_log_relay::metrics::listener_metrics();
                metrics
                    .start("decnet listener", material.as_ref())
                    .await
                    .map_err(|e| UsageError(format!("--metrics-addr: {e}")))?;
                println!("decnet listener listening on {}", l.local_addr());
                l.run(decnet_server::shutdown_signal()).await
            }
            .await;
            db.close().await;
            r
        }
        Command::Master(MasterCommand::Serve {
            ca,
            host,
            port,
            api_port,
            no_api,
            console_port,
            no_console,
            listener_port,
            no_listener,
            log_path,
            json_path,
            storage,
            unreachable_after,
            leaf_validity,
            renew_min_interval,
            renew_grace,
            audit_retention,
            max_outbound,
            metrics,
        }) => {
            crate::fleet_ops::set_max_outbound(max_outbound);
            let home = resolve(ca.ca_dir);
            let renew = RenewPolicy {
                validity: parse_duration(
                    "--leaf-validity",
                    &leaf_validity,
                    std::time::Duration::from_secs(10),
                )?,
                min_interval: parse_duration(
                    "--renew-min-interval",
                    &renew_min_interval,
                    std::time::Duration::ZERO,
                )?,
                grace: parse_duration("--renew-grace", &renew_grace, std::time::Duration::ZERO)?,
            };
            let settings = crate::daemon::MasterSettings {
                api: std::net::SocketAddr::new(host, port),
                fleet_api: (!no_api).then(|| std::net::SocketAddr::new(host, api_port)),
                // The console speaks the fleet API's routes: none without it.
                console: (!no_api && !no_console)
                    .then(|| std::net::SocketAddr::new(host, console_port)),
                listener: (!no_listener).then(|| crate::listener_cmd::ListenerSettings {
                    listen: std::net::SocketAddr::new(host, listener_port),
                    log_path: log_path.unwrap_or_else(|| home.home.join("logs/fleet.log")),
                    json_path: json_path.unwrap_or_else(|| home.home.join("logs/fleet.json")),
                    plaintext: false,
                    max_frame: decnet_log_relay::frame::DEFAULT_MAX_FRAME,
                    idle_timeout: std::time::Duration::from_secs(600),
                    grace: renew.grace,
                    budget: storage.budget(),
                    disk: storage.disk(),
                }),
                unreachable_after: std::time::Duration::from_secs(unreachable_after.max(1)),
                renew,
                metrics,
                audit_retention: match parse_duration(
                    "--audit-retention",
                    &audit_retention,
                    std::time::Duration::ZERO,
                )? {
                    d if d.is_zero() => None,
                    d => Some(d),
                },
            };
            let db = open_db(&home).await?;
            let r = crate::daemon::serve(&home, db.clone(), &settings).await;
            db.close().await;
            r
        }
        Command::Audit { limit, actor, json } => {
            show_audit(&resolve(None), limit, actor.as_deref(), json).await
        }
        Command::Swarm(SwarmCommand::List { json }) => swarm_list(&resolve(None), json).await,
        Command::Swarm(SwarmCommand::Show { host, json }) => {
            swarm_show(&resolve(None), &host, json).await
        }
        Command::Swarm(SwarmCommand::Decommission { ca, host, yes }) => {
            swarm_decommission(&resolve(ca.ca_dir), &host, yes).await
        }
        Command::Swarm(SwarmCommand::Burn { host, yes }) => {
            swarm_burn(&resolve(None), &host, yes).await
        }
    }
}

/// What a fetched evidence archive prints.
pub fn print_evidence_fetched(
    host: &str,
    decky: &str,
    id: &str,
    bytes: u64,
    out: &std::path::Path,
) {
    println!("{host}: {decky} {id}: {bytes} bytes in {}", out.display());
}

/// A release packed for `swarm update` (its tarball in a temporary
/// directory that lives as long as this).
pub struct PackedForUpdate {
    /// The release.
    pub release: crate::release::PackedRelease,
    _scratch: tempfile::TempDir,
}

/// `swarm update --release DIR|TARBALL`: a directory packed on the fly, a
/// tarball taken as it is (with its packed manifests when they fit), signed
/// with `sign` when given — on the machine the operator runs the CLI on,
/// where the release key lives.
pub fn pack_release(
    release: &std::path::Path,
    label: Option<&str>,
    version: Option<&str>,
    sign: Option<&std::path::Path>,
    permit_downgrade: bool,
) -> anyhow::Result<PackedForUpdate> {
    let signing = signing_of(sign, permit_downgrade)?;
    let tmp = tempfile::tempdir()?;
    let rel = if release.is_dir() {
        let label = label
            .map(str::to_string)
            .unwrap_or_else(|| dir_label(release));
        crate::release::pack(
            release,
            &tmp.path().join("release.tar.gz"),
            &label,
            version,
            &signing,
        )
        .map_err(|e| UsageError(format!("{e:#}")))?
    } else if release.is_file() {
        crate::release::existing(release, label, version, &signing, tmp.path())
            .map_err(|e| UsageError(format!("{e:#}")))?
    } else {
        return Err(UsageError(format!(
            "{} is neither a release directory nor a tarball",
            release.display()
        ))
        .into());
    };
    Ok(PackedForUpdate {
        release: rel,
        _scratch: tmp,
    })
}

/// The manifests' signing from `--sign KEY` and `--permit-downgrade`.
fn signing_of(
    key: Option<&std::path::Path>,
    permit_downgrade: bool,
) -> anyhow::Result<crate::release::Signing> {
    Ok(crate::release::Signing {
        signer: match key {
            Some(k) => Some(
                decnet_pki::signing::ReleaseSigner::load(k)
                    .map_err(|e| UsageError(e.to_string()))?,
            ),
            None => None,
        },
        permit_downgrade,
    })
}

/// The default release label: the directory's name.
fn dir_label(dir: &std::path::Path) -> String {
    std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "release".into())
}

async fn ca_init(home: &MasterHome, force: bool, sans: &[String]) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    if (layout.ca_key().exists() || layout.ca_cert().exists()) && !force {
        audit(
            &db,
            "ca.init",
            "ca",
            AuditOutcome::Refused,
            "a CA already exists",
        )
        .await?;
        return Err(UsageError(format!(
            "a CA already exists in {}; refusing to overwrite it (pass --force to replace it — every issued certificate stops being trusted)",
            layout.root().display()
        ))
        .into());
    }
    for s in sans {
        decnet_pki::ca::validate_san(s).map_err(|e| UsageError(e.to_string()))?;
    }
    let ca = decnet_pki::CertificateAuthority::generate().context("generating the CA")?;
    ca.save(&layout).context("writing the CA")?;
    let leaf = ca
        .issue(&LeafSpec::for_role(&Role::Master, sans))
        .context("issuing the master certificate")?;
    let bundle = Bundle::from_issued(BundleKind::Master, &leaf, ca.cert_pem())?;
    bundle
        .write(&layout.master_dir())
        .context("writing the master bundle")?;
    db.record_master_certificate(&CertRecord::of_leaf(
        &leaf,
        decnet_pki::MASTER_CN,
        CertRole::Master,
    ))
    .await
    .context("recording the master certificate")?;
    audit(
        &db,
        "ca.init",
        "ca",
        AuditOutcome::Ok,
        format!(
            "ca_fingerprint={} master_fingerprint={}{}",
            ca.fingerprint(),
            leaf.fingerprint,
            if force {
                " (replaced an existing CA)"
            } else {
                ""
            }
        ),
    )
    .await?;
    db.close().await;
    println!("CA created in {}", layout.root().display());
    println!("  CA fingerprint (sha256):     {}", ca.fingerprint());
    println!(
        "  master bundle:               {}",
        layout.master_dir().display()
    );
    println!("  master fingerprint (sha256): {}", leaf.fingerprint);
    println!("Next: decnet swarm enroll --host NAME --address ADDR [--updater]");
    Ok(())
}

async fn ca_rotate_master(home: &MasterHome, sans: &[String]) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let ca = load_ca(&layout)?;
    for s in sans {
        decnet_pki::ca::validate_san(s).map_err(|e| UsageError(e.to_string()))?;
    }
    let db = open_db(home).await?;
    if db.rotation().await?.is_some() {
        db.close().await;
        return Err(UsageError(
            "a CA rotation is under way: its finish reissues the master certificate (`decnet ca rotation finish`)".into(),
        )
        .into());
    }
    let r = decnet_fleet::revocation::rotate_master(
        &ca,
        &layout,
        &db,
        (!sans.is_empty()).then_some(sans),
    )
    .await;
    match &r {
        Ok(rot) => {
            audit(
                &db,
                "ca.rotate_master",
                decnet_pki::MASTER_CN,
                AuditOutcome::Ok,
                format!(
                    "new={} revoked={}",
                    rot.new_fingerprint, rot.old_fingerprint
                ),
            )
            .await?
        }
        Err(e) => {
            audit(
                &db,
                "ca.rotate_master",
                decnet_pki::MASTER_CN,
                AuditOutcome::Failed,
                e.to_string(),
            )
            .await?
        }
    }
    db.close().await;
    let rot = r.context("rotating the master certificate")?;
    println!("master certificate rotated");
    println!("  new fingerprint (sha256):     {}", rot.new_fingerprint);
    println!("  revoked fingerprint (sha256): {}", rot.old_fingerprint);
    println!(
        "Workers accept the new certificate at once and refuse the old one from their next revocation list; `decnet master serve` switches within seconds. Workers started with --master-fingerprint need the new fingerprint."
    );
    Ok(())
}

fn ca_show(home: &MasterHome, json: bool) -> anyhow::Result<()> {
    print_ca(&ca_info(&home.ca_layout())?, json)
}

/// The CA's and the master certificate's public facts.
pub fn ca_info(layout: &decnet_pki::CaLayout) -> anyhow::Result<decnet_api::CaInfo> {
    let ca = load_ca(layout)?;
    let ca_id = x509_summary(ca.cert_pem())?;
    let master = Bundle::load(&layout.master_dir(), BundleKind::Master).ok();
    Ok(decnet_api::CaInfo {
        ca_dir: layout.root().display().to_string(),
        ca_fingerprint: ca.fingerprint().to_hex(),
        ca_subject: ca_id.0,
        ca_not_after: ca_id.1,
        master_fingerprint: master.as_ref().map(|b| b.identity.fingerprint.to_hex()),
        master_not_after: master
            .as_ref()
            .map(|b| b.identity.not_after.unix_timestamp()),
    })
}

/// What `ca show` prints.
pub fn print_ca(info: &decnet_api::CaInfo, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(());
    }
    println!("CA directory:       {}", info.ca_dir);
    println!(
        "CA subject:         {}",
        crate::table::inert(&info.ca_subject)
    );
    println!("CA fingerprint:     {}", info.ca_fingerprint);
    println!("CA expires:         {}", format_time(info.ca_not_after));
    match (&info.master_fingerprint, info.master_not_after) {
        (Some(f), Some(t)) => {
            println!("master fingerprint: {f}");
            println!("master expires:     {}", format_time(t));
        }
        _ => println!("master bundle:      missing (re-run `decnet ca init --force`)"),
    }
    Ok(())
}

/// When the certificate in `pem` expires (unix seconds).
pub fn cert_not_after(pem: &str) -> anyhow::Result<i64> {
    x509_summary(pem).map(|(_, t)| t)
}

fn x509_summary(pem: &str) -> anyhow::Result<(String, i64)> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .context("CA certificate PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).context("CA certificate")?;
    Ok((
        cert.subject().to_string(),
        cert.validity().not_after.to_datetime().unix_timestamp(),
    ))
}

async fn swarm_enroll(home: &MasterHome, req: &EnrollRequest) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    let ca = crate::authorities::signing_ca(&layout, &db).await?;
    let result = enrollment::enroll(&ca, &layout, &db, req).await;
    let action = if req.reissue {
        "swarm.reissue"
    } else {
        "swarm.enroll"
    };
    match result {
        Ok(out) => {
            audit(
                &db,
                action,
                &req.host,
                AuditOutcome::Ok,
                format!(
                    "address={} agent_fingerprint={} updater_fingerprint={} revoked={}",
                    out.host.address,
                    out.host.agent_fingerprint.as_deref().unwrap_or("-"),
                    out.host.updater_fingerprint.as_deref().unwrap_or("-"),
                    out.revoked.len()
                ),
            )
            .await?;
            db.close().await;
            println!("enrolled {} ({})", out.host.name, out.host.address);
            println!(
                "  agent bundle:   {}  fingerprint {}",
                out.agent_bundle_dir.display(),
                out.host.agent_fingerprint.as_deref().unwrap_or("-")
            );
            if let Some(dir) = &out.updater_bundle_dir {
                println!(
                    "  updater bundle: {}  fingerprint {}",
                    dir.display(),
                    out.host.updater_fingerprint.as_deref().unwrap_or("-")
                );
            }
            if !out.revoked.is_empty() {
                println!("  revoked {} previous certificate(s)", out.revoked.len());
            }
            let with_updater = out.updater_bundle_dir.is_some();
            match (&req.out_dir, with_updater) {
                (Some(dir), true) => println!(
                    "Copy {}/agent and {}/updater to the worker's ~/.decnet/ (keep worker.key and updater.key mode 0600).",
                    dir.display(),
                    dir.display()
                ),
                (Some(dir), false) => println!(
                    "Copy {}/agent to the worker's ~/.decnet/agent/ (keep worker.key mode 0600).",
                    dir.display()
                ),
                (None, true) => println!(
                    "Copy {} to the worker's ~/.decnet/agent/ and its updater/ to ~/.decnet/updater/, keeping keys mode 0600.",
                    out.agent_bundle_dir.display()
                ),
                (None, false) => println!(
                    "Copy {} to the worker's ~/.decnet/agent/, keeping worker.key mode 0600.",
                    out.agent_bundle_dir.display()
                ),
            }
            match &req.master {
                Some(m) => println!("The bundles record the master at {m}."),
                None => println!(
                    "The bundles record no master: start the worker's daemons with --master HOST[:8770] (they refuse to start without one), or enroll with --master."
                ),
            }
            println!(
                "Better: `decnet swarm token create --host {} ...` and `decnet-agent join` on the worker: its key never leaves it.",
                out.host.name
            );
            Ok(())
        }
        Err(e) => {
            let refused = e.is_refusal();
            audit(
                &db,
                action,
                &req.host,
                if refused {
                    AuditOutcome::Refused
                } else {
                    AuditOutcome::Failed
                },
                e.to_string(),
            )
            .await?;
            db.close().await;
            if refused {
                Err(UsageError(e.to_string()).into())
            } else {
                Err(e.into())
            }
        }
    }
}

/// Every host as the fleet API shows it, from the local database.
pub async fn host_views(db: &FleetDb) -> anyhow::Result<Vec<decnet_api::Host>> {
    let hosts = db.hosts().await?;
    let expiry = db.current_certificate_expiry().await?;
    Ok(hosts
        .iter()
        .map(|h| crate::fleet_api::host_view(h, &expiry))
        .collect())
}

async fn swarm_list(home: &MasterHome, json: bool) -> anyhow::Result<()> {
    let db = open_db(home).await?;
    let hosts = host_views(&db).await;
    db.close().await;
    print_host_list(&hosts?, json)
}

/// `swarm list`'s output, local or through a context.
pub fn print_host_list(hosts: &[decnet_api::Host], json: bool) -> anyhow::Result<()> {
    if json {
        let out: Vec<serde_json::Value> = hosts
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if hosts.is_empty() {
        println!("no hosts enrolled (decnet swarm enroll --host NAME --address ADDR)");
        return Ok(());
    }
    print!("{}", fleet_table(hosts, unix_now()));
    Ok(())
}

async fn swarm_show(home: &MasterHome, host: &str, json: bool) -> anyhow::Result<()> {
    let db = open_db(home).await?;
    let Some(h) = db.host(host).await? else {
        db.close().await;
        return Err(UsageError(format!(
            "host {host} is not enrolled (see `decnet swarm list`)"
        ))
        .into());
    };
    let revoked = db.revoked_of(host).await?;
    let expiry = db.current_certificate_expiry().await?;
    db.close().await;
    let mut v = crate::fleet_api::host_view(&h, &expiry);
    v.revoked_fingerprints = Some(revoked);
    print_host(&v, json)
}

/// `swarm show`'s output, local or through a context.
pub fn print_host(h: &decnet_api::Host, json: bool) -> anyhow::Result<()> {
    let now = unix_now();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(h)?)?
        );
        return Ok(());
    }
    println!("host:                {}", h.name);
    println!("address:             {}", h.address);
    println!("agent port:          {}", h.agent_port);
    println!("updater port:        {}", h.updater_port);
    println!("status:              {}", h.status);
    println!("SANs:                {}", h.sans.join(", "));
    println!(
        "agent fingerprint:   {}",
        h.agent_fingerprint.as_deref().unwrap_or("-")
    );
    println!(
        "updater fingerprint: {}",
        h.updater_fingerprint.as_deref().unwrap_or("-")
    );
    let expires = |t: Option<i64>| {
        t.map(|t| {
            format!(
                "{} ({})",
                format_time(t),
                crate::table::format_expiry(t, now)
            )
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("agent cert expiry:   {}", expires(h.agent_cert_not_after));
    println!("updater cert expiry: {}", expires(h.updater_cert_not_after));
    println!("enrolled:            {}", format_time(h.enrolled_at));
    println!(
        "last seen:           {}",
        h.last_seen
            .map(format_time)
            .unwrap_or_else(|| "never".into())
    );
    println!(
        "last heartbeat:      {}",
        h.last_heartbeat.map(format_time).unwrap_or_else(|| {
            "never (its agent sends none: started without --master?)".into()
        })
    );
    if let Some(e) = &h.last_error {
        println!("last error:          {}", crate::table::inert(e));
    }
    if let Some(v) = &h.agent_version {
        println!("agent version:       {}", crate::table::inert(v));
    }
    if let Some(ms) = h.clock_skew_ms {
        println!(
            "clock skew:          {:+.1}s (host minus master)",
            ms as f64 / 1000.0
        );
    }
    println!(
        "revoked certs:       {}",
        h.revoked_fingerprints.as_ref().map_or(0, Vec::len)
    );
    Ok(())
}

/// An operator's confirmation of a destructive `action` on `host`: `--yes`,
/// or the host's name typed at a terminal. A refusal is audited.
async fn confirm_destructive(
    db: &FleetDb,
    action: &str,
    host: &str,
    yes: bool,
    question: &str,
) -> anyhow::Result<()> {
    let verb = action.trim_start_matches("swarm.");
    let refused = match confirm_host(host, yes, verb, question) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    audit(db, action, host, AuditOutcome::Refused, "not confirmed").await?;
    Err(refused)
}

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

/// The host `host` as recorded, or a usage error naming `swarm list`.
async fn enrolled_host(db: &FleetDb, host: &str) -> anyhow::Result<decnet_fleet::HostRecord> {
    match db.host(host).await? {
        Some(h) => Ok(h),
        None => Err(UsageError(format!(
            "host {host} is not enrolled (see `decnet swarm list`)"
        ))
        .into()),
    }
}

async fn swarm_decommission(home: &MasterHome, host: &str, yes: bool) -> anyhow::Result<()> {
    HostName::new(host).map_err(|e| UsageError(e.to_string()))?;
    let db = open_db(home).await?;
    let r = async {
        enrolled_host(&db, host).await?;
        confirm_destructive(
            &db,
            "swarm.decommission",
            host,
            yes,
            &format!("Decommission {host}? Its certificates are revoked and its bundles deleted."),
        )
        .await?;
        let d = crate::ops::decommission(&db, &home.ca_layout(), host, &cli_actor())
            .await
            .map_err(crate::ops::OpError::into_cli)?;
        print_decommissioned(host, d.revoked, d.removed_bundles);
        Ok(())
    }
    .await;
    db.close().await;
    r
}

/// `swarm releases HOST --json`'s document (also the fleet API's
/// `/v1/hosts/{name}/releases`): the updater's slots (or why they are
/// unavailable) and the host's update history.
pub async fn releases_report(
    db: &FleetDb,
    pool: &decnet_swarm_client::transport::WorkerPool,
    host: &str,
) -> anyhow::Result<serde_json::Value> {
    let h = crate::fleet_ops::select_hosts(db, &[host.to_string()])
        .await?
        .remove(0);
    let history = db.update_history(host, 20).await?;
    let _turn = crate::fleet_ops::FanOut::one_look().await;
    let releases = match crate::rollout::updater_client(pool, &h) {
        Ok(c) => c.releases().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok(serde_json::json!({
        "host": host,
        "releases": releases.as_ref().ok(),
        "error": releases.as_ref().err(),
        "history": history,
    }))
}

/// `swarm releases`'s output, local or through a context.
pub fn print_releases(v: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    let ok = v["error"].is_null();
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return partial(ok, "the updater did not answer");
    }
    let text = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    let time = |x: &serde_json::Value| format_time(x.as_i64().unwrap_or(0));
    match v["releases"].as_array() {
        Some(rs) if ok => print!(
            "{}",
            crate::table::render(
                &["", "SLOT", "RELEASE", "SHA256", "INSTALLED"],
                rs.iter().enumerate().map(|(i, r)| {
                    vec![
                        if i == 0 { "active" } else { "previous" }.to_string(),
                        text(&r["slot"]),
                        text(&r["sha"]),
                        text(&r["sha256"]).chars().take(16).collect::<String>(),
                        time(&r["installed_at"]),
                    ]
                })
            )
        ),
        _ => println!(
            "releases unavailable: {}",
            crate::table::inert(&text(&v["error"]))
        ),
    }
    let history = v["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        println!("\nhistory:");
        print!(
            "{}",
            crate::table::render(
                &["AT", "KIND", "RELEASE", "OUTCOME", "DETAIL"],
                history.iter().map(|u| {
                    vec![
                        time(&u["at"]),
                        text(&u["kind"]),
                        text(&u["release"]),
                        text(&u["outcome"]),
                        text(&u["detail"]),
                    ]
                })
            )
        );
    }
    partial(ok, "the updater did not answer")
}

/// The doctor's thresholds from `swarm doctor`'s arguments.
pub fn doctor_policy(
    expiry_warning: &str,
    silent_after: &str,
    max_skew: &str,
) -> anyhow::Result<crate::doctor::DoctorPolicy> {
    Ok(crate::doctor::DoctorPolicy {
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
        1 => Err(crate::usage::ExitWith {
            code,
            message: "swarm doctor: warnings found".into(),
        }
        .into()),
        _ => Err(crate::usage::ExitWith {
            code,
            message: "swarm doctor: errors found".into(),
        }
        .into()),
    }
}

/// `swarm decommission`'s report, local or through a context.
pub fn print_decommissioned(host: &str, revoked: usize, removed: usize) {
    println!(
        "decommissioned {host}: {revoked} certificate(s) revoked, {removed} bundle dir(s) removed"
    );
}

/// A `swarm token create` request from its arguments.
pub fn token_request(
    host: String,
    address: Option<String>,
    sans: Vec<String>,
    updater: bool,
    ttl: &str,
) -> anyhow::Result<crate::ops::TokenRequest> {
    let address = address.ok_or_else(|| {
        UsageError("--address is required: the address the master will dial".into())
    })?;
    Ok(crate::ops::TokenRequest {
        host,
        address,
        sans,
        updater,
        ttl: parse_duration("--ttl", ttl, std::time::Duration::from_secs(1))?,
    })
}

/// `swarm token create`'s output: the token alone on stdout, how to use it
/// on stderr.
pub fn print_join_token(token: &str, host: &str, updater: bool, ttl_secs: u64) {
    println!("{token}");
    eprintln!(
        "On {host}: save the token to a file only root can read (chmod 600 FILE), then: decnet-agent join --master MASTER:8770 --token-file FILE{}; valid {ttl_secs}s, single use (a token in argv is visible to every process in /proc).",
        if updater {
            " (and decnet-updater join --master MASTER:8770 --token-file FILE right after: the second half ends 10 minutes after the first is used)"
        } else {
            ""
        },
    );
}

/// `swarm renew`'s report, local or through a context.
pub fn print_renewal(host: &str, has_updater: bool, updater_error: Option<&str>) {
    println!(
        "{host}: the agent will renew its certificate at its next heartbeat (decnet master serve must be running)"
    );
    match (has_updater, updater_error) {
        (false, _) => {}
        (true, None) => println!("{host}: the updater is renewing its certificate now"),
        // The agent's request stands (it is in the database); the updater
        // renews when due, or when asked again.
        (true, Some(e)) => eprintln!(
            "warning: {host}: the updater did not take the renewal request: {}; it renews when due (at 2/3 of its lifetime), or run `decnet swarm renew {host}` again once it answers",
            crate::table::inert(e)
        ),
    }
}

/// `swarm burn`: every certificate of a compromised host revoked, whoever
/// holds it; the host stays in the inventory, burned, until it joins again.
async fn swarm_burn(home: &MasterHome, host: &str, yes: bool) -> anyhow::Result<()> {
    HostName::new(host).map_err(|e| UsageError(e.to_string()))?;
    let db = open_db(home).await?;
    let r = async {
        let h = enrolled_host(&db, host).await?;
        if h.status == HostStatus::Decommissioned {
            return Err(UsageError(format!("host {host} is decommissioned already")).into());
        }
        confirm_destructive(&db, "swarm.burn", host, yes, &burn_question(host)).await?;
        let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
        crate::ops::burn(&db, &home.ca_layout(), &pool, host, &cli_actor())
            .await
            .map_err(crate::ops::OpError::into_cli)
    }
    .await;
    db.close().await;
    print_burned(&r?);
    Ok(())
}

/// The question a burn asks at a terminal.
pub fn burn_question(host: &str) -> String {
    format!(
        "Burn {host}? Every certificate it has is revoked, whoever holds it; it must join again."
    )
}

/// What `swarm burn` prints.
pub fn print_burned(b: &decnet_api::Burned) {
    let host = &b.host;
    match (&b.torn_down, &b.teardown_error) {
        (Some(names), _) => println!(
            "{host}: {} decky(ies) torn down before the burn",
            names.len()
        ),
        (None, e) => eprintln!(
            "warning: {host}'s deckies could not be torn down ({}); they may still run until the host is rebuilt",
            crate::table::inert(e.as_deref().unwrap_or("unknown"))
        ),
    }
    println!(
        "burned {host}: {} certificate(s) revoked. The master refuses them within a second (open connections included); every worker once it fetches the new revocation list.",
        b.revoked
    );
    println!("To re-admit {host}, rebuild it (its keys and binaries are not to be trusted), then:");
    println!("  decnet swarm token create --host {host} --updater     # on the master");
    println!(
        "  decnet-agent join --master MASTER:8770 --token-file FILE   # on {host}; also decnet-updater join"
    );
}

async fn show_audit(
    home: &MasterHome,
    limit: i64,
    actor: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let db = open_db(home).await?;
    let entries = db.audit_log_of(limit.max(1), actor).await;
    db.close().await;
    let entries: Vec<decnet_api::AuditRecord> =
        entries?.iter().map(crate::fleet_api::audit_view).collect();
    print_audit(&entries, json)
}

/// `audit`'s output, local or through a context.
pub fn print_audit(entries: &[decnet_api::AuditRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    print!(
        "{}",
        crate::table::render(
            &[
                "AT", "ACTOR", "FROM", "ACTION", "TARGET", "OUTCOME", "DETAIL"
            ],
            entries.iter().map(|e| {
                vec![
                    format_time(e.at),
                    e.actor.clone(),
                    e.source.clone().unwrap_or_else(|| "-".into()),
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                    e.detail.clone(),
                ]
            })
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_are_parsed_with_bounds_and_never_overflow() {
        let s = std::time::Duration::from_secs;
        assert_eq!(parse_duration("--x", "15m", s(1)).unwrap(), s(900));
        assert_eq!(
            parse_duration("--x", "825d", s(1)).unwrap(),
            s(825 * 86_400)
        );
        assert_eq!(parse_duration("--x", "90", s(1)).unwrap(), s(90));
        for bad in ["100000000d", "18446744073709551615s", "3651d"] {
            let e = parse_duration("--leaf-validity", bad, s(1)).unwrap_err().0;
            assert!(
                e.contains("--leaf-validity") && e.contains("too long"),
                "{bad}: {e}"
            );
        }
        for bad in ["", "abc", "-5s", "5 parsecs"] {
            assert!(parse_duration("--ttl", bad, s(1)).is_err(), "{bad}");
        }
        assert!(
            parse_duration("--ttl", "0s", s(1))
                .unwrap_err()
                .0
                .contains("too short")
        );
    }
}
