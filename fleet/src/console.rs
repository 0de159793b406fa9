//! What the master's console and alerts keep in the fleet database, so two
//! masters on one PostgreSQL agree and a restart loses nothing:
//!
//! - `console_tickets`: one-time login URLs (`decnet console`), single use,
//!   about a minute; stored as the SHA-256 of their secret;
//! - `console_sessions`: browser sessions opened with a ticket, bound to
//!   one operator, expiring, ended by a logout or the operator's
//!   revocation; stored hashed too, with their CSRF token;
//! - `alerts` and `alert_deliveries`: webhooks and what became of each
//!   delivery.

use sqlx::Row;

use crate::db::{DbError, FleetDb, unix_now};

/// How long a one-time login URL may be used.
pub const TICKET_TTL_SECS: i64 = 60;
/// How long a console session lasts.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;
/// The most sessions one operator holds; a new one ends the oldest.
pub const MAX_SESSIONS_PER_OPERATOR: usize = 16;
/// How many deliveries the alert history keeps.
pub const MAX_DELIVERIES_KEPT: i64 = 10_000;

/// A console session as stored (its secret is not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The operator it acts as.
    pub operator: String,
    /// Its CSRF token (sent in a header with every change).
    pub csrf: String,
    /// When it ends.
    pub expires_at: i64,
}

/// An alert as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// Its name.
    pub name: String,
    /// The webhook URL.
    pub webhook: String,
    /// Topics (their wire names).
    pub topics: Vec<String>,
    /// Kinds (empty: every kind of its topics).
    pub kinds: Vec<String>,
    /// The signing secret (hex).
    pub secret: String,
    /// Who made it.
    pub created_by: String,
    /// When.
    pub created_at: i64,
    /// Deliveries that reached the receiver.
    pub delivered: i64,
    /// Deliveries that gave up.
    pub failed: i64,
}

impl std::fmt::Debug for AlertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("AlertRecord")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

/// One delivery's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The alert.
    pub alert: String,
    /// The event.
    pub event_id: i64,
    /// The event's kind.
    pub kind: String,
    /// Its host.
    pub host: Option<String>,
    /// When it ended.
    pub at: i64,
    /// `delivered` or `failed`.
    pub outcome: String,
    /// Attempts made.
    pub attempts: i64,
    /// The receiver's last answer or why it was not reached.
    pub detail: Option<String>,
}

/// The stored form of a secret: its SHA-256, hex.
pub fn secret_hash(secret: &str) -> String {
    decnet_pki::signing::sha256_hex(secret.as_bytes())
}

fn alert_from_row(r: &sqlx::any::AnyRow) -> Result<AlertRecord, DbError> {
    let list = |i: usize| -> Result<Vec<String>, DbError> {
        serde_json::from_str(&r.try_get::<String, _>(i)?)
            .map_err(|_| DbError::Corrupt("alerts list"))
    };
    Ok(AlertRecord {
        name: r.try_get(0)?,
        webhook: r.try_get(1)?,
        topics: list(2)?,
        kinds: list(3)?,
        secret: r.try_get(4)?,
        created_by: r.try_get(5)?,
        created_at: r.try_get(6)?,
        delivered: r.try_get(7)?,
        failed: r.try_get(8)?,
    })
}

impl FleetDb {
    /// Store a one-time login ticket for `operator` (its secret's hash).
    pub async fn create_console_ticket(
        &self,
        secret: &str,
        operator: &str,
    ) -> Result<i64, DbError> {
        let now = unix_now();
        sqlx::query("DELETE FROM console_tickets WHERE expires_at < $1")
            .bind(now - 3600)
            .execute(self.pool())
            .await?;
        let expires = now + TICKET_TTL_SECS;
        sqlx::query(
            "INSERT INTO console_tickets (hash, operator, expires_at, used_at) VALUES ($1, $2, $3, NULL)",
        )
        .bind(secret_hash(secret))
        .bind(operator)
        .bind(expires)
        .execute(self.pool())
        .await?;
        Ok(expires)
    }

    /// The operator a ticket would sign in, while it is unused and
    /// unexpired (a read: nothing is taken or locked).
    pub async fn console_ticket_operator(&self, ticket: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query(
            "SELECT operator FROM console_tickets WHERE hash = $1 AND used_at IS NULL AND expires_at >= $2",
        )
        .bind(secret_hash(ticket))
        .bind(unix_now())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| r.try_get::<String, _>(0).map_err(DbError::from))
            .transpose()
    }

    /// Use a ticket (once, before it expires) and open a session with it:
    /// the operator, when the ticket was good. `session` and `csrf` are the
    /// new session's secret and token.
    pub async fn redeem_console_ticket(
        &self,
        ticket: &str,
        session: &str,
        csrf: &str,
        source: Option<&str>,
    ) -> Result<Option<String>, DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE console_tickets SET used_at = $1 \
             WHERE hash = $2 AND used_at IS NULL AND expires_at >= $3 RETURNING operator",
        )
        .bind(now)
        .bind(secret_hash(ticket))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let operator: String = row.try_get(0)?;
        // The oldest sessions beyond the bound end.
        let held = sqlx::query(
            "SELECT hash FROM console_sessions WHERE operator = $1 ORDER BY created_at DESC, hash",
        )
        .bind(&operator)
        .fetch_all(&mut *tx)
        .await?;
        for old in held.iter().skip(MAX_SESSIONS_PER_OPERATOR - 1) {
            sqlx::query("DELETE FROM console_sessions WHERE hash = $1")
                .bind(old.try_get::<String, _>(0)?)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO console_sessions (hash, operator, csrf, created_at, expires_at, source) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(secret_hash(session))
        .bind(&operator)
        .bind(csrf)
        .bind(now)
        .bind(now + SESSION_TTL_SECS)
        .bind(source)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(operator))
    }

    /// The live session whose secret is `session`.
    pub async fn console_session(&self, session: &str) -> Result<Option<ConsoleSession>, DbError> {
        let row = sqlx::query(
            "SELECT operator, csrf, expires_at FROM console_sessions WHERE hash = $1 AND expires_at > $2",
        )
        .bind(secret_hash(session))
        .bind(unix_now())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(ConsoleSession {
                operator: r.try_get(0)?,
                csrf: r.try_get(1)?,
                expires_at: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// End a session (logout).
    pub async fn end_console_session(&self, session: &str) -> Result<bool, DbError> {
        Ok(sqlx::query("DELETE FROM console_sessions WHERE hash = $1")
            .bind(secret_hash(session))
            .execute(self.pool())
            .await?
            .rows_affected()
            > 0)
    }

    /// End every session of `operator` (its revocation); returns how many.
    pub async fn end_console_sessions_of(&self, operator: &str) -> Result<u64, DbError> {
        Ok(
            sqlx::query("DELETE FROM console_sessions WHERE operator = $1")
                .bind(operator)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Store a new alert; `false` when the name is taken.
    pub async fn add_alert(&self, a: &AlertRecord) -> Result<bool, DbError> {
        let taken = sqlx::query("SELECT 1 FROM alerts WHERE name = $1")
            .bind(&a.name)
            .fetch_optional(self.pool())
            .await?
            .is_some();
        if taken {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO alerts (name, webhook, topics, kinds, secret, created_by, created_at, delivered, failed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0)",
        )
        .bind(&a.name)
        .bind(&a.webhook)
        .bind(serde_json::to_string(&a.topics).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&a.kinds).unwrap_or_else(|_| "[]".into()))
        .bind(&a.secret)
        .bind(&a.created_by)
        .bind(a.created_at)
        .execute(self.pool())
        .await?;
        Ok(true)
    }

    /// Every alert, by name.
    pub async fn alerts(&self) -> Result<Vec<AlertRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT name, webhook, topics, kinds, secret, created_by, created_at, delivered, failed \
             FROM alerts ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Remove an alert (its history stays); whether it existed.
    pub async fn remove_alert(&self, name: &str) -> Result<bool, DbError> {
        Ok(sqlx::query("DELETE FROM alerts WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await?
            .rows_affected()
            > 0)
    }

    /// Record a delivery's outcome (and count it on its alert); the
    /// history keeps the newest [`MAX_DELIVERIES_KEPT`].
    pub async fn record_delivery(&self, d: &DeliveryRecord) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO alert_deliveries (id, alert, event_id, kind, host, at, outcome, attempts, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(decnet_pki::random_hex(16))
        .bind(&d.alert)
        .bind(d.event_id)
        .bind(&d.kind)
        .bind(&d.host)
        .bind(d.at)
        .bind(&d.outcome)
        .bind(d.attempts)
        .bind(&d.detail)
        .execute(&mut *tx)
        .await?;
        let counted = if d.outcome == "delivered" {
            "UPDATE alerts SET delivered = delivered + 1 WHERE name = $1"
        } else {
            "UPDATE alerts SET failed = failed + 1 WHERE name = $1"
        };
        sqlx::query(counted)
            .bind(&d.alert)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drop the history beyond the newest [`MAX_DELIVERIES_KEPT`].
    pub async fn prune_deliveries(&self) -> Result<u64, DbError> {
        let cutoff =
            sqlx::query("SELECT at FROM alert_deliveries ORDER BY at DESC LIMIT 1 OFFSET $1")
                .bind(MAX_DELIVERIES_KEPT)
                .fetch_optional(self.pool())
                .await?;
        let Some(cutoff) = cutoff else { return Ok(0) };
        Ok(sqlx::query("DELETE FROM alert_deliveries WHERE at < $1")
            .bind(cutoff.try_get::<i64, _>(0)?)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// The newest deliveries (of one alert, when given), newest first.
    pub async fn deliveries(
        &self,
        alert: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>, DbError> {
        let rows = match alert {
            Some(a) => {
                sqlx::query(
                    "SELECT alert, event_id, kind, host, at, outcome, attempts, detail FROM alert_deliveries \
                     WHERE alert = $1 ORDER BY at DESC, event_id DESC LIMIT $2",
                )
                .bind(a)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT alert, event_id, kind, host, at, outcome, attempts, detail FROM alert_deliveries \
                     ORDER BY at DESC, event_id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    alert: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    host: r.try_get(3)?,
                    at: r.try_get(4)?,
                    outcome: r.try_get(5)?,
                    attempts: r.try_get(6)?,
                    detail: r.try_get(7)?,
                })
            })
            .collect()
    }
}
