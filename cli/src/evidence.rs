//! `swarm evidence`'s side in the CLI: which archive to fetch, and the file
//! it is written to (`0600`, linked into place only when complete, never
//! over an existing file).

use std::path::Path;

use anyhow::Context as _;

use crate::exit::UsageError;

/// Whether `s` may name a decky or an archive in a URL path (the agent
/// checks again; this keeps `..` and `/` out of the request).
pub fn is_path_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The archive of `decky` to fetch: `id` when given (checked), else the
/// decky's newest in `list`.
pub fn evidence_id(
    list: &decnet_api::EvidenceList,
    host: &str,
    decky: &str,
    id: Option<&str>,
) -> Result<String, UsageError> {
    if !is_path_safe(decky) {
        return Err(UsageError(format!("{decky:?} is not a decky name")));
    }
    match id {
        Some(id) if is_path_safe(id) => Ok(id.to_string()),
        Some(id) => Err(UsageError(format!("{id:?} is not an archive id"))),
        None => list
            .archives
            .iter()
            .filter(|a| a.decky == decky && is_path_safe(&a.id))
            .max_by(|a, b| a.id.cmp(&b.id))
            .map(|a| a.id.clone())
            .ok_or_else(|| {
                UsageError(format!(
                    "{host} holds no evidence of decky {decky} (see `decnet swarm evidence {host}`)"
                ))
            }),
    }
}

/// A file written `0600` under a temporary name (`OUT.part`) and linked
/// into place only when complete: an existing file is never replaced.
pub struct NewFile {
    out: std::path::PathBuf,
    part: std::path::PathBuf,
}

/// Where `swarm evidence HOST --decky D` writes by default.
pub fn evidence_file(host: &str, decky: &str, id: &str) -> std::path::PathBuf {
    format!("{host}-{decky}-{id}.tar.gz").into()
}

impl NewFile {
    /// Create `OUT.part` (a usage error if `out` exists).
    pub async fn create(out: &Path) -> anyhow::Result<(NewFile, tokio::fs::File)> {
        let part = {
            let mut p = out.to_path_buf().into_os_string();
            p.push(".part");
            std::path::PathBuf::from(p)
        };
        if out.exists() {
            return Err(UsageError(format!("{} exists: not overwritten", out.display())).into());
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)
            .await
            .with_context(|| format!("cannot create {}", part.display()))?;
        Ok((
            NewFile {
                out: out.to_path_buf(),
                part,
            },
            file,
        ))
    }

    /// Put the complete file in place (written out first): a link, not a
    /// rename, so it fails if `out` appeared meanwhile.
    pub async fn commit(self, mut file: tokio::fs::File) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = async {
            file.flush().await?;
            file.sync_all().await
        }
        .await
        {
            self.abandon();
            return Err(anyhow::Error::new(e).context("cannot write the file"));
        }
        drop(file);
        let r = std::fs::hard_link(&self.part, &self.out)
            .with_context(|| format!("cannot create {} (not overwritten)", self.out.display()));
        let _ = std::fs::remove_file(&self.part);
        r
    }

    /// Give up: remove the partial file.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.part);
    }
}
