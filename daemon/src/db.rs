//! Job records in SQLite (rusqlite, bundled): one row per job, WAL journal.
//!
//! A row holds the indexed columns (id, owner, state, insertion sequence) and the whole record as
//! an encoded `jobworker.v1.Job` (without the input tar). Listing walks the `seq` order through
//! `(owner, seq)` / `(state, seq)` indexes, so a page costs the same at 100 or 100,000 rows.
//! Durability: WAL with `synchronous = NORMAL` survives a crash of the daemon process (`kill -9`)
//! for every committed transaction; `FULL` would add power-loss durability at an fsync per write.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;
use proto::{Job, JobState};
use rusqlite::{params, Connection, OptionalExtension};

/// Errors of the job database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {op} (job {job_id}): {source}")]
    Query {
        op: &'static str,
        job_id: String,
        source: rusqlite::Error,
    },
    #[error("decode record of job {job_id}: {source}")]
    Decode {
        job_id: String,
        source: prost::DecodeError,
    },
    #[error("invalid page_token {token:?}")]
    BadPageToken { token: String },
}

/// A listing filter.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Any of these states (empty = all).
    pub states: Vec<JobState>,
    /// Only this owner.
    pub owner: Option<String>,
    /// From `ListJobsResponse.next_page_token`.
    pub page_token: String,
    /// Page size (already clamped by the caller).
    pub limit: u32,
}

/// A job that was starting or running when the daemon last stopped.
#[derive(Debug, Clone)]
pub struct Unfinished {
    /// Its record.
    pub job: Job,
    /// The container init's pid, if it got that far.
    pub pid: Option<i32>,
    /// That process's start time (clock ticks since boot), to detect pid reuse.
    pub pid_start: Option<u64>,
    /// The job's shim (pid, start time), once spawned.
    pub shim: Option<(i32, u64)>,
    /// A stop in progress: its reason and when SIGKILL is due (ms since the epoch).
    pub stop: Option<(String, i64)>,
}

/// The job database.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    state INTEGER NOT NULL,
    record BLOB NOT NULL,
    pid INTEGER,
    pid_start INTEGER,
    shim_pid INTEGER,
    shim_start INTEGER,
    stop_reason TEXT,
    stop_kill_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_owner_seq ON jobs(owner, seq);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs(state, seq);
";

/// Columns added after the first schema, which older databases lack.
const ADDED_COLUMNS: [(&str, &str); 5] = [
    ("shim_pid", "INTEGER"),
    ("shim_start", "INTEGER"),
    ("stop_reason", "TEXT"),
    ("stop_kill_at_ms", "INTEGER"),
    // When a job in a final state ended (ms since the epoch); NULL while it may still run.
    ("ended_ms", "INTEGER"),
];

/// The states a job never leaves, as stored in the `state` column: only these are pruned.
const FINAL_STATES_SQL: &str = "(3, 4, 5, 6)";

/// When `job` ended, if it is in a final state (its creation time for a job that failed
/// before anything recorded an end).
fn ended_ms(job: &Job) -> Option<i64> {
    crate::manager::is_final(job.state).then_some(if job.ended_at_ms > 0 {
        job.ended_at_ms
    } else {
        job.created_at_ms
    })
}

fn add_missing_columns(conn: &Connection) -> Result<(), rusqlite::Error> {
    for (name, kind) in ADDED_COLUMNS {
        let has: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = ?1")?
            .exists([name])?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {kind};"))?;
        }
    }
    Ok(())
}

fn strip(job: &Job) -> Vec<u8> {
    let mut j = job.clone();
    if let Some(spec) = j.spec.as_mut() {
        spec.input_tar.clear();
    }
    j.encode_to_vec()
}

impl Db {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let err = |source| DbError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "busy_timeout", 5000)
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        // Room for every statement jobd makes, the list's variants (filters, paging) too.
        conn.set_prepared_statement_cache_capacity(64);
        add_missing_columns(&conn).map_err(err)?;
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS jobs_ended ON jobs(ended_ms) WHERE ended_ms IS NOT NULL;",
        )
        .map_err(err)?;
        let db = Db {
            conn: Mutex::new(conn),
        };
        db.fill_ended_times()?;
        Ok(db)
    }

    /// Gives finished jobs of a database from before the `ended_ms` column their end time,
    /// so that retention sees them.
    fn fill_ended_times(&self) -> Result<(), DbError> {
        let conn = self.conn();
        let q = |source| DbError::Query {
            op: "fill end times",
            job_id: "-".into(),
            source,
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, record FROM jobs WHERE ended_ms IS NULL AND state IN {FINAL_STATES_SQL}"
            ))
            .map_err(q)?;
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(q)?;
        for (id, blob) in rows {
            let job = Job::decode(blob.as_slice()).map_err(|source| DbError::Decode {
                job_id: id.clone(),
                source,
            })?;
            conn.execute(
                "UPDATE jobs SET ended_ms = ?2 WHERE id = ?1",
                params![id, ended_ms(&job)],
            )
            .map_err(q)?;
        }
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: keep going.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one statement through the connection's statement cache: parsing the SQL was most
    /// of a small statement's cost, and a job's start and end make four of them.
    fn run(
        &self,
        op: &'static str,
        job_id: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), DbError> {
        self.conn()
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .map_err(Self::q(op, job_id))?;
        Ok(())
    }

    fn q(op: &'static str, job_id: &str) -> impl FnOnce(rusqlite::Error) -> DbError {
        let job_id = job_id.to_string();
        move |source| DbError::Query { op, job_id, source }
    }

    /// Inserts a new job; committed when this returns.
    pub fn insert(&self, job: &Job) -> Result<(), DbError> {
        self.run(
            "insert",
            &job.id,
            "INSERT INTO jobs (id, owner, state, record, ended_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job.id, job.owner, job.state, strip(job), ended_ms(job)],
        )
    }

    /// Replaces a job's record (and state column).
    pub fn update(&self, job: &Job) -> Result<(), DbError> {
        self.run(
            "update",
            &job.id,
            "UPDATE jobs SET state = ?2, record = ?3, ended_ms = ?4 WHERE id = ?1",
            params![job.id, job.state, strip(job), ended_ms(job)],
        )
    }

    /// Records the container init's pid and start time (cleared with `None`).
    pub fn set_pid(&self, id: &str, pid: Option<(i32, u64)>) -> Result<(), DbError> {
        let (p, s) = match pid {
            Some((p, s)) => (Some(p), Some(s as i64)),
            None => (None, None),
        };
        self.run(
            "set pid",
            id,
            "UPDATE jobs SET pid = ?2, pid_start = ?3 WHERE id = ?1",
            params![id, p, s],
        )
    }

    /// Records the job's shim (pid, start time).
    pub fn set_shim(&self, id: &str, shim: (i32, u64)) -> Result<(), DbError> {
        self.run(
            "set shim",
            id,
            "UPDATE jobs SET shim_pid = ?2, shim_start = ?3 WHERE id = ?1",
            params![id, shim.0, shim.1 as i64],
        )
    }

    /// Records a stop in progress: why (the manager's encoding) and when SIGKILL is due, so
    /// that a jobd restarted in the grace period finishes it.
    pub fn set_stop(&self, id: &str, reason: &str, kill_at_ms: i64) -> Result<(), DbError> {
        self.run(
            "set stop",
            id,
            "UPDATE jobs SET stop_reason = ?2, stop_kill_at_ms = ?3 WHERE id = ?1",
            params![id, reason, kill_at_ms],
        )
    }

    /// Writes a final record and forgets the job's processes, in one statement.
    pub fn finish(&self, job: &Job) -> Result<(), DbError> {
        self.run(
            "finish",
            &job.id,
            "UPDATE jobs SET state = ?2, record = ?3, pid = NULL, pid_start = NULL, \
                 shim_pid = NULL, shim_start = NULL, stop_reason = NULL, \
                 stop_kill_at_ms = NULL, ended_ms = ?4 WHERE id = ?1",
            params![job.id, job.state, strip(job), ended_ms(job)],
        )
    }

    /// Marks a job running with its main process (pid, start time), in one statement.
    pub fn set_running(&self, job: &Job, pid: (i32, u64)) -> Result<(), DbError> {
        self.run(
            "set running",
            &job.id,
            "UPDATE jobs SET state = ?2, record = ?3, pid = ?4, pid_start = ?5 WHERE id = ?1",
            params![job.id, job.state, strip(job), pid.0, pid.1 as i64],
        )
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Option<Job>, DbError> {
        let blob: Option<Vec<u8>> = self
            .conn()
            .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
            .and_then(|mut stmt| stmt.query_row(params![id], |r| r.get(0)).optional())
            .map_err(Self::q("get", id))?;
        blob.map(|b| {
            Job::decode(b.as_slice()).map_err(|source| DbError::Decode {
                job_id: id.to_string(),
                source,
            })
        })
        .transpose()
    }

    /// Up to `limit` jobs in a final state that ended before `cutoff_ms`, oldest end first.
    pub fn ended_before(&self, cutoff_ms: i64, limit: u32) -> Result<Vec<String>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id FROM jobs WHERE ended_ms IS NOT NULL AND ended_ms < ?1 \
                 AND state IN {FINAL_STATES_SQL} ORDER BY ended_ms LIMIT ?2"
            ))
            .map_err(Self::q("ended before", "-"))?;
        stmt.query_map(params![cutoff_ms, limit], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(Self::q("ended before", "-"))
    }

    /// Deletes the record of job `id` if it is in a final state (never one that may run).
    pub fn delete_finished(&self, id: &str) -> Result<(), DbError> {
        self.run(
            "delete",
            id,
            &format!("DELETE FROM jobs WHERE id = ?1 AND state IN {FINAL_STATES_SQL}"),
            params![id],
        )
    }

    /// A page of jobs, newest first, and the token of the next page ("" at the end).
    pub fn list(&self, f: &ListFilter) -> Result<(Vec<Job>, String), DbError> {
        let before: i64 = if f.page_token.is_empty() {
            i64::MAX
        } else {
            f.page_token
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| DbError::BadPageToken {
                    token: f.page_token.clone(),
                })?
        };
        let (sql, args) = list_query(f, before);
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql).map_err(Self::q("list", "-"))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(Self::q("list", "-"))?;
        let mut jobs = Vec::new();
        let mut last_seq = 0;
        let mut more = false;
        for row in rows {
            let (seq, id, blob) = row.map_err(Self::q("list", "-"))?;
            if jobs.len() as u32 == f.limit {
                more = true;
                break;
            }
            let job = Job::decode(blob.as_slice())
                .map_err(|source| DbError::Decode { job_id: id, source })?;
            jobs.push(job);
            last_seq = seq;
        }
        let token = if more {
            last_seq.to_string()
        } else {
            String::new()
        };
        Ok((jobs, token))
    }

    /// Jobs recorded as starting or running (for the restart sweep).
    pub fn unfinished(&self) -> Result<Vec<Unfinished>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, record, pid, pid_start, shim_pid, shim_start, stop_reason, \
                 stop_kill_at_ms FROM jobs WHERE state IN (?1, ?2)",
            )
            .map_err(Self::q("unfinished", "-"))?;
        let rows = stmt
            .query_map(
                params![JobState::Starting as i32, JobState::Running as i32],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<i32>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<i32>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<i64>>(7)?,
                    ))
                },
            )
            .map_err(Self::q("unfinished", "-"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, blob, pid, start, shim_pid, shim_start, stop, kill_at) =
                row.map_err(Self::q("unfinished", "-"))?;
            let job = Job::decode(blob.as_slice())
                .map_err(|source| DbError::Decode { job_id: id, source })?;
            out.push(Unfinished {
                job,
                pid,
                pid_start: start.map(|s| s as u64),
                shim: shim_pid.zip(shim_start.map(|s| s as u64)),
                stop: stop.zip(kill_at),
            });
        }
        Ok(out)
    }
}

/// The SQL and arguments of one page of [`Db::list`]: every filter is an indexed range, so
/// a page costs its rows, not the table.
fn list_query(f: &ListFilter, before: i64) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::from("SELECT seq, id, record FROM jobs WHERE seq < ?");
    let mut args: Vec<rusqlite::types::Value> = vec![before.into()];
    if let Some(owner) = &f.owner {
        sql.push_str(" AND owner = ?");
        args.push(owner.clone().into());
    }
    if !f.states.is_empty() {
        sql.push_str(" AND state IN (");
        for (i, s) in f.states.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push((*s as i64).into());
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    // One more than asked tells whether another page exists.
    args.push((f.limit as i64 + 1).into());
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: usize, owner: &str, state: JobState) -> Job {
        Job {
            id: format!("{i:08x}-0000-4000-8000-000000000000"),
            owner: owner.into(),
            state: state as i32,
            spec: Some(proto::JobSpec {
                command: "echo".into(),
                input_tar: vec![1, 2, 3],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn retention_sees_only_finished_jobs_by_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let ended = |i, state, at| Job {
            ended_at_ms: at,
            created_at_ms: 5,
            ..job(i, "alice", state)
        };
        {
            let db = Db::open(&path).unwrap();
            db.insert(&ended(1, JobState::Running, 0)).unwrap();
            db.insert(&ended(2, JobState::Starting, 0)).unwrap();
            db.insert(&ended(3, JobState::Running, 0)).unwrap();
            db.finish(&ended(3, JobState::Exited, 300)).unwrap();
            db.insert(&ended(4, JobState::Running, 0)).unwrap();
            db.update(&ended(4, JobState::Stopped, 100)).unwrap();
            // Failed before anything recorded an end: its creation counts.
            db.insert(&ended(5, JobState::Failed, 0)).unwrap();
            db.insert(&ended(6, JobState::Killed, 900)).unwrap();
            let ids = db.ended_before(400, 10).unwrap();
            assert_eq!(ids, [5, 4, 3].map(|i| job(i, "", JobState::Exited).id));
            assert_eq!(db.ended_before(400, 2).unwrap().len(), 2);
            // Never a job that may still run, even asked directly.
            db.delete_finished(&job(1, "", JobState::Running).id)
                .unwrap();
            assert!(db.get(&job(1, "", JobState::Running).id).unwrap().is_some());
            db.delete_finished(&job(3, "", JobState::Exited).id)
                .unwrap();
            assert!(db.get(&job(3, "", JobState::Exited).id).unwrap().is_none());
            // A database from before the column: finished rows have no end time yet.
            db.conn()
                .execute("UPDATE jobs SET ended_ms = NULL", [])
                .unwrap();
            assert!(db.ended_before(i64::MAX, 10).unwrap().is_empty());
        }
        let db = Db::open(&path).unwrap();
        let ids = db.ended_before(i64::MAX, 10).unwrap();
        assert_eq!(ids, [5, 4, 6].map(|i| job(i, "", JobState::Exited).id));
        // The SQL list of final states is the enum's.
        let finals = [
            JobState::Exited,
            JobState::Killed,
            JobState::Stopped,
            JobState::Failed,
        ]
        .map(|s| (s as i32).to_string())
        .join(", ");
        assert_eq!(FINAL_STATES_SQL, format!("({finals})"));
    }

    #[test]
    fn persists_across_reopen_and_strips_input_tar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        {
            let db = Db::open(&path).unwrap();
            db.insert(&job(1, "alice", JobState::Running)).unwrap();
            db.set_pid(&job(1, "alice", JobState::Running).id, Some((42, 7)))
                .unwrap();
            db.set_shim(&job(1, "alice", JobState::Running).id, (41, 6))
                .unwrap();
            db.set_stop(&job(1, "alice", JobState::Running).id, "request", 1234)
                .unwrap();
            let mut j = job(2, "bob", JobState::Starting);
            db.insert(&j).unwrap();
            j.state = JobState::Exited as i32;
            j.exit_code = Some(3);
            db.update(&j).unwrap();
        }
        let db = Db::open(&path).unwrap();
        let j2 = db
            .get(&job(2, "bob", JobState::Exited).id)
            .unwrap()
            .unwrap();
        assert_eq!(j2.exit_code, Some(3));
        assert!(j2.spec.unwrap().input_tar.is_empty());
        let un = db.unfinished().unwrap();
        assert_eq!(un.len(), 1);
        assert_eq!((un[0].pid, un[0].pid_start), (Some(42), Some(7)));
        assert_eq!(un[0].shim, Some((41, 6)));
        assert_eq!(un[0].stop, Some(("request".into(), 1234)));
        assert!(db.get("nope").unwrap().is_none());
    }

    #[test]
    fn a_database_from_before_shims_gains_the_added_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL \
                 UNIQUE, owner TEXT NOT NULL, state INTEGER NOT NULL, record BLOB NOT NULL, \
                 pid INTEGER, pid_start INTEGER);",
            )
            .unwrap();
        let db = Db::open(&path).unwrap();
        let j = job(1, "alice", JobState::Running);
        db.insert(&j).unwrap();
        db.set_shim(&j.id, (5, 6)).unwrap();
        db.set_stop(&j.id, "shutdown", 9).unwrap();
        let un = db.unfinished().unwrap();
        assert_eq!(un[0].shim, Some((5, 6)));
        assert_eq!(un[0].stop, Some(("shutdown".into(), 9)));
        drop(db);
        Db::open(&path).expect("reopening a migrated database");
    }

    /// Rows in the paginated table. A page walks an index range and stops at its limit: it
    /// takes a few SQLite VM steps per row it visits (55,000 for the sparsest page of 1,000
    /// below, a 3% filter), while a scan or a sort of the table takes several per row of the
    /// table, so a page must cost fewer steps than the table has rows.
    const ROWS: i32 = 100_000;

    /// The steps one page of `f` takes: what the query visits, unlike a timing, which depends
    /// on the machine and on what else runs.
    fn page_steps(db: &Db, f: &ListFilter, before: i64) -> i32 {
        let (sql, args) = list_query(f, before);
        let conn = db.conn();
        let mut stmt = conn.prepare(&sql).unwrap();
        let mut rows = stmt.query(rusqlite::params_from_iter(args)).unwrap();
        while rows.next().unwrap().is_some() {}
        drop(rows);
        stmt.get_status(rusqlite::StatementStatus::VmStep)
    }

    /// SQLite's plan for a page of `f`, one line per step.
    fn query_plan(db: &Db, f: &ListFilter) -> String {
        let (sql, args) = list_query(f, i64::MAX);
        let conn = db.conn();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let details = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        details.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn paginates_100k_rows_quickly_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("jobs.db")).unwrap();
        {
            let mut conn = db.conn();
            let tx = conn.transaction().unwrap();
            for i in 0..ROWS {
                let owner = if i % 10 == 0 { "alice" } else { "bob" };
                let state = if i % 3 == 0 {
                    JobState::Running
                } else {
                    JobState::Exited
                };
                let j = job(i as usize, owner, state);
                tx.execute(
                    "INSERT INTO jobs (id, owner, state, record) VALUES (?1, ?2, ?3, ?4)",
                    params![j.id, j.owner, j.state, strip(&j)],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        // Walk alice's running jobs page by page: every one, newest first, no duplicates.
        let mut f = ListFilter {
            states: vec![JobState::Running],
            owner: Some("alice".into()),
            page_token: String::new(),
            limit: 1000,
        };
        let mut seen = 0;
        let mut prev = String::from("~");
        loop {
            let before = f.page_token.parse().unwrap_or(i64::MAX);
            let steps = page_steps(&db, &f, before);
            assert!(steps < ROWS, "{steps} steps for a page of 1000");
            let (jobs, next) = db.list(&f).unwrap();
            for j in &jobs {
                assert_eq!(j.owner, "alice");
                assert!(j.id < prev);
                prev = j.id.clone();
            }
            seen += jobs.len();
            if next.is_empty() {
                break;
            }
            f.page_token = next;
        }
        assert_eq!(seen, (0..ROWS).filter(|i| i % 30 == 0).count());
        // First page of everything, and of each filter alone and combined.
        let all = ListFilter {
            limit: 100,
            ..Default::default()
        };
        let filters = [
            all.clone(),
            ListFilter {
                owner: Some("bob".into()),
                ..all.clone()
            },
            ListFilter {
                states: vec![JobState::Exited, JobState::Running],
                ..all.clone()
            },
            ListFilter {
                owner: Some("alice".into()),
                states: vec![JobState::Running],
                ..all.clone()
            },
        ];
        for filter in &filters {
            let steps = page_steps(&db, filter, i64::MAX);
            assert!(steps < ROWS, "{steps} steps: {filter:?}");
            // Each filter searches an index (or the rowid range); the step count above shows
            // that several states' ranges merge without sorting the table (SQLite stops each
            // range at the page's limit).
            let plan = query_plan(&db, filter);
            let index = match (&filter.owner, filter.states.is_empty()) {
                (None, true) => "USING INTEGER PRIMARY KEY",
                (Some(_), true) => "USING INDEX jobs_owner_seq",
                (None, false) => "USING INDEX jobs_state_seq",
                (Some(_), false) => "USING INDEX jobs_",
            };
            assert!(plan.contains(index), "{plan}: {filter:?}");
            assert!(!plan.contains("SCAN"), "{plan}: {filter:?}");
        }
        let (jobs, next) = db.list(&all).unwrap();
        assert_eq!(jobs.len(), 100);
        assert!(!next.is_empty());
        assert!(matches!(
            db.list(&ListFilter {
                page_token: "x".into(),
                limit: 1,
                ..Default::default()
            }),
            Err(DbError::BadPageToken { .. })
        ));
    }
}
