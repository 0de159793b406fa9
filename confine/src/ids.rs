//! Which user and group ids a decky runs under.
//!
//! By default every decky gets a uid (and the gid of the same number) of its
//! own from an [`IdRange`] reserved for decnet: never 0, never the agent's,
//! never an id listed in `/etc/passwd` or `/etc/group`, never one another
//! process already runs under. Owning its uid alone is what makes the
//! containment hold: deckies cannot signal or trace each other, a process
//! limit counts that decky alone, and stopping a decky can sweep every
//! process of its uid. A config may instead name an account
//! ([`AccountDb::resolve`]); root only with an explicit `allow_root`.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lowest id a range may start at: below it live system accounts.
pub const MIN_RANGE_START: u32 = 1000;
/// Highest id a range may reach (ids at or above 2^31 break many tools).
pub const MAX_RANGE_END: u32 = i32::MAX as u32 - 1;

/// An inclusive range of ids reserved for deckies, `FIRST-LAST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First id.
    pub first: u32,
    /// Last id (inclusive).
    pub last: u32,
}

/// The default range: far above login users and the usual subordinate-id
/// ranges of container engines (100000-165535 per user).
pub const DEFAULT_RANGE: IdRange = IdRange {
    first: 2_000_000,
    last: 2_065_535,
};

/// Why an id range is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid id range {0:?}: use FIRST-LAST with {MIN_RANGE_START} <= FIRST <= LAST <= {MAX_RANGE_END}"
)]
pub struct BadRange(pub String);

impl FromStr for IdRange {
    type Err = BadRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRange(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first < MIN_RANGE_START || last < first || last > MAX_RANGE_END {
            return Err(bad());
        }
        Ok(IdRange { first, last })
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// FNV-1a: a stable spread of names over the range (so a decky tends to get
/// the same id on every worker, which keeps file ownership readable).
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl IdRange {
    /// How many ids the range holds.
    pub fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Never empty (parsing refuses that); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `id` is inside the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    /// An id for decky `name`: the first free one from a slot derived from
    /// the name; `unusable(id)` says which are taken (by another decky, an
    /// account, a running process). `None` when the range is full.
    pub fn allocate(&self, name: &str, unusable: impl Fn(u32) -> bool) -> Option<u32> {
        let len = self.len();
        let start = fnv1a(name) % len;
        (0..len)
            .map(|i| self.first + ((start + i) % len) as u32)
            .find(|&id| !unusable(id))
    }
}

/// A user and group to run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIds {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Accounts of this host (`/etc/passwd`, `/etc/group`), parsed.
#[derive(Clone, Debug, Default)]
pub struct AccountDb {
    users: Vec<(String, u32, u32)>,
    groups: Vec<(String, u32)>,
}

/// Why a `user` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// No such account or group.
    #[error("no account named {0:?} on this host")]
    Unknown(String),
    /// Not `NAME`, `UID` or `UID:GID` / `NAME:GROUP`.
    #[error("invalid user {0:?}: use NAME, UID or UID:GID")]
    Malformed(String),
}

fn parse_db(text: &str, min_fields: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(move |f| f.len() >= min_fields)
}

impl AccountDb {
    /// Parse the text of `/etc/passwd` and `/etc/group`.
    pub fn parse(passwd: &str, group: &str) -> AccountDb {
        AccountDb {
            users: parse_db(passwd, 4)
                .filter_map(|f| Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?)))
                .collect(),
            groups: parse_db(group, 3)
                .filter_map(|f| Some((f[0].to_string(), f[2].parse().ok()?)))
                .collect(),
        }
    }

    /// Read this host's account files (missing files read as empty).
    pub fn load() -> AccountDb {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        AccountDb::parse(&read("/etc/passwd"), &read("/etc/group"))
    }

    /// Whether `id` is a listed user or group id (so not free for a decky).
    pub fn is_listed(&self, id: u32) -> bool {
        self.users.iter().any(|(_, u, g)| *u == id || *g == id)
            || self.groups.iter().any(|(_, g)| *g == id)
    }

    fn user(&self, s: &str) -> Result<(u32, Option<u32>), UserError> {
        if let Ok(uid) = s.parse::<u32>() {
            let gid = self.users.iter().find(|(_, u, _)| *u == uid).map(|u| u.2);
            return Ok((uid, gid));
        }
        self.users
            .iter()
            .find(|(n, _, _)| n == s)
            .map(|(_, u, g)| (*u, Some(*g)))
            .ok_or_else(|| UserError::Unknown(s.to_string()))
    }

    fn group(&self, s: &str) -> Result<u32, UserError> {
        if let Ok(gid) = s.parse::<u32>() {
            return Ok(gid);
        }
        self.groups
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, g)| *g)
            .ok_or_else(|| UserError::Unknown(s.to_string()))
    }

    /// Resolve `NAME`, `UID`, `NAME:GROUP` or `UID:GID` (a bare uid with no
    /// account runs with the gid of the same number).
    pub fn resolve(&self, spec: &str) -> Result<UserIds, UserError> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if !valid(u) || g.is_some_and(|g| !valid(g)) {
            return Err(UserError::Malformed(spec.to_string()));
        }
        let (uid, primary) = self.user(u)?;
        let gid = match g {
            Some(g) => self.group(g)?,
            None => primary.unwrap_or(uid),
        };
        Ok(UserIds { uid, gid })
    }
}

/// User ids that own a running process right now.
pub fn ids_in_use() -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_system_ids() {
        assert_eq!(
            "2000-2999".parse::<IdRange>().unwrap(),
            IdRange {
                first: 2000,
                last: 2999
            }
        );
        for bad in [
            "0-100",
            "999-2000",
            "3000-2000",
            "x-y",
            "5000",
            "1000-4294967295",
        ] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        assert_eq!(
            DEFAULT_RANGE.to_string().parse::<IdRange>(),
            Ok(DEFAULT_RANGE)
        );
    }

    #[test]
    fn allocation_is_stable_skips_unusable_ids_and_reports_a_full_range() {
        let r: IdRange = "5000-5009".parse().unwrap();
        let a = r.allocate("ssh-trap", |_| false).unwrap();
        assert!(r.contains(a));
        assert_eq!(r.allocate("ssh-trap", |_| false), Some(a), "stable");
        let b = r.allocate("ssh-trap", |id| id == a).unwrap();
        assert_ne!(a, b);
        assert!(r.contains(b));
        assert_eq!(r.allocate("x", |_| true), None);
        // Different names spread over the range.
        let ids: BTreeSet<u32> = (0..10)
            .filter_map(|i| r.allocate(&format!("d{i}"), |_| false))
            .collect();
        assert!(ids.len() > 3, "{ids:?}");
    }

    #[test]
    fn accounts_resolve_names_ids_and_groups() {
        let db = AccountDb::parse(
            "root:x:0:0:root:/root:/bin/bash\n# comment\nnobody:x:65534:65534::/:/usr/sbin/nologin\nweb:x:1001:1002::/:/bin/false\nbroken\n",
            "root:x:0:\nnogroup:x:65534:\nwebgrp:x:1002:\nstaff:x:50:\n",
        );
        assert_eq!(
            db.resolve("web").unwrap(),
            UserIds {
                uid: 1001,
                gid: 1002
            }
        );
        assert_eq!(
            db.resolve("1001").unwrap(),
            UserIds {
                uid: 1001,
                gid: 1002
            }
        );
        assert_eq!(
            db.resolve("web:staff").unwrap(),
            UserIds { uid: 1001, gid: 50 }
        );
        assert_eq!(
            db.resolve("4242").unwrap(),
            UserIds {
                uid: 4242,
                gid: 4242
            }
        );
        assert_eq!(
            db.resolve("4242:4243").unwrap(),
            UserIds {
                uid: 4242,
                gid: 4243
            }
        );
        assert_eq!(db.resolve("root").unwrap(), UserIds { uid: 0, gid: 0 });
        assert!(matches!(db.resolve("ghost"), Err(UserError::Unknown(_))));
        assert!(matches!(
            db.resolve("web:ghosts"),
            Err(UserError::Unknown(_))
        ));
        for bad in ["", "a b", "x:", "../x", "a:b:c"] {
            assert!(
                matches!(db.resolve(bad), Err(UserError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(db.is_listed(0) && db.is_listed(1002) && db.is_listed(50));
        assert!(!db.is_listed(4242));
    }

    #[test]
    fn this_process_uid_is_in_use() {
        assert!(ids_in_use().contains(&rustix::process::getuid().as_raw()));
    }
}
