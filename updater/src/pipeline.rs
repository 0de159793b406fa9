//! The update pipeline: verify → extract → preflight → promote → restart →
//! probe → commit, or revert. Also rollback, crash recovery from the journal,
//! and self-update. Operations are serialized.

use std::path::{Path, PathBuf};
use std::time::Duration;

use decnet_pki::signing::{
    ReleaseKeyring, ReleaseManifest, ReleaseTarget, SignedManifest, compare_versions,
};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::agent_control::AgentControl;
use crate::extract::{ExtractError, PrestagedRelease, extract_release};
use crate::floor::ReleaseFloor;
use crate::probe::{ProbeReport, Prober};
use crate::slots::{JournalOp, ReleaseInfo, ReleaseSlots, SlotError};

/// How an upload's tarball was received.
#[derive(Debug)]
pub enum ReceivedTarball {
    /// Spooled to this file, extracted once verified (the caller deletes
    /// the file).
    Spooled(PathBuf),
    /// Extracted while it streamed in, into a private directory that
    /// becomes the slot once verified.
    Extracted(PrestagedRelease),
}

/// An uploaded release, already on disk.
#[derive(Debug)]
pub struct Upload {
    /// The tarball, spooled or already extracted.
    pub tarball: ReceivedTarball,
    /// Release label.
    pub sha: String,
    /// Declared SHA-256 (hex).
    pub sha256: String,
    /// SHA-256 computed while receiving.
    pub computed: [u8; 32],
    /// The release manifest and its signature, if sent.
    pub manifest: Option<SignedManifest>,
    /// The operator allows installing a lower version than the active one
    /// (honoured without a release keyring only: with one, a downgrade needs
    /// a permit in the signed manifest).
    pub allow_downgrade: bool,
}

/// An upload that passed [`UpdaterCore::verify`]: the version to record,
/// and the signed manifest that raises the floor once installed.
struct Verified {
    version: String,
    signed: Option<ReleaseManifest>,
}

/// Why an operation failed, mapped to an HTTP status by the API.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The request is wrong (digest, signature, tarball, preflight): 400.
    #[error("{0}")]
    Refused(String),
    /// Nothing to roll back to: 404.
    #[error("{0}")]
    NotFound(String),
    /// The new release was unhealthy and was reverted: 409.
    #[error("the new release failed its health probe and was rolled back")]
    RolledBack(Box<FailureReport>),
    /// Something broke and the host may be unhealthy: 500.
    #[error("{}", .0.detail)]
    Failed(Box<FailureReport>),
}

/// What the operator needs to see about a failed promotion.
#[derive(Debug, Serialize)]
pub struct FailureReport {
    /// Whether the previous release was restored.
    pub rolled_back: bool,
    /// Whether the restored release answered healthy.
    pub restored_healthy: bool,
    /// Summary.
    pub detail: String,
    /// Probe of the failed release.
    pub probe: Option<ProbeReport>,
    /// Probe after restoring.
    pub restore_probe: Option<ProbeReport>,
    /// The agent's last output.
    pub stderr: String,
}

/// A successful update or rollback.
#[derive(Debug, Serialize)]
pub struct Success {
    /// `updated`, `rolled_back` or `restarting`.
    pub status: &'static str,
    /// The active release now.
    pub release: Option<ReleaseInfo>,
    /// The probe.
    pub probe: Option<ProbeReport>,
}

/// Test seam: abort the process at a named step (`DECNET_UPDATER_CRASH_AT`),
/// to prove that recovery from the journal works for a crash at that point.
fn crash_point(step: &str) {
    if std::env::var("DECNET_UPDATER_CRASH_AT").is_ok_and(|s| s == step) {
        eprintln!("crash injected at {step}");
        std::process::abort();
    }
}

/// Test seam: make named steps fail with an error (`DECNET_UPDATER_FAIL_AT`,
/// comma-separated), to prove that every error after a promotion leads to
/// the revert path.
fn fail_point(step: &str) -> Result<(), String> {
    if std::env::var("DECNET_UPDATER_FAIL_AT").is_ok_and(|s| s.split(',').any(|p| p == step)) {
        return Err(format!("injected failure at {step}"));
    }
    Ok(())
}

/// Settings of the pipeline.
pub struct UpdaterCore {
    /// The agent's releases.
    pub slots: ReleaseSlots,
    /// The updater's own releases.
    pub self_slots: ReleaseSlots,
    /// How the agent is run.
    pub control: AgentControl,
    /// The health probe.
    pub prober: Prober,
    /// Largest release (extracted bytes).
    pub max_release: u64,
    /// Trusted release keys (empty: unsigned releases accepted).
    pub keyring: ReleaseKeyring,
    /// The release floors of the agent's and the updater's slots (with a
    /// keyring: what no master can go below).
    floors: std::sync::Mutex<(ReleaseFloor, ReleaseFloor)>,
    lock: Mutex<()>,
    /// This process is a new updater whose self-update is not confirmed
    /// yet (its journal stays until it has answered `/health`).
    self_unconfirmed: std::sync::atomic::AtomicBool,
    /// One upload at a time is extracted before it is verified.
    early: std::sync::Arc<tokio::sync::Semaphore>,
}

impl UpdaterCore {
    /// Assemble the pipeline.
    pub fn new(
        slots: ReleaseSlots,
        self_slots: ReleaseSlots,
        control: AgentControl,
        prober: Prober,
        max_release: u64,
        keyring: ReleaseKeyring,
    ) -> Self {
        let packaged = env!("CARGO_PKG_VERSION");
        let floors = (
            ReleaseFloor::load(slots.root(), packaged),
            ReleaseFloor::load(self_slots.root(), packaged),
        );
        if keyring.is_empty() {
            tracing::warn!(
                "no release keyring (--release-pubkey): every release the master pushes is installed unsigned, downgrades included; configure a keyring in production"
            );
        }
        UpdaterCore {
            slots,
            self_slots,
            control,
            prober,
            max_release,
            keyring,
            floors: std::sync::Mutex::new(floors),
            lock: Mutex::new(()),
            self_unconfirmed: std::sync::atomic::AtomicBool::new(false),
            early: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The new updater has answered `/health` (or served long enough): its
    /// self-update is confirmed and the journal goes (a later crash loop is
    /// no longer this update's doing). No-op when nothing is pending.
    pub fn confirm_self_update(&self) {
        use std::sync::atomic::Ordering;
        if !self.self_unconfirmed.swap(false, Ordering::SeqCst) {
            return;
        }
        match self.self_slots.commit() {
            Ok(()) => tracing::info!(
                release = ?self.self_slots.current_target(),
                "self-update confirmed: the new updater answers"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot confirm the self-update");
                self.self_unconfirmed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether a self-update of this updater awaits confirmation.
    pub fn self_update_unconfirmed(&self) -> bool {
        self.self_unconfirmed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The slots a release for `target` goes into.
    pub fn slots_of(&self, target: ReleaseTarget) -> &ReleaseSlots {
        match target {
            ReleaseTarget::Agent => &self.slots,
            ReleaseTarget::Updater => &self.self_slots,
        }
    }

    /// Permission to extract an upload for `target` while it streams in,
    /// before [`UpdaterCore::verify`] has seen it whole (nothing extracted is
    /// run or installed before that); `None`: spool it and extract it after
    /// verification. One upload at a time, and only with room for a whole
    /// release (`--max-release-mb`) on the slots' disk, so unverified bytes
    /// there never exceed one release and a full disk is refused with the
    /// spooled path's clear message. Without a keyring that is all: the
    /// sender also declares the digest, and the extractor treats every
    /// tarball as hostile. With one, a `manifest` must have come first that
    /// would pass verification but for the digest: signed by a trusted key,
    /// for `target`, for this `label`, not below the floor. The digest is
    /// only known at the end, so a sender holding such a manifest (a
    /// compromised master replaying one) can still have other bytes
    /// extracted early, within those bounds; they are refused and removed.
    pub fn early_extraction(
        &self,
        target: ReleaseTarget,
        manifest: Option<&SignedManifest>,
        label: Option<&str>,
    ) -> Option<crate::extract::EarlyPermit> {
        let signed = self.keyring.is_empty()
            || manifest
                .and_then(|m| self.keyring.verify(m).ok())
                .is_some_and(|m| {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    m.target == target
                        && label.is_some_and(|l| l.trim() == m.label)
                        && self
                            .with_floor(target, |floor| floor.check(&m, now))
                            .is_ok()
                });
        let room = self.max_release.max(MIN_FREE_SPACE);
        if !signed
            || self
                .free_space_ok(self.slots_of(target).root(), room)
                .is_err()
        {
            return None;
        }
        self.early.clone().try_acquire_owned().ok()
    }

    /// Whether release signatures are required (a keyring is configured).
    pub fn signatures_required(&self) -> bool {
        !self.keyring.is_empty()
    }

    /// The floor of `target`'s slots, to read or raise.
    fn with_floor<T>(&self, target: ReleaseTarget, f: impl FnOnce(&mut ReleaseFloor) -> T) -> T {
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        match target {
            ReleaseTarget::Agent => f(&mut floors.0),
            ReleaseTarget::Updater => f(&mut floors.1),
        }
    }

    /// A release of `target` with the signed manifest `m` is installed:
    /// its floor rises (and is stored) before anything else happens.
    fn raise_floor(&self, target: ReleaseTarget, slots: &ReleaseSlots, m: &ReleaseManifest) {
        let stored = self.with_floor(target, |floor| {
            floor.raise(m);
            floor.save(slots.root())
        });
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot store the release floor");
        }
    }

    /// Check an upload before anything is extracted: the digest, the
    /// manifest (signed by a trusted key when keys are configured; for
    /// `target`; naming this digest and label) and the version. With a
    /// keyring, never below the floor of `slots` without a signed permit
    /// (the master's `allow_downgrade` does not count); without one, no
    /// downgrade below the active release unless the master allows it.
    fn verify(
        &self,
        up: &Upload,
        target: ReleaseTarget,
        slots: &ReleaseSlots,
    ) -> Result<Verified, UpdateError> {
        let declared = decnet_pki::signing::parse_sha256(&up.sha256).ok_or_else(|| {
            UpdateError::Refused("sha256 must be the 64-hex-digit SHA-256 of the tarball".into())
        })?;
        if declared != up.computed {
            return Err(UpdateError::Refused(format!(
                "sha256 mismatch: declared {}, received {}; nothing was installed",
                up.sha256.to_lowercase(),
                decnet_pki::signing::digest_hex(&up.computed)
            )));
        }
        let refused = |e: decnet_pki::signing::SigningError| {
            UpdateError::Refused(format!("release signature refused: {e}"))
        };
        let manifest = match &up.manifest {
            Some(m) if !self.keyring.is_empty() => Some(self.keyring.verify(m).map_err(refused)?),
            Some(m) => Some(m.parse().map_err(refused)?),
            None if !self.keyring.is_empty() => {
                return Err(refused(decnet_pki::signing::SigningError::Unsigned));
            }
            None => None,
        };
        let label = up.sha.trim();
        if label.is_empty() {
            return Err(UpdateError::Refused(
                "sha (the release label) is required".into(),
            ));
        }
        if let Some(m) = &manifest {
            if m.target != target {
                return Err(UpdateError::Refused(format!(
                    "this release is signed for the {}, not the {target}; nothing was installed",
                    m.target
                )));
            }
            if decnet_pki::signing::parse_sha256(&m.sha256) != Some(up.computed) {
                return Err(UpdateError::Refused(
                    "the manifest names another tarball (sha256 differs); nothing was installed"
                        .into(),
                ));
            }
            if m.label != label {
                return Err(UpdateError::Refused(format!(
                    "the manifest is for release {:?}, not {label:?}; nothing was installed",
                    m.label
                )));
            }
        }
        if let (Some(m), false) = (&manifest, self.keyring.is_empty()) {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            self.with_floor(target, |floor| floor.check(m, now))
                .map_err(|why| {
                    UpdateError::Refused(format!(
                        "{why}{}; nothing was installed",
                        if up.allow_downgrade {
                            " (the master's allow-downgrade does not count with a release keyring)"
                        } else {
                            ""
                        }
                    ))
                })?;
            let version = if m.version.trim().is_empty() {
                label.to_string()
            } else {
                m.version.clone()
            };
            return Ok(Verified {
                version,
                signed: manifest,
            });
        }
        let version = manifest
            .map(|m| m.version)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| label.to_string());
        if !up.allow_downgrade
            && let Some(active) = slots
                .state()
                .ok()
                .and_then(|st| st.active)
                .and_then(|id| slots.info(&id))
            && compare_versions(&version, active.version()) == Some(std::cmp::Ordering::Less)
        {
            return Err(UpdateError::Refused(format!(
                "version {version} is older than the active {}; pass --allow-downgrade to install it anyway",
                active.version()
            )));
        }
        Ok(Verified {
            version,
            signed: None,
        })
    }

    fn free_space_ok(&self, dir: &Path, need: u64) -> Result<(), UpdateError> {
        if let Ok(st) = rustix::fs::statvfs(dir) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if free < need {
                return Err(UpdateError::Refused(format!(
                    "not enough free disk space in {}: {free} bytes free, {need} needed",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Extract (or take what was extracted while the upload streamed in)
    /// and preflight into a new slot of `slots`; returns its id.
    async fn stage(
        &self,
        slots: &ReleaseSlots,
        up: &Upload,
        binary: &str,
        version: String,
    ) -> Result<String, UpdateError> {
        let staging = match &up.tarball {
            ReceivedTarball::Extracted(pre) => {
                if let Err(e) = &pre.outcome {
                    return Err(extract_refusal(e));
                }
                let (id, staging) = slots.new_staging(&up.sha).map_err(internal)?;
                if let Err(e) = pre.move_to(&staging) {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(internal_msg(format!(
                        "cannot stage the extracted release: {e}"
                    )));
                }
                (id, staging)
            }
            ReceivedTarball::Spooled(path) => {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                self.free_space_ok(slots.root(), size.saturating_mul(3).max(MIN_FREE_SPACE))?;
                let (id, staging) = slots.new_staging(&up.sha).map_err(internal)?;
                let tarball = path.clone();
                let cap = self.max_release;
                let dest = staging.clone();
                let extracted =
                    tokio::task::spawn_blocking(move || extract_release(&tarball, &dest, cap))
                        .await
                        .map_err(|e| UpdateError::Refused(format!("extraction failed: {e}")))?;
                if let Err(e) = extracted {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(extract_refusal(&e));
                }
                (id, staging)
            }
        };
        let (id, staging) = staging;
        crash_point("after_extract");
        if let Err(e) = preflight(&staging.join("bin").join(binary)).await {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(UpdateError::Refused(format!(
                "preflight of bin/{binary} failed: {e}; the running release is untouched"
            )));
        }
        let info = ReleaseInfo {
            slot: id.clone(),
            sha: up.sha.trim().to_string(),
            sha256: decnet_pki::signing::digest_hex(&up.computed),
            installed_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            version: Some(version),
        };
        slots
            .finish_staging(&id, &staging, &info)
            .map_err(internal)?;
        Ok(id)
    }

    /// Install a new agent release.
    pub async fn update(&self, up: &Upload) -> Result<Success, UpdateError> {
        let _serial = self.lock.lock().await;
        let result = async {
            let v = self.verify(up, ReleaseTarget::Agent, &self.slots)?;
            let id = self
                .stage(&self.slots, up, "decnet-agent", v.version)
                .await?;
            let done = self.promote_and_probe(JournalOp::Update, &id).await;
            if let (Ok(_), Some(m)) = (&done, &v.signed) {
                self.raise_floor(ReleaseTarget::Agent, &self.slots, m);
            }
            done
        }
        .await;
        crate::metrics::record_operation("update", &result);
        result
    }

    /// Go back to the previous release.
    pub async fn rollback(&self) -> Result<Success, UpdateError> {
        let _serial = self.lock.lock().await;
        let result = async {
            let st = self.slots.state().map_err(internal)?;
            let Some(target) = st.previous.first().cloned() else {
                return Err(UpdateError::NotFound(
                    "no previous release to roll back to".into(),
                ));
            };
            self.promote_and_probe(JournalOp::Rollback, &target).await
        }
        .await;
        crate::metrics::record_operation("rollback", &result);
        result
    }

    /// Promote `id`, switch the agent to it and probe it; commit when
    /// healthy. Any failure after the promotion — stopping or starting the
    /// agent, the probe, the commit — takes the same revert path, so
    /// `current` is never left on an unverified release once the lock is
    /// released; a promotion is refused while an earlier one is unresolved.
    async fn promote_and_probe(&self, op: JournalOp, id: &str) -> Result<Success, UpdateError> {
        if let Some(j) = self.slots.journal().map_err(internal)? {
            return Err(internal_msg(format!(
                "an earlier promotion (to {}) is unresolved; restart the updater to resolve it",
                j.to
            )));
        }
        let journal = match self.slots.promote(op, id) {
            Ok(j) => j,
            Err(e) => {
                // The journal is written first: put back what was changed.
                if let Ok(Some(j)) = self.slots.journal() {
                    let _ = self.slots.revert(&j);
                }
                return Err(internal(e));
            }
        };
        crash_point("after_promote");
        let switched: Result<(), String> = async {
            fail_point("stop")?;
            self.control.stop().await.map_err(|e| e.0)?;
            crash_point("after_stop");
            fail_point("start")?;
            let started = self.control.start().await.map_err(|e| e.0);
            crash_point("after_start");
            started
        }
        .await;
        let mut report = match switched {
            Ok(()) => {
                self.prober
                    .probe_while(|| async { !self.control.has_stopped().await })
                    .await
            }
            Err(e) => ProbeReport {
                healthy: false,
                version: None,
                transcript: vec![format!("the agent could not be switched to {id}: {e}")],
            },
        };
        if report.healthy {
            match fail_point("commit").and_then(|_| self.slots.commit().map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    return Ok(Success {
                        status: if op == JournalOp::Update {
                            "updated"
                        } else {
                            "rolled_back"
                        },
                        release: self.slots.info(id),
                        probe: Some(report),
                    });
                }
                Err(e) => {
                    report.healthy = false;
                    report.transcript.push(format!(
                        "healthy, but the promotion could not be committed: {e}"
                    ));
                }
            }
        }
        // Unhealthy: revert to what ran before.
        let stderr = self.control.log_tail(40);
        tracing::warn!(slot = %id, "release failed its health probe; reverting");
        crate::metrics::record_revert("unhealthy");
        let _ = self.control.stop().await;
        if let Err(e) = fail_point("revert")
            .and_then(|_| self.slots.revert(&journal).map_err(|e| e.to_string()))
        {
            // The journal stays: the next start resolves it, and no other
            // promotion runs until then.
            return Err(UpdateError::Failed(Box::new(FailureReport {
                rolled_back: false,
                restored_healthy: false,
                detail: format!(
                    "{id} failed and the previous release could not be restored ({e}); restart the updater to finish the recovery"
                ),
                probe: Some(report),
                restore_probe: None,
                stderr,
            })));
        }
        if journal.from.is_none() {
            // Nothing to go back to: a failure, not a rollback.
            return Err(UpdateError::Failed(Box::new(FailureReport {
                rolled_back: false,
                restored_healthy: false,
                detail: "the first release failed its health probe; it was removed and nothing is installed".into(),
                probe: Some(report),
                restore_probe: None,
                stderr,
            })));
        }
        let restore = match self.control.start().await {
            Ok(()) => {
                self.prober
                    .probe_while(|| async { !self.control.has_stopped().await })
                    .await
            }
            Err(e) => ProbeReport {
                healthy: false,
                version: None,
                transcript: vec![format!("previous agent did not start: {e}")],
            },
        };
        let healthy = restore.healthy;
        let failure = FailureReport {
            rolled_back: true,
            restored_healthy: healthy,
            detail: if healthy {
                format!(
                    "{} failed its health probe; the previous release was restored and is healthy",
                    id
                )
            } else {
                format!(
                    "{} failed its health probe; the previous release was restored but is NOT healthy",
                    id
                )
            },
            probe: Some(report),
            restore_probe: Some(restore),
            stderr,
        };
        if healthy && op == JournalOp::Update {
            Err(UpdateError::RolledBack(Box::new(failure)))
        } else {
            Err(UpdateError::Failed(Box::new(failure)))
        }
    }

    /// At start: resolve an interrupted promotion from the journal, then make
    /// sure the agent runs.
    pub async fn recover(&self) -> Result<(), SlotError> {
        let _serial = self.lock.lock().await;
        for slots in [&self.slots, &self.self_slots] {
            if let Some(j) = slots.journal()? {
                if std::ptr::eq(slots, &self.self_slots) {
                    if crate::launch::running_from(&slots.slot_dir(&j.to)) {
                        // We are the new updater: the journal stays until
                        // we have answered /health (confirm_self_update).
                        tracing::info!(release = %j.to, starts = slots.starts().unwrap_or(0), "new updater started; the self-update is confirmed once it answers /health");
                        self.self_unconfirmed
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        // The launcher gave up on the new updater and runs
                        // us, the previous one: undo the self-update.
                        tracing::error!(release = %j.to, starts = slots.starts().unwrap_or(0), "the new updater did not come up; reverting the self-update to the previous updater");
                        crate::metrics::record_revert("self_update");
                        slots.revert(&j)?;
                    }
                    continue;
                }
                tracing::warn!(op = ?j.op, to = %j.to, "resolving an interrupted promotion");
                slots.reconcile()?;
                let _ = self.control.stop().await;
                let report = match self.control.start().await {
                    Ok(()) => {
                        self.prober
                            .probe_while(|| async { !self.control.has_stopped().await })
                            .await
                    }
                    Err(_) => ProbeReport {
                        healthy: false,
                        version: None,
                        transcript: vec![],
                    },
                };
                if report.healthy {
                    tracing::info!(slot = %j.to, "interrupted promotion finished: the new release is healthy");
                    slots.commit()?;
                } else {
                    tracing::warn!(slot = %j.to, "interrupted promotion: the new release is not healthy; restoring the previous one");
                    crate::metrics::record_revert("recovery");
                    let _ = self.control.stop().await;
                    slots.revert(&j)?;
                    if j.from.is_some() {
                        let restored = match self.control.start().await {
                            Ok(()) => {
                                self.prober
                                    .probe_while(|| async { !self.control.has_stopped().await })
                                    .await
                            }
                            Err(e) => ProbeReport {
                                healthy: false,
                                version: None,
                                transcript: vec![format!("the previous agent did not start: {e}")],
                            },
                        };
                        if restored.healthy {
                            tracing::info!(
                                "interrupted promotion resolved: the previous release is healthy again"
                            );
                        } else {
                            tracing::error!(transcript = ?restored.transcript, "interrupted promotion resolved, but the restored release is NOT healthy");
                        }
                    }
                }
            } else {
                slots.reconcile()?;
            }
        }
        // Leftovers of an interrupted extraction or upload.
        for slots in [&self.slots, &self.self_slots] {
            let removed = slots.clear_interrupted();
            if removed > 0 {
                tracing::info!(
                    removed,
                    dir = %slots.root().display(),
                    "removed releases an interrupted run left half extracted"
                );
            }
        }
        if self.slots.current_target().is_some() && !self.control.is_running().await {
            tracing::info!("agent not running; starting the active release");
            if let Err(e) = self.control.start().await {
                tracing::error!(error = %e, "cannot start the agent");
            }
        }
        Ok(())
    }

    /// Install a new updater binary into the updater's own slots. The caller
    /// re-executes the process afterwards.
    pub async fn update_self(&self, up: &Upload) -> Result<Success, UpdateError> {
        let _serial = self.lock.lock().await;
        let result = async {
            let v = self.verify(up, ReleaseTarget::Updater, &self.self_slots)?;
            let id = self
                .stage(&self.self_slots, up, "decnet-updater", v.version)
                .await?;
            self.self_slots
                .promote(JournalOp::Update, &id)
                .map_err(internal)?;
            if let Some(m) = &v.signed {
                self.raise_floor(ReleaseTarget::Updater, &self.self_slots, m);
            }
            Ok(Success {
                status: "restarting",
                release: self.self_slots.info(&id),
                probe: None,
            })
        }
        .await;
        crate::metrics::record_operation("self_update", &result);
        result
    }

    /// The path a self-update re-executes.
    pub fn self_binary(&self) -> PathBuf {
        self.self_slots.current_link().join("bin/decnet-updater")
    }
}

/// `bin --version` must succeed within 10 s.
async fn preflight(bin: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(bin).map_err(|_| "the release has no such file".to_string())?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err("not an executable file".into());
    }
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(bin)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "`--version` did not finish within 10 s".to_string())?
    .map_err(|e| format!("cannot run it: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`--version` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Free space a release needs at least in its slots' file system (a
/// spooled one: three times its tarball, when that is more).
const MIN_FREE_SPACE: u64 = 16 << 20;

/// A tarball the extractor refused is the sender's fault (400); a failed
/// write is the host's (500).
fn extract_refusal(e: &ExtractError) -> UpdateError {
    match e {
        ExtractError::Io(e) => internal_msg(format!("cannot extract: {e}")),
        e => UpdateError::Refused(e.to_string()),
    }
}

fn internal(e: SlotError) -> UpdateError {
    internal_msg(e.to_string())
}

fn internal_msg(detail: String) -> UpdateError {
    tracing::error!(%detail, "update failed");
    UpdateError::Failed(Box::new(FailureReport {
        rolled_back: false,
        restored_healthy: false,
        detail,
        probe: None,
        restore_probe: None,
        stderr: String::new(),
    }))
}
