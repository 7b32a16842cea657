//! PostgreSQL under contention: a held lock times out and the write is retried, concurrent
//! calendar imports and key rotations take turns, audit appends of two instances or queued
//! behind the chain's head keep one whole chain. Each race is lined up deterministically: a
//! connection outside the store holds the rows every contender needs, the test waits until
//! the server shows them all waiting, and only then lets go.

use crate::helpers::*;
use domain::DomainError;
use domain::model::AuditEvent;
use domain::store::Store as _;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use store::{Db, SigningKeyRecord};

/// Runs `test` on a fresh PostgreSQL database; says so and does nothing without
/// `TEST_DATABASE_URL` (SQLite has no lock timeout, and its writers queue).
async fn on_postgres<F, Fut>(test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if std::env::var("TEST_DATABASE_URL").is_err() {
        eprintln!("not run: TEST_DATABASE_URL is not set");
        return;
    }
    each_postgres(test).await;
}

/// A transaction outside the store, holding row locks until it is dropped or committed.
async fn hold(t: &TestDb, lock_sql: &'static str) -> PgConnection {
    let mut c = PgConnection::connect(&t.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut c).await.unwrap();
    sqlx::raw_sql(lock_sql).execute(&mut c).await.unwrap();
    c
}

async fn release(mut c: PgConnection) {
    sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
}

/// Waits until `n` lock requests on this database are waiting (polling the server, not
/// guessing a delay).
async fn until_waiting(t: &TestDb, n: i64) {
    for _ in 0..2000 {
        let waiting = t
            .count(
                // A wait for a row lock is a wait for the holder's transaction id, whose
                // pg_locks row names no database; pg_stat_activity gives the waiter's.
                "SELECT COUNT(DISTINCT l.pid) FROM pg_locks l \
                 JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND a.datname = current_database()",
            )
            .await;
        if waiting >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} lock requests never queued");
}

#[tokio::test]
async fn a_write_behind_a_held_lock_is_retried_after_the_lock_timeout() {
    on_postgres(|t| async move {
        let db = Db::connect_tuned(&t.url, &t.secrets, Duration::from_millis(300))
            .await
            .unwrap();
        let holder = hold(&t, "UPDATE audit_head SET seq = seq WHERE id = 1").await;
        let write = tokio::spawn({
            let db = db.clone();
            async move { db.append_audit(&event("retried")).await }
        });
        until_waiting(&t, 1).await;
        // Held past the first attempt's 300 ms (every attempt waits that long), released
        // well inside the four attempts' 1.2 s.
        tokio::time::sleep(Duration::from_millis(450)).await;
        release(holder).await;
        write.await.unwrap().unwrap();
        assert_eq!(t.count("SELECT COUNT(*) FROM audit_log").await, 1);
        assert_eq!(db.verify_audit().await.unwrap().first_broken, None);
    })
    .await;
}

#[tokio::test]
async fn a_lock_held_past_every_retry_answers_busy_and_writes_nothing() {
    on_postgres(|t| async move {
        let db = Db::connect_tuned(&t.url, &t.secrets, Duration::from_millis(100))
            .await
            .unwrap();
        db.upsert_agencies(&[agency("AB12")]).await.unwrap();
        let holder = hold(&t, "UPDATE audit_head SET seq = seq WHERE id = 1").await;
        // A whole registration: flow, registration, receipt, audit. The audit append is last
        // and meets the lock; nothing before it may stay.
        let outcome = db
            .commit(domain::store::Commit {
                registration: Some(domain::store::RegistrationWrite::Insert(registration(
                    "AB12",
                    &nid("A12345678"),
                ))),
                audit: vec![event("registration.first_registration")],
                ..Default::default()
            })
            .await;
        assert_eq!(outcome.unwrap_err(), DomainError::Busy);
        release(holder).await;
        assert_eq!(t.count("SELECT COUNT(*) FROM registrations").await, 0);
        assert_eq!(t.count("SELECT COUNT(*) FROM audit_log").await, 0);
        assert_eq!(DomainError::Busy.code(), "busy");
    })
    .await;
}

#[tokio::test]
async fn concurrent_imports_of_one_calendar_year_take_turns() {
    on_postgres(|t| async move {
        let year = super::plain_year(2027);
        t.db.import_calendar(&year).await.unwrap();
        // Every import deletes the year's rows first: holding them lines the imports up.
        let holder = hold(
            &t,
            "SELECT day FROM calendar_days WHERE year = 2027 FOR UPDATE",
        )
        .await;
        let imports: Vec<_> = (0..3)
            .map(|_| {
                let (db, year) = (t.db.clone(), year.clone());
                tokio::spawn(async move { db.import_calendar(&year).await })
            })
            .collect();
        until_waiting(&t, 3).await;
        release(holder).await;
        for import in imports {
            import.await.unwrap().unwrap();
        }
        assert_eq!(
            t.count("SELECT COUNT(*) FROM calendar_days WHERE year = 2027")
                .await,
            365
        );
    })
    .await;
}

fn key(kid: &str, at: time::OffsetDateTime) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        public_key: vec![4; 65],
        private_pkcs8: kid.as_bytes().to_vec(),
        created_at: at,
        retired_at: None,
        publish_until: None,
    }
}

#[tokio::test]
async fn concurrent_key_rotations_leave_one_current_key() {
    on_postgres(|t| async move {
        assert!(t.db.signing_key_add_first(&key("k0", T0)).await.unwrap());
        let holder = hold(
            &t,
            "SELECT kid FROM signing_keys WHERE retired_at IS NULL FOR UPDATE",
        )
        .await;
        let at = T0 + time::Duration::days(30);
        let rotations: Vec<_> = ["k1", "k2", "k3"]
            .into_iter()
            .map(|kid| {
                let db = t.db.clone();
                tokio::spawn(async move {
                    db.signing_key_rotate(&key(kid, at), at + time::Duration::hours(1))
                        .await
                })
            })
            .collect();
        until_waiting(&t, 3).await;
        release(holder).await;
        for rotation in rotations {
            rotation.await.unwrap().unwrap();
        }
        let keys = t.db.signing_keys(at).await.unwrap();
        assert_eq!(keys.iter().filter(|k| k.retired_at.is_none()).count(), 1);
        assert_eq!(keys.len(), 4);
    })
    .await;
}

#[tokio::test]
async fn instances_starting_together_wait_for_each_others_migrations_past_the_lock_timeout() {
    on_postgres(|t| async move {
        // Fresh databases, four instances each, with a lock timeout far shorter than a
        // migration run: the later ones wait for the first instead of failing to start.
        let base = std::env::var("TEST_DATABASE_URL").unwrap();
        for round in 0..3 {
            let name = format!("{}_m{round}", t.url.rsplit('/').next().unwrap());
            let mut admin = PgConnection::connect(&base).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap();
            let url = testkit::with_database(&base, &name);
            let go = std::sync::Arc::new(tokio::sync::Barrier::new(4));
            let starts: Vec<_> = (0..4)
                .map(|_| {
                    let (url, secrets, go) = (url.clone(), t.secrets.clone(), go.clone());
                    tokio::spawn(async move {
                        go.wait().await;
                        let db =
                            Db::connect_tuned(&url, &secrets, Duration::from_millis(1)).await?;
                        let applied = db.migrate().await;
                        db.close().await;
                        applied
                    })
                })
                .collect();
            for start in starts {
                start.await.unwrap().unwrap();
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn flow_starts_of_one_session_wait_for_each_other_and_count_after_the_wait() {
    on_postgres(|t| async move {
        use domain::flow::{Flow, FlowKind};
        let start = |id: &str, at| {
            let flow = Flow::new(id.to_string(), FlowKind::QueryOrgOid, "s-1", at);
            let db = t.db.clone();
            async move { db.insert_flow_capped(&flow, 2, T0, None).await }
        };
        start("f-1", T0 + time::Duration::minutes(1)).await.unwrap();
        // The lock the starts of session s-1 take turns on, held from outside: every start
        // must queue behind it, and the one that fits is decided only after it is let go.
        let mut holder = PgConnection::connect(&t.url).await.unwrap();
        sqlx::raw_sql("SELECT pg_advisory_lock(hashtextextended('certreg:flows:s-1', 0))")
            .execute(&mut holder)
            .await
            .unwrap();
        let racing: Vec<_> = (0..3)
            .map(|i| tokio::spawn(start(&format!("r-{i}"), T0 + time::Duration::minutes(2))))
            .collect();
        until_waiting(&t, 3).await;
        sqlx::raw_sql("SELECT pg_advisory_unlock_all()")
            .execute(&mut holder)
            .await
            .unwrap();
        let mut started = 0;
        for r in racing {
            match r.await.unwrap() {
                Ok(()) => started += 1,
                Err(e) => assert_eq!(e, DomainError::TooManyFlows),
            }
        }
        assert_eq!(started, 1);
        assert_eq!(
            t.count("SELECT COUNT(*) FROM flows WHERE session = 's-1'")
                .await,
            2
        );
    })
    .await;
}

/// Two instances appending in turn, with an append the database refuses in between (its
/// transaction rolled back after the row was hashed onto the head): one whole chain, every
/// event once, in order.
#[tokio::test]
async fn two_instances_and_a_refused_append_leave_one_whole_audit_chain() {
    on_postgres(|t| async move {
        let a = &t.db;
        let b = Db::connect(&t.url, &t.secrets).await.unwrap();
        a.append_audit(&event("a-1")).await.unwrap();
        a.append_audit(&event("a-2")).await.unwrap();
        b.append_audit(&event("b-3")).await.unwrap();
        a.append_audit(&event("a-4")).await.unwrap();
        // A row hashed onto 4 that the database refuses (a NUL byte in text).
        let refused = a
            .commit(domain::store::Commit {
                audit: vec![AuditEvent::new(T0, "sys\0tem", "refused", "ok")],
                ..Default::default()
            })
            .await;
        assert!(refused.is_err(), "{refused:?}");
        // Row 5 is B's, with another hash than the refused one.
        b.append_audit(&event("b-5")).await.unwrap();
        a.append_audit(&event("a-6")).await.unwrap();
        b.append_audit(&event("b-7")).await.unwrap();
        let report = a.verify_audit().await.unwrap();
        assert_eq!(
            (report.first_broken, report.events),
            (None, 7),
            "{report:?}"
        );
        assert_eq!(
            t.texts("SELECT action FROM audit_log ORDER BY seq").await,
            ["a-1", "a-2", "b-3", "a-4", "b-5", "a-6", "b-7"]
        );
        b.close().await;
    })
    .await;
}

/// Holds the chain head while `writes` start, waits until every one of them waits for it, lets
/// go and waits for them all: each must succeed, and the chain must then be whole with `events`
/// rows. As many writes as the pool has connections (4), so that every one reaches the server.
async fn all_land_behind_the_held_head<T, W>(t: &TestDb, writes: Vec<W>, events: u64)
where
    T: Send + 'static,
    W: Future<Output = domain::Result<T>> + Send + 'static,
{
    let holder = hold(t, "UPDATE audit_head SET seq = seq WHERE id = 1").await;
    let n = writes.len() as i64;
    let queued: Vec<_> = writes.into_iter().map(tokio::spawn).collect();
    until_waiting(t, n).await;
    release(holder).await;
    for q in queued {
        q.await.unwrap().unwrap();
    }
    let report = t.db.verify_audit().await.unwrap();
    assert_eq!(
        (report.first_broken, report.events),
        (None, events),
        "{report:?}"
    );
}

/// Appends queued behind a transaction that holds the audit head all land, each once, in one
/// whole chain, whatever order the database lets them in.
#[tokio::test]
async fn appends_queued_behind_the_audit_head_all_land_in_one_chain() {
    on_postgres(|t| async move {
        let db = t.db.clone();
        db.append_audit(&event("first")).await.unwrap();
        const QUEUED: i64 = 4;
        let appends = (0..QUEUED)
            .map(|i| {
                let db = db.clone();
                async move { db.append_audit(&event(&format!("q-{i}"))).await }
            })
            .collect();
        all_land_behind_the_held_head(&t, appends, 5).await;
        assert_eq!(
            t.count("SELECT COUNT(DISTINCT action) FROM audit_log WHERE action LIKE 'q-%'")
                .await,
            QUEUED
        );
    })
    .await;
}

/// A query's card step on a new flow `id` (its flow and its audit events, so the flow's
/// statement bumps the chain head): the flow moved from version 0 to 1, with two events.
async fn insert_query_flow(db: &Db, id: &str) -> domain::store::Commit {
    let mut f = flow(id, domain::flow::FlowKind::QueryCitizenSerial);
    db.insert_flow(&f).await.unwrap();
    f.advance(T0);
    f.version = 1;
    domain::store::Commit {
        flow: Some(f),
        audit: vec![event(&format!("{id}.step")), event(&format!("{id}.second"))],
        ..Default::default()
    }
}

/// Query steps queued behind a held chain head all land: each one, let in after another has
/// moved the head, links to the head as it is then, not as it was when the step began.
#[tokio::test]
async fn query_steps_queued_behind_the_audit_head_all_land_in_one_chain() {
    on_postgres(|t| async move {
        let db = t.db.clone();
        db.append_audit(&event("first")).await.unwrap();
        const QUEUED: i64 = 4;
        let mut steps = Vec::new();
        for i in 0..QUEUED {
            steps.push(insert_query_flow(&db, &format!("flow-{i}")).await);
        }
        let commits = steps
            .into_iter()
            .map(|c| {
                let db = db.clone();
                async move { db.commit(c).await }
            })
            .collect();
        all_land_behind_the_held_head(&t, commits, 1 + 2 * QUEUED as u64).await;
        assert_eq!(
            t.count("SELECT COUNT(*) FROM flows WHERE version = 1")
                .await,
            QUEUED
        );
    })
    .await;
}

/// A query step waiting for its flow's row holds nothing else: the chain head stays free for
/// every other writer until the flow's row is its own.
#[tokio::test]
async fn a_query_step_waiting_for_its_flow_does_not_hold_the_audit_head() {
    on_postgres(|t| async move {
        let db = t.db.clone();
        let step = insert_query_flow(&db, "flow-x").await;
        let holder = hold(&t, "SELECT id FROM flows WHERE id = 'flow-x' FOR UPDATE").await;
        let waiting = tokio::spawn({
            let db = db.clone();
            async move { db.commit(step).await }
        });
        until_waiting(&t, 1).await;
        let mut other = hold(&t, "SELECT 1").await;
        sqlx::raw_sql("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT")
            .execute(&mut other)
            .await
            .expect("the head is free while the step waits for its flow");
        release(other).await;
        release(holder).await;
        waiting.await.unwrap().unwrap();
        let report = db.verify_audit().await.unwrap();
        assert_eq!(
            (report.first_broken, report.events),
            (None, 2),
            "{report:?}"
        );
    })
    .await;
}
