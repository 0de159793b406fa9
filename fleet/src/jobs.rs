//! Jobs: long fleet operations (a deploy across the fleet) run by a master
//! daemon on an operator's behalf, with their truth in the database so that
//! they outlive the CLI that asked, any master can answer for them (two
//! masters on one PostgreSQL), and a master restart shows how far they got.
//!
//! - `jobs`: one row per job (kind, actor, state, the request, the result),
//!   with `updated_at` kept fresh by the daemon running it: a job whose
//!   daemon stopped goes `interrupted` once it is [`JOB_STALE_SECS`] old,
//!   never resumed silently;
//! - `job_events`: its progress lines, numbered, so a follower resumes from
//!   the last it saw (`decnet job follow`);
//! - `job_hosts`: per-host progress;
//! - `host_leases`: which job holds which host, so two operators changing
//!   the same host at once get a clear conflict instead of a race;
//! - an idempotency key per request: a repeated request (a retry after a
//!   dropped connection) answers with the first job, never starts a second.

use sqlx::Row;

use crate::db::{DbError, FleetDb, unix_now};

/// How long a running job may go without its daemon's heartbeat before it
/// is marked `interrupted` (and its hosts' leases end).
pub const JOB_STALE_SECS: i64 = 30;

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// Its id.
    pub id: String,
    /// What it does (`deploy`).
    pub kind: String,
    /// Who asked (an audit actor).
    pub actor: String,
    /// `running`, `done`, `failed`, `cancelled`, `interrupted`.
    pub state: String,
    /// The request (JSON).
    pub request: String,
    /// The result (JSON), once finished.
    pub result: Option<String>,
    /// When it started.
    pub created_at: i64,
    /// Its daemon's last heartbeat (or its end).
    pub updated_at: i64,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
}

/// One progress line of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    /// Its number (from 1).
    pub seq: i64,
    /// When (unix seconds).
    pub at: i64,
    /// The line.
    pub line: String,
}

/// One host of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobHost {
    /// The host.
    pub host: String,
    /// `pending`, `ok`, `failed`.
    pub state: String,
    /// Why, or what.
    pub detail: String,
}

/// What asking for a job gave.
#[derive(Clone, Debug)]
pub enum JobStart {
    /// A new job, leases taken.
    Created(JobRecord),
    /// The same request was made before (same idempotency key): its job.
    Existing(JobRecord),
    /// Hosts another running job holds (none of them was taken).
    Busy(Vec<(String, String)>),
}

fn job_of(r: &sqlx::any::AnyRow) -> Result<JobRecord, DbError> {
    Ok(JobRecord {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        actor: r.try_get(2)?,
        state: r.try_get(3)?,
        request: r.try_get(4)?,
        result: r.try_get(5)?,
        created_at: r.try_get(6)?,
        updated_at: r.try_get(7)?,
        finished_at: r.try_get(8)?,
        cancel_requested: r.try_get::<i64, _>(9)? != 0,
    })
}

impl FleetDb {
    /// Start a job of `kind` for `actor` on `hosts`, in one transaction:
    /// the same `idempotency_key` answers with the job it started before;
    /// otherwise every host must be free of other running jobs (expired
    /// leases are dropped first), and then the job, its hosts and their
    /// leases are recorded.
    pub async fn start_job(
        &self,
        kind: &str,
        actor: &str,
        idempotency_key: Option<&str>,
        request: &str,
        hosts: &[String],
    ) -> Result<JobStart, DbError> {
        let now = unix_now();
        let key = idempotency_key.map(|k| format!("{actor}:{k}"));
        let mut tx = self.write_tx().await?;
        if let Some(k) = &key {
            let existing = sqlx::query(
                "SELECT id, kind, actor, state, request, result, created_at, updated_at, finished_at, cancel_requested \
                 FROM jobs WHERE idempotency_key = $1",
            )
            .bind(k)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = existing {
                return Ok(JobStart::Existing(job_of(&r)?));
            }
        }
        sqlx::query("DELETE FROM host_leases WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let mut busy = Vec::new();
        for h in hosts {
            if let Some(r) = sqlx::query("SELECT job_id FROM host_leases WHERE host = $1")
                .bind(h)
                .fetch_optional(&mut *tx)
                .await?
            {
                busy.push((h.clone(), r.try_get::<String, _>(0)?));
            }
        }
        if !busy.is_empty() {
            return Ok(JobStart::Busy(busy));
        }
        let id = decnet_pki::random_hex(8);
        sqlx::query(
            "INSERT INTO jobs (id, kind, actor, state, idempotency_key, request, result, created_at, updated_at, finished_at, cancel_requested) \
             VALUES ($1, $2, $3, 'running', $4, $5, NULL, $6, $6, NULL, 0)",
        )
        .bind(&id)
        .bind(kind)
        .bind(actor)
        .bind(key)
        .bind(request)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for h in hosts {
            sqlx::query(
                "INSERT INTO job_hosts (job_id, host, state, detail, updated_at) VALUES ($1, $2, 'pending', '', $3)",
            )
            .bind(&id)
            .bind(h)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO host_leases (host, job_id, expires_at) VALUES ($1, $2, $3)")
                .bind(h)
                .bind(&id)
                .bind(now + JOB_STALE_SECS)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(JobStart::Created(JobRecord {
            id,
            kind: kind.to_string(),
            actor: actor.to_string(),
            state: "running".into(),
            request: request.to_string(),
            result: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            cancel_requested: false,
        }))
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, DbError> {
        let r = sqlx::query(
            "SELECT id, kind, actor, state, request, result, created_at, updated_at, finished_at, cancel_requested \
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        r.as_ref().map(job_of).transpose()
    }

    /// The newest `limit` jobs.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<JobRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT id, kind, actor, state, request, result, created_at, updated_at, finished_at, cancel_requested \
             FROM jobs ORDER BY created_at DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_of).collect()
    }

    /// Every running job of `kind`, however old (what a running job needs
    /// must outlive any number of newer jobs).
    pub async fn running_jobs(&self, kind: &str) -> Result<Vec<JobRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT id, kind, actor, state, request, result, created_at, updated_at, finished_at, cancel_requested \
             FROM jobs WHERE kind = $1 AND state = 'running' ORDER BY created_at, id",
        )
        .bind(kind)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_of).collect()
    }

    /// A job's hosts.
    pub async fn job_hosts(&self, id: &str) -> Result<Vec<JobHost>, DbError> {
        let rows = sqlx::query(
            "SELECT host, state, detail FROM job_hosts WHERE job_id = $1 ORDER BY host",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobHost {
                    host: r.try_get(0)?,
                    state: r.try_get(1)?,
                    detail: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// A job's progress lines after `after` (at most `limit`).
    pub async fn job_events(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<JobEvent>, DbError> {
        let rows = sqlx::query(
            "SELECT seq, at, line FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobEvent {
                    seq: r.try_get(0)?,
                    at: r.try_get(1)?,
                    line: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Append progress lines numbered from `first_seq`, and per-host
    /// states, in one transaction.
    pub async fn record_job_progress(
        &self,
        id: &str,
        first_seq: i64,
        lines: &[String],
        hosts: &[JobHost],
    ) -> Result<(), DbError> {
        if lines.is_empty() && hosts.is_empty() {
            return Ok(());
        }
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        for (i, line) in lines.iter().enumerate() {
            sqlx::query("INSERT INTO job_events (job_id, seq, at, line) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(first_seq + i as i64)
                .bind(now)
                .bind(line)
                .execute(&mut *tx)
                .await?;
        }
        for h in hosts {
            sqlx::query(
                "UPDATE job_hosts SET state = $1, detail = $2, updated_at = $3 WHERE job_id = $4 AND host = $5",
            )
            .bind(&h.state)
            .bind(&h.detail)
            .bind(now)
            .bind(id)
            .bind(&h.host)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The running daemon's heartbeat for job `id`: keeps it from being
    /// marked interrupted, and its leases alive. Returns whether a cancel
    /// was asked for.
    pub async fn job_heartbeat(&self, id: &str) -> Result<bool, DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE jobs SET updated_at = $1 WHERE id = $2 AND state = 'running'")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE host_leases SET expires_at = $1 WHERE job_id = $2")
            .bind(now + JOB_STALE_SECS)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let cancel = sqlx::query("SELECT cancel_requested FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0)
            != 0;
        tx.commit().await?;
        Ok(cancel)
    }

    /// End job `id` in `state` with `result`; its leases end.
    pub async fn finish_job(&self, id: &str, state: &str, result: &str) -> Result<(), DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, updated_at = $3, finished_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(result)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM host_leases WHERE job_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ask running job `id` to stop (its daemon sees it at its next
    /// heartbeat). `false`: no such running job.
    pub async fn request_job_cancel(&self, id: &str) -> Result<bool, DbError> {
        Ok(
            sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND state = 'running'")
                .bind(id)
                .execute(self.pool())
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Delete the jobs that ended before `before` (unix seconds), with
    /// their hosts and progress lines: a job's record outlives it for a
    /// while (`decnet job show`), not forever. Returns how many.
    pub async fn prune_finished_jobs(&self, before: i64) -> Result<u64, DbError> {
        let mut tx = self.write_tx().await?;
        for delete in [
            "DELETE FROM job_events WHERE job_id IN \
             (SELECT id FROM jobs WHERE state <> 'running' AND finished_at < $1)",
            "DELETE FROM job_hosts WHERE job_id IN \
             (SELECT id FROM jobs WHERE state <> 'running' AND finished_at < $1)",
        ] {
            sqlx::query(delete).bind(before).execute(&mut *tx).await?;
        }
        let n = sqlx::query("DELETE FROM jobs WHERE state <> 'running' AND finished_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Mark running jobs whose daemon stopped heartbeating `interrupted`
    /// (and end their leases). Returns how many.
    pub async fn interrupt_stale_jobs(&self) -> Result<u64, DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE jobs SET state = 'interrupted', finished_at = $1 WHERE state = 'running' AND updated_at < $2",
        )
        .bind(now)
        .bind(now - JOB_STALE_SECS)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            sqlx::query(
                "DELETE FROM host_leases WHERE job_id IN (SELECT id FROM jobs WHERE state <> 'running')",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, FleetDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = FleetDb::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("m.db").display()
        ))
        .await
        .unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn a_repeated_request_answers_with_its_first_job_and_hosts_are_leased_once() {
        let (_d, db) = db().await;
        let hosts = vec!["w1".to_string(), "w2".to_string()];
        let JobStart::Created(a) = db
            .start_job("deploy", "operator:bob", Some("k1"), "{}", &hosts)
            .await
            .unwrap()
        else {
            panic!("not created");
        };
        let JobStart::Existing(again) = db
            .start_job("deploy", "operator:bob", Some("k1"), "{}", &hosts)
            .await
            .unwrap()
        else {
            panic!("a repeated request started another job");
        };
        assert_eq!(again.id, a.id);
        // Another operator, another request on w2: refused, naming the job.
        match db
            .start_job(
                "deploy",
                "operator:eve",
                Some("k1"),
                "{}",
                &["w2".into(), "w3".into()],
            )
            .await
            .unwrap()
        {
            JobStart::Busy(b) => assert_eq!(b, vec![("w2".to_string(), a.id.clone())]),
            other => panic!("{other:?}"),
        }
        // Progress, then the end frees the hosts.
        db.record_job_progress(
            &a.id,
            1,
            &["w1 deploy accepted".into(), "w1 done".into()],
            &[JobHost {
                host: "w1".into(),
                state: "ok".into(),
                detail: String::new(),
            }],
        )
        .await
        .unwrap();
        let ev = db.job_events(&a.id, 1, 100).await.unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].line, "w1 done");
        assert!(!db.job_heartbeat(&a.id).await.unwrap());
        assert!(db.request_job_cancel(&a.id).await.unwrap());
        assert!(db.job_heartbeat(&a.id).await.unwrap(), "the cancel is seen");
        db.finish_job(&a.id, "done", "[]").await.unwrap();
        assert!(!db.request_job_cancel(&a.id).await.unwrap());
        assert!(matches!(
            db.start_job("deploy", "operator:eve", None, "{}", &["w2".into()])
                .await
                .unwrap(),
            JobStart::Created(_)
        ));
    }

    #[tokio::test]
    async fn a_job_whose_daemon_stopped_is_interrupted_and_frees_its_hosts() {
        let (_d, db) = db().await;
        let JobStart::Created(a) = db
            .start_job("deploy", "local:root", None, "{}", &["w1".into()])
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(db.interrupt_stale_jobs().await.unwrap(), 0);
        sqlx::query("UPDATE jobs SET updated_at = updated_at - 3600")
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE host_leases SET expires_at = expires_at - 3600")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(db.interrupt_stale_jobs().await.unwrap(), 1);
        assert_eq!(db.job(&a.id).await.unwrap().unwrap().state, "interrupted");
        // An ended job is kept until it is old enough, then goes with its lines.
        assert_eq!(
            db.prune_finished_jobs(unix_now() - 86_400).await.unwrap(),
            0
        );
        assert!(db.job(&a.id).await.unwrap().is_some());
        assert_eq!(db.prune_finished_jobs(unix_now() + 1).await.unwrap(), 1);
        assert!(db.job(&a.id).await.unwrap().is_none());
        assert!(db.job_events(&a.id, 0, 10).await.unwrap().is_empty());
        assert!(matches!(
            db.start_job("deploy", "local:root", None, "{}", &["w1".into()])
                .await
                .unwrap(),
            JobStart::Created(_)
        ));
    }
}
