//! Every command's arguments: the `decnet` command line as clap parses it,
//! local and remote commands alike (whether a command runs on this host's
//! files or through a context is decided when it runs, not by its
//! arguments). Pure data: the daemons' flags included, which is why the
//! metrics and log-storage flags live here and in `decnet-telemetry`, not
//! beside the servers that read them.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use decnet_pki::HostName;

use crate::exit::UsageError;

/// How many hosts a fleet-wide command talks to at once by default
/// (`--max-parallel`): enough to keep a large fleet quick, few enough to
/// stay far from the open-file limit and not to storm the CPU with
/// handshakes.
pub const DEFAULT_PARALLEL: usize = 64;

/// How many connections to workers the whole process holds at once by
/// default (`master serve --max-outbound`): far under the open-file limit,
/// whatever the fleet-wide requests in flight and their `parallel`.
pub const DEFAULT_MAX_OUTBOUND: usize = 256;

/// `"64M"`, `"1G"`, `"512k"`, `"4096"` → bytes (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (t, 1u64),
        Some((at, _)) => {
            let mult = match t[at..].to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                other => return Err(format!("unknown unit {other:?} (use k, M, G or T)")),
            };
            (t[..at].trim(), mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512k, 64M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The listener's storage and budget flags (`decnet listener` and
/// `decnet master serve` share them).
#[derive(Clone, Debug, clap::Args)]
pub struct LogStorageArgs {
    /// Bytes per second one host (its certificates' CN) may make the listener write
    /// (raw and JSON together; 0 turns the byte and line budgets off).
    #[arg(long, value_name = "BYTES_PER_S", default_value = "1M", value_parser = parse_bytes)]
    pub log_budget: u64,
    /// Bytes one host may write in a burst above its rate.
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_bytes)]
    pub log_burst: u64,
    /// Lines per second one host may make the listener write.
    #[arg(long, value_name = "LINES_PER_S", default_value_t = 5000)]
    pub log_line_budget: u64,
    /// Rotate fleet.log / fleet.json at this size (0: never).
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_bytes)]
    pub log_rotate_size: u64,
    /// Rotated files kept per log (fleet.log.1 ... .N).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub log_keep: usize,
    /// Stop writing logs while their filesystem has less free space than
    /// this (default: 5 % of it, at most 1G; 0: never stop).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub log_min_free: Option<u64>,
}

/// decnet: mTLS control plane for worker fleets.
#[derive(Debug, Parser)]
#[command(
    name = "decnet",
    version,
    // The binary's own description (`about` alone would take this crate's).
    about = "The decnet operator CLI and master daemon: CA, enrollment, fleet database, rollouts",
    propagate_version = true
)]
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
        /// Per-host budgets, rotation and the free-space watermark.
        #[command(flatten)]
        storage: LogStorageArgs,
        /// The Prometheus endpoint.
        #[command(flatten)]
        metrics: decnet_telemetry::metrics::MetricsArgs,
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

pub use crate::job_cmd::JobCommand;

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
        /// Per-host log budgets, rotation and the free-space watermark.
        #[command(flatten)]
        storage: LogStorageArgs,
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
        #[arg(long, default_value_t = DEFAULT_MAX_OUTBOUND)]
        max_outbound: usize,
        /// The Prometheus endpoint.
        #[command(flatten)]
        metrics: decnet_telemetry::metrics::MetricsArgs,
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
        #[arg(long, default_value_t = DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
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
        #[arg(long, default_value_t = DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
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
        #[arg(long, default_value_t = DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
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
        #[arg(long, default_value_t = DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
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

/// What a join token is for (`swarm token create`).
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The host that will join.
    pub host: String,
    /// The address the master dials.
    pub address: String,
    /// Extra SANs.
    pub sans: Vec<String>,
    /// Whether its updater may join too.
    pub updater: bool,
    /// How long it is valid.
    pub ttl: std::time::Duration,
}

/// A `swarm token create` request from its arguments.
pub fn token_request(
    host: String,
    address: Option<String>,
    sans: Vec<String>,
    updater: bool,
    ttl: &str,
) -> anyhow::Result<TokenRequest> {
    let address = address.ok_or_else(|| {
        UsageError("--address is required: the address the master will dial".into())
    })?;
    Ok(TokenRequest {
        host,
        address,
        sans,
        updater,
        ttl: parse_duration("--ttl", ttl, std::time::Duration::from_secs(1))?,
    })
}
