//! Release tarballs: `decnet release keygen` and `decnet release pack`.
//!
//! A release is a gzip'd tar of an include-list — `bin/` (the binaries) and
//! `share/` — never private keys, certificates, `.env*` files, databases or
//! logs, plus a generated `release.json` (version, build time, per-file
//! SHA-256). Beside the tarball go `<tarball>.sha256` and
//! `<tarball>.manifests.json`: one manifest per target daemon whose binary
//! the release holds (`bin/decnet-agent`: agent, `bin/decnet-updater`:
//! updater), naming the label, the semver version (none: the updaters order
//! it by signing time), the digest and, when asked, a downgrade permit —
//! Ed25519-signed when a key was given (see `decnet_pki::signing`).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::exit::UsageError;
use decnet_pki::signing::{
    ReleaseManifest, ReleaseSigner, ReleaseTarget, SignedManifest, digest_hex, sha256_file,
};

/// Top-level directories a release may contain.
pub const INCLUDED_DIRS: &[&str] = &["bin", "share"];

/// Whether a file name must never ship, whatever directory it is in.
pub fn is_excluded(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with(".env")
        || n.ends_with(".key")
        || n.ends_with(".pem")
        || n.ends_with(".crt")
        || n.ends_with(".db")
        || n.contains(".sqlite")
        || n.ends_with(".log")
        || n.ends_with("-wal")
        || n.ends_with("-shm")
        || n == "id_rsa"
        || n == "id_ed25519"
}

/// A packed release.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackedRelease {
    /// The tarball.
    pub tarball: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its manifests, one per target daemon (signed when a key was given).
    pub manifests: Vec<SignedManifest>,
    /// The release label.
    pub label: String,
    /// The release version.
    pub version: String,
    /// Files included (relative paths).
    pub files: Vec<String>,
}

fn collect(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))
        .with_context(|| format!("reading {}", dir.join(rel).display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(e.path())?;
        let r = rel.join(&name);
        if is_excluded(&name) {
            continue;
        }
        if meta.is_dir() {
            collect(dir, &r, out)?;
        } else if meta.is_file() {
            out.push(r);
        }
        // Symlinks and special files never ship.
    }
    Ok(())
}

/// How a release's manifests are made: the signing key (none: unsigned)
/// and whether they carry a downgrade permit.
#[derive(Default)]
pub struct Signing {
    /// The key.
    pub signer: Option<ReleaseSigner>,
    /// Let updaters install it below their floor (signed: only a holder of
    /// the release key can grant it).
    pub permit_downgrade: bool,
}

impl Signing {
    /// Unsigned manifests, no permit.
    pub fn unsigned() -> Self {
        Signing::default()
    }
}

/// The targets whose binary `files` hold.
fn targets_of(files: &[String]) -> Vec<ReleaseTarget> {
    let has = |b: &str| files.iter().any(|f| f == b);
    let mut t = Vec::new();
    if has("bin/decnet-agent") {
        t.push(ReleaseTarget::Agent);
    }
    if has("bin/decnet-updater") {
        t.push(ReleaseTarget::Updater);
    }
    t
}

/// The manifests of a tarball with digest `sha256` holding `files`: one per
/// target daemon whose binary it holds (never a signature for a daemon it
/// cannot update), signed when `signing` has a key. `version` empty: none.
pub fn manifests(
    label: &str,
    version: &str,
    sha256: &str,
    signing: &Signing,
    files: &[String],
) -> Vec<SignedManifest> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    targets_of(files)
        .into_iter()
        .map(|target| {
            let m = ReleaseManifest {
                target,
                label: label.to_string(),
                version: version.to_string(),
                sha256: sha256.to_string(),
                signed_at: now,
                permit_downgrade: signing.permit_downgrade,
            };
            match &signing.signer {
                Some(s) => s.sign_manifest(&m),
                None => m.unsigned(),
            }
        })
        .collect()
}

/// A `--release-version`: semver (a leading `v` allowed), or a usage error.
pub fn checked_version(v: Option<&str>) -> anyhow::Result<String> {
    match v {
        None => Ok(String::new()),
        Some(v) => {
            decnet_pki::signing::release_version(v)
                .map_err(|e| anyhow::anyhow!("--release-version: {e}"))?;
            Ok(v.trim().to_string())
        }
    }
}

/// Pack `dir` into `out` (a `.tar.gz`), labelled `label`, at `version`
/// (semver; none: ordered by signing time), its manifests made by `signing`.
pub fn pack(
    dir: &Path,
    out: &Path,
    label: &str,
    version: Option<&str>,
    signing: &Signing,
) -> anyhow::Result<PackedRelease> {
    let version = checked_version(version)?;
    let mut files = Vec::new();
    for top in INCLUDED_DIRS {
        if dir.join(top).is_dir() {
            collect(dir, Path::new(top), &mut files)?;
        }
    }
    if !files
        .iter()
        .any(|f| f == Path::new("bin/decnet-agent") || f == Path::new("bin/decnet-updater"))
    {
        anyhow::bail!(
            "{} has no bin/decnet-agent or bin/decnet-updater; a release needs at least one of them",
            dir.display()
        );
    }
    let mut manifest = serde_json::Map::new();
    for f in &files {
        manifest.insert(
            f.display().to_string(),
            digest_hex(&sha256_file(&dir.join(f))?).into(),
        );
    }
    let release_json = serde_json::to_vec_pretty(&serde_json::json!({
        "label": label,
        "version": if version.is_empty() { label } else { &version },
        "built_at": time::OffsetDateTime::now_utc().unix_timestamp(),
        "files": manifest,
    }))?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = out.with_extension("partial");
    {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let header = |size: u64, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h
        };
        let mut h = header(release_json.len() as u64, 0o644);
        tar.append_data(&mut h, "release.json", release_json.as_slice())?;
        for f in &files {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(f);
            let meta = std::fs::metadata(&path)?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut h = header(meta.len(), mode);
            tar.append_data(&mut h, f, std::fs::File::open(&path)?)?;
        }
        let gz = tar.into_inner()?;
        let mut w = gz.finish()?;
        std::io::Write::flush(&mut w)?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    let digest = sha256_file(out)?;
    let sha256 = digest_hex(&digest);
    std::fs::write(
        sidecar(out, "sha256"),
        format!("{sha256}  {}\n", file_name(out)),
    )?;
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let manifests = manifests(label, &version, &sha256, signing, &files);
    std::fs::write(
        sidecar(out, "manifests.json"),
        serde_json::to_vec_pretty(&manifests)?,
    )?;
    Ok(PackedRelease {
        tarball: out.to_path_buf(),
        sha256,
        manifests,
        label: label.to_string(),
        version: if version.is_empty() {
            label.to_string()
        } else {
            version
        },
        files,
    })
}

/// `<tarball>.<ext>`.
pub fn sidecar(tarball: &Path, ext: &str) -> PathBuf {
    let mut s = tarball.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    s.into()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Re-pack the tarball `src` into `dst` with the modes `release pack` uses
/// (0755 for executables, 0644 otherwise, owner root, no timestamps): a
/// tarball built elsewhere may carry group- or world-writable files. Only
/// regular files are kept (directories are implied); a link, device or fifo
/// is refused. Returns the files.
pub fn normalize(src: &Path, dst: &Path) -> anyhow::Result<Vec<String>> {
    let file = std::fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let out = std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        std::io::BufWriter::new(out),
        flate2::Compression::fast(),
    ));
    let mut files = Vec::new();
    for entry in archive.entries().context("not a .tar.gz")? {
        let mut entry = entry.context("not a .tar.gz")?;
        let path = entry.path().context("entry path")?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            anyhow::bail!(
                "{} holds {} as a {kind:?} entry; a release holds regular files only",
                src.display(),
                path.display()
            );
        }
        let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
        let mut h = tar::Header::new_gnu();
        h.set_size(entry.header().size().context("entry size")?);
        h.set_mode(if exec { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut h, &path, &mut entry)?;
        files.push(path.display().to_string());
    }
    let gz = builder.into_inner()?;
    let mut w = gz.finish()?;
    std::io::Write::flush(&mut w)?;
    Ok(files)
}

/// An existing tarball with its digest and manifests. Packed by `release
/// pack` (its manifests beside it name it) and no new signature asked: as
/// is. Otherwise it is first re-packed into `scratch` with normalized modes
/// ([`normalize`]), then given manifests, signed with `signer` when given.
pub fn existing(
    tarball: &Path,
    label: Option<&str>,
    version: Option<&str>,
    signing: &Signing,
    scratch: &Path,
) -> anyhow::Result<PackedRelease> {
    let digest = sha256_file(tarball).with_context(|| format!("reading {}", tarball.display()))?;
    let sha256 = digest_hex(&digest);
    let packed: Option<Vec<SignedManifest>> = std::fs::read(sidecar(tarball, "manifests.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|ms: &Vec<SignedManifest>| {
            !ms.is_empty()
                && ms
                    .iter()
                    .all(|m| m.parse().is_ok_and(|p| p.sha256 == sha256))
        });
    let packed_manifest = packed.as_ref().and_then(|ms| ms[0].parse().ok());
    let label = label
        .map(str::to_string)
        .or_else(|| packed_manifest.as_ref().map(|m| m.label.clone()))
        .unwrap_or_else(|| file_name(tarball).trim_end_matches(".tar.gz").to_string());
    let version = match version {
        Some(v) => checked_version(Some(v))?,
        None => packed_manifest
            .as_ref()
            .map(|m| m.version.clone())
            .unwrap_or_default(),
    };
    let shown = |v: &str| {
        if v.is_empty() {
            label.clone()
        } else {
            v.to_string()
        }
    };
    if signing.signer.is_none()
        && !signing.permit_downgrade
        && let Some(ms) = packed
        && packed_manifest
            .as_ref()
            .is_some_and(|m| m.label == label && m.version == version)
    {
        return Ok(PackedRelease {
            tarball: tarball.to_path_buf(),
            sha256,
            manifests: ms,
            version: shown(&version),
            label,
            files: Vec::new(),
        });
    }
    let normalized = scratch.join("release.tar.gz");
    let files = normalize(tarball, &normalized)?;
    let sha256 = digest_hex(&sha256_file(&normalized)?);
    Ok(PackedRelease {
        tarball: normalized,
        manifests: manifests(&label, &version, &sha256, signing, &files),
        sha256,
        version: shown(&version),
        label,
        files,
    })
}

/// A release packed for `swarm update` (its tarball in a temporary
/// directory that lives as long as this).
pub struct PackedForUpdate {
    /// The release.
    pub release: PackedRelease,
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
        pack(
            release,
            &tmp.path().join("release.tar.gz"),
            &label,
            version,
            &signing,
        )
        .map_err(|e| UsageError(format!("{e:#}")))?
    } else if release.is_file() {
        existing(release, label, version, &signing, tmp.path())
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
pub fn signing_of(
    key: Option<&std::path::Path>,
    permit_downgrade: bool,
) -> anyhow::Result<Signing> {
    Ok(Signing {
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
pub fn dir_label(dir: &std::path::Path) -> String {
    std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "release".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_includes_only_the_include_list_and_never_secrets() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("rel");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::create_dir_all(src.join("share/doc")).unwrap();
        std::fs::write(src.join("bin/decnet-agent"), b"#!/bin/sh\n").unwrap();
        std::fs::write(src.join("share/doc/README"), b"doc").unwrap();
        for secret in [
            "bin/worker.key",
            "bin/.env",
            "share/master.db",
            "share/agent.log",
            "share/ca.crt",
        ] {
            std::fs::write(src.join(secret), b"secret").unwrap();
        }
        std::fs::write(src.join("notes.txt"), b"outside the include-list").unwrap();
        let out = d.path().join("out/r.tar.gz");
        let p = pack(&src, &out, "v1", None, &Signing::unsigned()).unwrap();
        assert_eq!(p.files, vec!["bin/decnet-agent", "share/doc/README"]);
        let mut names = Vec::new();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&out).unwrap(),
        ));
        for e in a.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            vec!["release.json", "bin/decnet-agent", "share/doc/README"]
        );
        let side = std::fs::read_to_string(sidecar(&out, "sha256")).unwrap();
        assert!(side.starts_with(&p.sha256));
        assert!(
            pack(
                &d.path().join("out"),
                &d.path().join("x.tar.gz"),
                "v",
                None,
                &Signing::unsigned()
            )
            .is_err()
        );
        // The manifests name this tarball, for the one daemon it holds, unsigned.
        let back = existing(&out, None, None, &Signing::unsigned(), d.path()).unwrap();
        assert_eq!((back.label.as_str(), back.version.as_str()), ("v1", "v1"));
        assert_eq!(back.manifests, p.manifests);
        assert_eq!(
            p.manifests.len(),
            1,
            "an agent release is never signed for the updater"
        );
        assert_eq!(p.manifests[0].parse().unwrap().target, ReleaseTarget::Agent);
        assert!(back.manifests.iter().all(|m| m.signature.is_none()));
        // A version must be semver.
        assert!(
            pack(
                &src,
                &d.path().join("y.tar.gz"),
                "v1",
                Some("banana"),
                &Signing::unsigned()
            )
            .is_err()
        );
        assert_eq!(back.tarball, out, "a packed release goes as it is");
    }

    #[test]
    fn a_foreign_tarball_is_repacked_with_safe_modes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("foreign.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&src).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            for (path, mode) in [("bin/decnet-agent", 0o4777), ("share/notes", 0o666)] {
                let mut h = tar::Header::new_gnu();
                h.set_size(2);
                h.set_mode(mode);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, path, &b"ok"[..]).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        let scratch = d.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let p = existing(&src, Some("x1"), None, &Signing::unsigned(), &scratch).unwrap();
        assert_ne!(p.tarball, src);
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&p.tarball).unwrap(),
        ));
        let modes: Vec<(String, u32)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            modes,
            vec![
                ("bin/decnet-agent".into(), 0o755),
                ("share/notes".into(), 0o644)
            ]
        );
        assert_eq!(p.sha256, digest_hex(&sha256_file(&p.tarball).unwrap()));
    }
}
