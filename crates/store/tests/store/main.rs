//! The store's integration tests: every test runs on a fresh SQLite file and, when
//! `TEST_DATABASE_URL` is set, on a fresh PostgreSQL database too.

mod helpers;
mod pg_races;

use domain::DomainError;
use domain::flow::{Flow, FlowKind, Step};
use domain::model::*;
use domain::store::*;
use helpers::*;
use std::sync::Arc;
use store::{Backend, Db, PersonRole, Secrets, SessionRecord, SessionSaved};
use time::Duration;
use time::macros::date;

/// Registers agency `c` (agency row + registration + receipt + audit) in one commit.
async fn register(db: &Db, c: &str, admin: &domain::types::NationalId) {
    db.upsert_agencies(&[agency(c)]).await.unwrap();
    db.commit(Commit {
        registration: Some(RegistrationWrite::Insert(registration(c, admin))),
        receipt: Some(Receipt {
            code: code(c),
            kind: ReceiptKind::FirstRegistration,
            at: T0,
            review_id: None,
            terms_version: None,
        }),
        audit: vec![event("registration.first_registration").agency(&code(c))],
        ..Default::default()
    })
    .await
    .unwrap();
}

fn add_operator(c: &str, s: &str, id: &domain::types::NationalId) -> Commit {
    Commit {
        operator: Some(OperatorWrite::Insert {
            code: code(c),
            input: operator_input(s, id),
            at: T0,
        }),
        audit: vec![event("operator.add")],
        ..Default::default()
    }
}

#[tokio::test]
async fn an_encrypted_value_moved_to_another_row_does_not_decrypt() {
    // Someone with write access to the database (not to the key file) swaps ciphertexts: the
    // other row's value is not read as this row's.
    each_db(|t| async move {
        let db = &t.db;
        register(db, "AB12", &nid("A12345678")).await;
        register(db, "CD34", &nid("B22345678")).await;
        db.commit(add_operator("AB12", "0B01", &nid("C12345678")))
            .await
            .unwrap();
        let second = db
            .commit(add_operator("AB12", "0B02", &nid("D12345678")))
            .await
            .unwrap()
            .operator_id
            .unwrap();
        for id in ["f1", "f2"] {
            db.insert_flow(&flow(id, FlowKind::FirstRegistration))
                .await
                .unwrap();
        }
        t.exec(
            "UPDATE registrations SET admin_id_enc = \
             (SELECT admin_id_enc FROM registrations WHERE code = 'AB12') WHERE code = 'CD34'"
                .into(),
        )
        .await;
        t.exec(
            "UPDATE operators SET national_id_enc = \
             (SELECT national_id_enc FROM operators WHERE serial = '0B01') WHERE serial = '0B02'"
                .into(),
        )
        .await;
        t.exec(
            "UPDATE flows SET data_enc = (SELECT data_enc FROM flows WHERE id = 'f1') \
             WHERE id = 'f2'"
                .into(),
        )
        .await;
        assert!(db.registration(&code("CD34")).await.is_err());
        assert!(db.operator(&code("AB12"), second).await.is_err());
        assert!(db.flow("f2").await.is_err());
        // The rows the values came from still read.
        assert_eq!(
            db.registration(&code("AB12"))
                .await
                .unwrap()
                .unwrap()
                .admin_id,
            nid("A12345678")
        );
        assert!(db.flow("f1").await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn values_sealed_for_their_column_only_are_bound_to_their_rows_by_migrate() {
    each_db(|t| async move {
        let db = &t.db;
        register(db, "AB12", &nid("A12345678")).await;
        let op = db
            .commit(add_operator("AB12", "0B01", &nid("C12345678")))
            .await
            .unwrap()
            .operator_id
            .unwrap();
        let f = flow("f1", FlowKind::FirstRegistration);
        db.insert_flow(&f).await.unwrap();
        // Written since, already bound to its row; and one that opens under no binding.
        register(db, "CD34", &nid("B22345678")).await;
        db.insert_flow(&flow("f2", FlowKind::FirstRegistration))
            .await
            .unwrap();
        // As a version that bound values to their column only wrote them.
        let seal = |purpose: &str, plain: &[u8]| t.secrets.encrypt(purpose, plain).unwrap();
        let admin = seal(
            "registrations.admin_id",
            nid("A12345678").as_str().as_bytes(),
        );
        let operator = seal(
            "operators.national_id",
            nid("C12345678").as_str().as_bytes(),
        );
        let data = seal("flows.data", &serde_json::to_vec(&f.data).unwrap());
        t.exec(format!(
            "UPDATE registrations SET admin_id_enc = '{admin}' WHERE code = 'AB12'"
        ))
        .await;
        t.exec(format!(
            "UPDATE operators SET national_id_enc = '{operator}'"
        ))
        .await;
        t.exec(format!(
            "UPDATE flows SET data_enc = '{data}' WHERE id = 'f1'"
        ))
        .await;
        t.exec("UPDATE flows SET data_enc = 'v1:AAAA' WHERE id = 'f2'".into())
            .await;
        t.exec("INSERT INTO pending_rebinds (name) VALUES ('row_bound_values')".into())
            .await;
        assert!(db.registration(&code("AB12")).await.is_err());

        assert_eq!(db.migrate().await.unwrap(), 0);
        assert_eq!(
            db.registration(&code("AB12"))
                .await
                .unwrap()
                .unwrap()
                .admin_id,
            nid("A12345678")
        );
        assert_eq!(
            db.operator(&code("AB12"), op)
                .await
                .unwrap()
                .unwrap()
                .national_id,
            nid("C12345678")
        );
        assert_eq!(db.flow("f1").await.unwrap().unwrap().data, f.data);
        assert_eq!(
            db.registration(&code("CD34"))
                .await
                .unwrap()
                .unwrap()
                .admin_id,
            nid("B22345678")
        );
        assert!(
            db.flow("f2").await.is_err(),
            "unreadable before, unreadable after"
        );
        assert_eq!(t.count("SELECT COUNT(*) FROM pending_rebinds").await, 0);
        // Once: a later start finds nothing to do and changes nothing.
        let before = db.registration(&code("AB12")).await.unwrap();
        assert_eq!(db.migrate().await.unwrap(), 0);
        assert_eq!(db.registration(&code("AB12")).await.unwrap(), before);
    })
    .await;
}

#[tokio::test]
async fn agencies_round_trip_and_upsert_updates() {
    each_db(|t| async move {
        let db = &t.db;
        assert_eq!(db.agency(&code("AB12")).await.unwrap(), None);
        let mut a = agency("AB12");
        assert_eq!(
            db.upsert_agencies(&[a.clone(), agency("CD34")])
                .await
                .unwrap(),
            2
        );
        assert_eq!(db.agency(&code("AB12")).await.unwrap(), Some(a.clone()));
        a.name = "改名機關".into();
        a.org_identifier = None;
        db.upsert_agencies(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(db.agency(&code("AB12")).await.unwrap(), Some(a));
    })
    .await;
}

#[tokio::test]
async fn flows_and_challenges_round_trip() {
    each_db(|t| async move {
        let db = &t.db;
        let mut f = flow("flow-1", FlowKind::FirstRegistration);
        db.insert_flow(&f).await.unwrap();
        assert_eq!(db.flow("flow-1").await.unwrap(), Some(f.clone()));
        assert_eq!(db.flow("nope").await.unwrap(), None);
        assert_eq!(db.insert_flow(&f).await.unwrap_err(), DomainError::Conflict);

        // The flow's data, with an administrator ID in it, survives the encryption.
        f.data.code = Some(code("AB12"));
        f.data.admin_id = Some(nid("A12345678"));
        f.data.terms_version = Some("2026-01".into());
        f.data.mismatch = true;
        f.advance(T0 + Duration::minutes(1));
        db.commit(Commit {
            flow: Some(f.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(db.flow("flow-1").await.unwrap(), Some(f.clone()));

        let c = challenge("ch-1", "flow-1");
        db.insert_challenge(&c).await.unwrap();
        assert_eq!(
            db.insert_challenge(&c).await.unwrap_err(),
            DomainError::Conflict
        );
        assert_eq!(
            db.insert_challenge(&challenge("ch-2", "no-such-flow"))
                .await
                .unwrap_err(),
            DomainError::FlowNotFound
        );
        assert_eq!(db.consume_challenge("ch-1", T0).await.unwrap(), c);
        assert_eq!(
            db.consume_challenge("ch-1", T0).await.unwrap_err(),
            DomainError::ChallengeUsed
        );
        assert_eq!(
            db.consume_challenge("unknown", T0).await.unwrap_err(),
            DomainError::ChallengeUsed
        );
    })
    .await;
}

// The per-session cap counts the flows touched within the idle limit, not expired ones.
#[tokio::test]
async fn a_session_holds_at_most_its_cap_of_live_flows_even_when_starts_race() {
    each_db(|t| async move {
        let db = &t.db;
        let start = |id: String, session: &str, at| {
            let (db, flow) = (
                db.clone(),
                Flow::new(id, FlowKind::QueryOrgOid, session, at),
            );
            // Every start brings its first challenge; only the one that fits stores it.
            let ch = StoredChallenge {
                flow_id: flow.id.clone(),
                session: flow.session.clone(),
                step: flow.step,
                ..challenge(&format!("ch-{}", flow.id), &flow.id)
            };
            async move { db.insert_flow_capped(&flow, 2, T0, Some(&ch)).await }
        };
        // Only flows touched after the cut-off count (it is exclusive).
        start("old".into(), "s-1", T0).await.unwrap();
        start("f-1".into(), "s-1", T0 + Duration::minutes(1))
            .await
            .unwrap();
        // Twelve starts of one session at once: one more fits, the rest are refused.
        let go = Arc::new(tokio::sync::Barrier::new(12));
        let racing: Vec<_> = (0..12)
            .map(|i| {
                let (go, start) = (
                    go.clone(),
                    start(format!("r-{i}"), "s-1", T0 + Duration::minutes(2)),
                );
                tokio::spawn(async move {
                    go.wait().await;
                    start.await
                })
            })
            .collect();
        let mut started = 0;
        for r in racing {
            match r.await.unwrap() {
                Ok(()) => started += 1,
                Err(e) => assert_eq!(e, DomainError::TooManyFlows),
            }
        }
        assert_eq!(started, 1);
        // Another session is not held back.
        start("g-1".into(), "s-2", T0 + Duration::minutes(2))
            .await
            .unwrap();
        assert_eq!(
            t.count("SELECT COUNT(*) FROM flows WHERE session = 's-1'")
                .await,
            3
        );
        assert_eq!(
            t.count("SELECT COUNT(*) FROM challenges WHERE session = 's-1'")
                .await,
            3
        );
    })
    .await;
}

/// A start that brings its first challenge stores both or neither: refused at the cap, with
/// a challenge that is not for this flow, its session and its step, or failing on the
/// challenge after the flow went in, it leaves no flow and no challenge behind.
#[tokio::test]
async fn a_flow_and_its_first_challenge_are_stored_together_or_not_at_all() {
    each_db(|t| async move {
        let db = &t.db;
        let at = |m| T0 + Duration::minutes(m);
        let flow = |id: &str, m| Flow::new(id.into(), FlowKind::QueryOrgOid, "session-1", at(m));
        // The challenge of the step `flow` starts at, as the service makes it.
        let first = |f: &Flow, id: &str| StoredChallenge {
            id: id.into(),
            flow_id: f.id.clone(),
            session: f.session.clone(),
            step: f.step,
            ..challenge(id, &f.id)
        };
        let start = |f: Flow, ch: Option<StoredChallenge>| {
            let db = db.clone();
            async move { db.insert_flow_capped(&f, 2, T0, ch.as_ref()).await }
        };
        let f1 = flow("f-1", 1);
        start(f1.clone(), Some(first(&f1, "ch-1"))).await.unwrap();
        assert_eq!(
            db.consume_challenge("ch-1", at(2)).await.unwrap(),
            first(&f1, "ch-1")
        );
        assert!(db.flow("f-1").await.unwrap().is_some());
        // A challenge for another flow (one that exists), another session or another step:
        // refused, and the flow is not stored either.
        let f2 = flow("f-2", 2);
        for wrong in [
            first(&f1, "ch-2"),
            StoredChallenge {
                session: "session-2".into(),
                ..first(&f2, "ch-2")
            },
            StoredChallenge {
                step: Step::OrgCard,
                ..first(&f2, "ch-2")
            },
        ] {
            let e = start(f2.clone(), Some(wrong)).await.unwrap_err();
            assert!(matches!(e, DomainError::Storage(_)), "{e:?}");
            assert!(db.flow("f-2").await.unwrap().is_none());
        }
        // A challenge whose id is taken: the write fails after the flow went in, and the flow
        // goes with it.
        assert_eq!(
            start(f2.clone(), Some(first(&f2, "ch-1")))
                .await
                .unwrap_err(),
            DomainError::Conflict
        );
        assert!(db.flow("f-2").await.unwrap().is_none());
        // At the cap (two live flows): neither the flow nor its challenge.
        start(flow("f-3", 3), None).await.unwrap();
        let f4 = flow("f-4", 4);
        assert_eq!(
            start(f4.clone(), Some(first(&f4, "ch-4")))
                .await
                .unwrap_err(),
            DomainError::TooManyFlows
        );
        assert!(db.flow("f-4").await.unwrap().is_none());
        assert_eq!(
            t.count("SELECT COUNT(*) FROM challenges WHERE id IN ('ch-2', 'ch-4')")
                .await,
            0
        );
    })
    .await;
}

#[tokio::test]
async fn idle_flows_are_deleted_with_their_challenges() {
    each_db(|t| async move {
        let db = &t.db;
        // flow-old was last touched at T0, flow-new a day later.
        db.insert_flow(&flow("flow-old", FlowKind::FirstRegistration))
            .await
            .unwrap();
        db.insert_challenge(&challenge("ch-old", "flow-old"))
            .await
            .unwrap();
        let new = Flow::new(
            "flow-new".into(),
            FlowKind::AdminLogin,
            "session-2",
            T0 + Duration::days(1),
        );
        db.insert_flow(&new).await.unwrap();
        db.insert_challenge(&challenge("ch-new", "flow-new"))
            .await
            .unwrap();

        // The cut-off is exclusive: a flow touched at it stays.
        assert_eq!(db.flow_delete_idle(T0).await.unwrap(), 0);
        assert_eq!(
            db.flow_delete_idle(T0 + Duration::hours(1)).await.unwrap(),
            1
        );
        assert_eq!(db.flow("flow-old").await.unwrap(), None);
        assert_eq!(
            db.consume_challenge("ch-old", T0).await.unwrap_err(),
            DomainError::ChallengeUsed,
            "its challenge went with it"
        );
        assert_eq!(db.flow("flow-new").await.unwrap(), Some(new));
        assert_eq!(
            db.consume_challenge("ch-new", T0).await.unwrap().id,
            "ch-new"
        );
    })
    .await;
}

#[tokio::test]
async fn flow_version_must_follow_the_stored_one() {
    each_db(|t| async move {
        let db = &t.db;
        let mut f = flow("flow-1", FlowKind::AdminLogin);
        // Never inserted: a commit cannot create it.
        f.version = 1;
        let c = Commit {
            flow: Some(f.clone()),
            ..Default::default()
        };
        assert_eq!(db.commit(c).await.unwrap_err(), DomainError::Conflict);
        f.version = 0;
        db.insert_flow(&f).await.unwrap();
        f.advance(T0);
        f.version = 1;
        let c = Commit {
            flow: Some(f.clone()),
            ..Default::default()
        };
        db.commit(c.clone()).await.unwrap();
        // The same step submitted twice takes effect once.
        assert_eq!(db.commit(c).await.unwrap_err(), DomainError::Conflict);
        f.version = 5;
        let skip = Commit {
            flow: Some(f),
            ..Default::default()
        };
        assert_eq!(db.commit(skip).await.unwrap_err(), DomainError::Conflict);
        assert_eq!(db.flow("flow-1").await.unwrap().unwrap().version, 1);
    })
    .await;
}

/// A step whose commit writes its flow and audit events: refused when the flow moved on
/// (stale, repeated or racing submits), and then the chain head stays where it was; accepted
/// once, and then each event is one link of a whole chain.
#[tokio::test]
async fn a_refused_step_leaves_the_audit_chain_as_it_was() {
    each_db(|t| async move {
        let db = &t.db;
        let mut f = flow("flow-1", FlowKind::QueryCitizenSerial);
        db.insert_flow(&f).await.unwrap();
        f.advance(T0);
        let step = |version: i64, events: &[&str]| Commit {
            flow: Some(Flow {
                version,
                ..f.clone()
            }),
            audit: events.iter().map(|a| event(a)).collect(),
            ..Default::default()
        };
        let start = db.audit_head().await.unwrap();
        // A flow written without any event leaves the chain alone.
        let mut quiet = flow("flow-quiet", FlowKind::QueryCitizenSerial);
        db.insert_flow(&quiet).await.unwrap();
        quiet.advance(T0);
        quiet.version = 1;
        db.commit(Commit {
            flow: Some(quiet),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            db.audit_head().await.unwrap(),
            start,
            "a step without events"
        );
        for stale in [0, 2, 7] {
            assert_eq!(
                db.commit(step(stale, &["query.citizen_serial"]))
                    .await
                    .unwrap_err(),
                DomainError::Conflict,
                "version {stale}"
            );
            assert_eq!(db.audit_head().await.unwrap(), start, "version {stale}");
        }

        // Eight submits of the same step at once: one takes effect, with both its events.
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (db, c) = (db.clone(), step(1, &["query.citizen_serial", "second"]));
                tokio::spawn(async move { db.commit(c).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap().map(|_| ()));
        }
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(()) | Err(DomainError::Conflict))),
            "{results:?}"
        );
        let (seq, _) = db.audit_head().await.unwrap();
        assert_eq!(seq, start.0 + 2);
        let report = db.verify_audit().await.unwrap();
        assert_eq!((report.events, report.first_broken), (seq as u64, None));
        let logged = db
            .audit_search(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let actions: Vec<_> = logged.iter().map(|(_, e)| e.action.as_str()).collect();
        assert_eq!(actions, ["second", "query.citizen_serial"]);
        assert_eq!(db.flow("flow-1").await.unwrap().unwrap().version, 1);
    })
    .await;
}

#[tokio::test]
async fn registration_replacement_history_and_receipts_round_trip() {
    each_db(|t| async move {
        let db = &t.db;
        let admin = nid("A12345678");
        register(db, "AB12", &admin).await;
        let stored = db.registration(&code("AB12")).await.unwrap().unwrap();
        assert_eq!(stored, registration("AB12", &admin));
        assert_eq!(db.registration(&code("CD34")).await.unwrap(), None);

        // R3.4: a replacement updates the registration, keeps the replaced certificate.
        let mut next = stored.clone();
        next.org = org_card("0A02");
        next.admin_id = nid("B22345678");
        next.admin.title = Some("主任".into());
        next.admin.mobile = None;
        next.updated_at = T0 + Duration::days(1);
        next.version = 2;
        let replaced = ReplacedCert {
            code: code("AB12"),
            kind: CertKind::Organization,
            cert: stored.org.cert.clone(),
            replaced_at: T0 + Duration::days(1),
        };
        db.insert_flow(&flow("f", FlowKind::ReplaceOrg))
            .await
            .unwrap();
        let mut f = flow("f", FlowKind::ReplaceOrg);
        f.step = Step::Done;
        f.version = 1;
        let replace = Commit {
            flow: Some(f),
            registration: Some(RegistrationWrite::Replace {
                registration: next.clone(),
                expected_version: 1,
            }),
            history: vec![replaced.clone()],
            receipt: Some(Receipt {
                code: code("AB12"),
                kind: ReceiptKind::ReplaceOrg,
                at: T0 + Duration::days(1),
                review_id: None,
                terms_version: Some("2026-02".into()),
            }),
            audit: vec![event("registration.replace_org")],
            end_admin_sessions: Some(code("AB12")),
            ..Default::default()
        };
        assert_eq!(
            db.commit(replace.clone()).await.unwrap(),
            Committed::default()
        );
        assert_eq!(
            db.registration(&code("AB12")).await.unwrap(),
            Some(next.clone())
        );
        assert_eq!(
            db.cert_history(&code("AB12")).await.unwrap(),
            vec![replaced]
        );

        // A replacement that read version 1 again is refused (its flow is fresh).
        let mut stale = replace;
        db.insert_flow(&flow("g", FlowKind::ReplaceOrg))
            .await
            .unwrap();
        let mut g = flow("g", FlowKind::ReplaceOrg);
        g.version = 1;
        stale.flow = Some(g);
        assert_eq!(
            db.commit(stale).await.unwrap_err(),
            DomainError::RegistrationChanged,
            "its own error, not a double submit's"
        );
        assert_eq!(db.registration(&code("AB12")).await.unwrap(), Some(next));

        let kinds: Vec<_> = db
            .receipts(&code("AB12"))
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.kind, r.terms_version))
            .collect();
        assert_eq!(
            kinds,
            [
                (ReceiptKind::ReplaceOrg, Some("2026-02".into())),
                (ReceiptKind::FirstRegistration, None)
            ],
            "each receipt keeps the terms version accepted with it"
        );
        let report = db.verify_audit().await.unwrap();
        assert_eq!((report.events, report.first_broken), (2, None));
    })
    .await;
}

#[tokio::test]
async fn double_first_registration_is_already_registered() {
    each_db(|t| async move {
        let db = &t.db;
        register(db, "AB12", &nid("A12345678")).await;
        let again = Commit {
            registration: Some(RegistrationWrite::Insert(registration(
                "AB12",
                &nid("B22345678"),
            ))),
            ..Default::default()
        };
        assert_eq!(
            db.commit(again).await.unwrap_err(),
            DomainError::AlreadyRegistered
        );
        let unknown = Commit {
            registration: Some(RegistrationWrite::Insert(registration(
                "ZZ99",
                &nid("B22345678"),
            ))),
            ..Default::default()
        };
        assert_eq!(
            db.commit(unknown).await.unwrap_err(),
            DomainError::UnknownAgency
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_registrations_exactly_one_wins() {
    each_db(|t| async move {
        let db = t.db.clone();
        db.upsert_agencies(&[agency("AB12")]).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let db = db.clone();
            let fid = format!("flow-{i}");
            db.insert_flow(&flow(&fid, FlowKind::FirstRegistration))
                .await
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let mut f = flow(&fid, FlowKind::FirstRegistration);
                f.step = Step::Done;
                f.version = 1;
                db.commit(Commit {
                    flow: Some(f),
                    registration: Some(RegistrationWrite::Insert(registration(
                        "AB12",
                        &nid("A12345678"),
                    ))),
                    receipt: Some(Receipt {
                        code: code("AB12"),
                        kind: ReceiptKind::FirstRegistration,
                        at: T0,
                        review_id: None,
                        terms_version: None,
                    }),
                    audit: vec![event("registration.first_registration")],
                    ..Default::default()
                })
                .await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e, DomainError::AlreadyRegistered),
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(db.receipts(&code("AB12")).await.unwrap().len(), 1);
        assert_eq!(t.count("SELECT COUNT(*) FROM audit_log").await, 1);
        assert_eq!(db.verify_audit().await.unwrap().first_broken, None);
    })
    .await;
}

#[tokio::test]
async fn operators_round_trip() {
    each_db(|t| async move {
        let db = &t.db;
        let c = code("AB12");
        register(db, "AB12", &nid("A12345678")).await;
        let id1 = db
            .commit(add_operator("AB12", "C001", &nid("B22345678")))
            .await
            .unwrap()
            .operator_id
            .unwrap();
        let id2 = db
            .commit(add_operator("AB12", "C002", &nid("F12345678")))
            .await
            .unwrap()
            .operator_id
            .unwrap();
        let op1 = db.operator(&c, id1).await.unwrap().unwrap();
        assert_eq!(op1.serial, serial("C001"));
        assert_eq!(op1.national_id, nid("B22345678"));
        assert_eq!(op1.functions, ["enroll", "query"]);
        assert_eq!(op1.version, 1);
        assert_eq!(op1.updated_at, T0);
        assert_eq!(
            db.operator_by_serial(&c, &serial("C002"))
                .await
                .unwrap()
                .unwrap()
                .id,
            id2
        );
        assert_eq!(
            db.operator_by_serial(&c, &serial("C009")).await.unwrap(),
            None
        );
        assert_eq!(db.operator(&code("CD34"), id1).await.unwrap(), None);
        let list = db.operators(&c).await.unwrap();
        assert_eq!(list.iter().map(|o| o.id).collect::<Vec<_>>(), [id1, id2]);

        // R2.5: re-bind a renewed card.
        let mut input = operator_input("C0FF", &nid("B22345678"));
        input.functions = vec!["premium".into()];
        let update = Commit {
            operator: Some(OperatorWrite::Update {
                code: c.clone(),
                id: id1,
                input,
                expected_version: 1,
                at: T0 + Duration::hours(1),
            }),
            ..Default::default()
        };
        db.commit(update.clone()).await.unwrap();
        let op1 = db.operator(&c, id1).await.unwrap().unwrap();
        assert_eq!((op1.serial.as_str(), op1.version), ("C0FF", 2));
        assert_eq!(op1.functions, ["premium"]);
        assert_eq!(db.commit(update).await.unwrap_err(), DomainError::Conflict);

        // R5.1: a login teaches a typed grant its certificate, only for the serial it names and
        // only once; the version stays.
        let learn = |s: &str, issuer: &str| Commit {
            operator: Some(OperatorWrite::LearnCert {
                code: c.clone(),
                id: id1,
                serial: serial(s),
                cert: domain::model::OperatorCert {
                    issuer: issuer.into(),
                    not_after: T0 + Duration::days(400),
                },
            }),
            ..Default::default()
        };
        db.commit(learn("C001", "CN=old card")).await.unwrap();
        assert_eq!(db.operator(&c, id1).await.unwrap().unwrap().cert, None);
        db.commit(learn("C0FF", "CN=MOICA")).await.unwrap();
        db.commit(learn("C0FF", "CN=other")).await.unwrap();
        let op1 = db.operator(&c, id1).await.unwrap().unwrap();
        assert_eq!(op1.version, 2);
        assert_eq!(
            op1.cert,
            Some(domain::model::OperatorCert {
                issuer: "CN=MOICA".into(),
                not_after: T0 + Duration::days(400),
            })
        );

        let delete = |id, v| Commit {
            operator: Some(OperatorWrite::Delete {
                code: c.clone(),
                id,
                expected_version: v,
            }),
            ..Default::default()
        };
        assert_eq!(
            db.commit(delete(id1, 1)).await.unwrap_err(),
            DomainError::Conflict
        );
        assert_eq!(
            db.commit(delete(9999, 1)).await.unwrap_err(),
            DomainError::OperatorNotFound
        );
        db.commit(delete(id1, 2)).await.unwrap();
        assert_eq!(
            db.commit(delete(id1, 2)).await.unwrap_err(),
            DomainError::OperatorNotFound
        );
        assert_eq!(db.operators(&c).await.unwrap().len(), 1);

        // Another agency cannot reach this agency's operator.
        register(db, "CD34", &nid("A12345678")).await;
        let foreign = Commit {
            operator: Some(OperatorWrite::Delete {
                code: code("CD34"),
                id: id2,
                expected_version: 1,
            }),
            ..Default::default()
        };
        assert_eq!(
            db.commit(foreign).await.unwrap_err(),
            DomainError::OperatorNotFound
        );

        // Not registered: no operators.
        db.upsert_agencies(&[agency("EF56")]).await.unwrap();
        assert_eq!(
            db.commit(add_operator("EF56", "C001", &nid("B22345678")))
                .await
                .unwrap_err(),
            DomainError::NotRegistered
        );

        // Lookup by keyed hash.
        let mut found = db.agencies_of_person(&nid("A12345678")).await.unwrap();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            [
                (code("AB12"), PersonRole::Administrator),
                (code("CD34"), PersonRole::Administrator)
            ]
        );
        assert_eq!(
            db.agencies_of_person(&nid("F12345678")).await.unwrap(),
            [(code("AB12"), PersonRole::Operator)]
        );
    })
    .await;
}

#[tokio::test]
async fn duplicate_operator_serial_is_refused() {
    each_db(|t| async move {
        let db = &t.db;
        register(db, "AB12", &nid("A12345678")).await;
        register(db, "CD34", &nid("A12345678")).await;
        db.commit(add_operator("AB12", "C001", &nid("B22345678")))
            .await
            .unwrap();
        let id2 = db
            .commit(add_operator("AB12", "C002", &nid("B22345678")))
            .await
            .unwrap()
            .operator_id
            .unwrap();
        assert_eq!(
            db.commit(add_operator("AB12", "c0:01", &nid("F12345678")))
                .await
                .unwrap_err(),
            DomainError::DuplicateOperator
        );
        // The same serial in another agency is a different grant.
        db.commit(add_operator("CD34", "C001", &nid("B22345678")))
            .await
            .unwrap();
        // Modifying an operator onto a serial already granted is refused too.
        let onto = Commit {
            operator: Some(OperatorWrite::Update {
                code: code("AB12"),
                id: id2,
                input: operator_input("C001", &nid("B22345678")),
                expected_version: 1,
                at: T0,
            }),
            ..Default::default()
        };
        assert_eq!(
            db.commit(onto).await.unwrap_err(),
            DomainError::DuplicateOperator
        );
        // Nothing of the failed commits was audited.
        assert_eq!(t.count("SELECT COUNT(*) FROM audit_log").await, 5);
    })
    .await;
}

// An administrator's change names the registration version the login checked; a replacement
// committed in between (version 2) refuses it inside the transaction, and nothing of it is
// written.
#[tokio::test]
async fn a_registration_guard_is_checked_inside_the_commit() {
    each_db(|t| async move {
        let db = &t.db;
        register(db, "AB12", &nid("A12345678")).await;
        let guarded = |version: i64| {
            let mut c = add_operator("AB12", "C001", &nid("B22345678"));
            c.registration_guard = Some((code("AB12"), version));
            c
        };
        let events = db.verify_audit().await.unwrap().events;
        assert_eq!(
            db.commit(guarded(2)).await.unwrap_err(),
            DomainError::RegistrationChanged
        );
        assert!(db.operators(&code("AB12")).await.unwrap().is_empty());
        assert_eq!(db.verify_audit().await.unwrap().events, events);
        assert!(db.commit(guarded(1)).await.unwrap().operator_id.is_some());
        assert_eq!(
            db.registration(&code("AB12"))
                .await
                .unwrap()
                .unwrap()
                .version,
            1,
            "the guard changes nothing"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operator_updates_one_conflicts() {
    each_db(|t| async move {
        let db = t.db.clone();
        register(&db, "AB12", &nid("A12345678")).await;
        let id = db
            .commit(add_operator("AB12", "C001", &nid("B22345678")))
            .await
            .unwrap()
            .operator_id
            .unwrap();
        let tasks: Vec<_> = ["D001", "D002"]
            .into_iter()
            .map(|s| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.commit(Commit {
                        operator: Some(OperatorWrite::Update {
                            code: code("AB12"),
                            id,
                            input: operator_input(s, &nid("B22345678")),
                            expected_version: 1,
                            at: T0,
                        }),
                        audit: vec![event("operator.modify")],
                        ..Default::default()
                    })
                    .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results.contains(&Err(DomainError::Conflict)));
        assert_eq!(
            db.operator(&code("AB12"), id)
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_parallel_consumes_of_one_challenge_one_wins() {
    each_db(|t| async move {
        let db = t.db.clone();
        db.insert_flow(&flow("f", FlowKind::FirstRegistration))
            .await
            .unwrap();
        db.insert_challenge(&challenge("ch", "f")).await.unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { db.consume_challenge("ch", T0).await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(c) => {
                    assert_eq!(c.id, "ch");
                    ok += 1
                }
                Err(e) => assert_eq!(e, DomainError::ChallengeUsed),
            }
        }
        assert_eq!(ok, 1);
    })
    .await;
}

#[tokio::test]
async fn a_failing_commit_leaves_nothing_written() {
    each_db(|t| async move {
        let db = &t.db;
        db.upsert_agencies(&[agency("AB12")]).await.unwrap();
        db.insert_flow(&flow("f", FlowKind::FirstRegistration))
            .await
            .unwrap();
        let mut f = flow("f", FlowKind::FirstRegistration);
        f.step = Step::Done;
        f.version = 1;
        let good = Commit {
            flow: Some(f.clone()),
            registration: Some(RegistrationWrite::Insert(registration(
                "AB12",
                &nid("A12345678"),
            ))),
            receipt: Some(Receipt {
                code: code("AB12"),
                kind: ReceiptKind::FirstRegistration,
                at: T0,
                review_id: None,
                terms_version: None,
            }),
            audit: vec![event("registration.first_registration")],
            ..Default::default()
        };

        // The registration and the flow update succeed, then the receipt fails.
        let mut bad_receipt = good.clone();
        bad_receipt.receipt.as_mut().unwrap().code = code("ZZ99");
        assert_eq!(
            db.commit(bad_receipt).await.unwrap_err(),
            DomainError::UnknownAgency
        );
        // The flow is stale: nothing after it runs.
        let mut stale = good.clone();
        stale.flow.as_mut().unwrap().version = 3;
        assert_eq!(db.commit(stale).await.unwrap_err(), DomainError::Conflict);
        // A decision on an application that does not exist, after everything else succeeded.
        let mut bad_review = good.clone();
        let reviewer = db
            .add_reviewer("審核員", Section::First, &serial("AA01"))
            .await
            .unwrap();
        bad_review.review = Some(ReviewWrite::Decide {
            reviewer_id: reviewer,
            id: 12345,
            state: ReviewState::Rejected {
                decided_at: T0,
                reviewer: "r".into(),
                note: "n".into(),
            },
        });
        assert_eq!(
            db.commit(bad_review).await.unwrap_err(),
            DomainError::Conflict
        );

        for table in [
            "registrations",
            "receipts",
            "audit_log",
            "cert_history",
            "reviews",
        ] {
            let n = t.count(&format!("SELECT COUNT(*) FROM {table}")).await;
            assert_eq!(n, 0, "{table}");
        }
        assert_eq!(t.count("SELECT seq FROM audit_head").await, 0);
        assert_eq!(db.flow("f").await.unwrap().unwrap().version, 0);

        // And the same commit, intact, goes through.
        db.commit(good).await.unwrap();
        assert!(db.registration(&code("AB12")).await.unwrap().is_some());
        assert_eq!(db.verify_audit().await.unwrap().events, 1);
    })
    .await;
}

#[tokio::test]
async fn reviews_receipts_and_decisions() {
    each_db(|t| async move {
        let db = &t.db;
        db.upsert_agencies(&[agency("AB12"), agency("CD34")])
            .await
            .unwrap();
        let file_card = |c: &str, card: &str, at| {
            let mut r = review_app(c);
            r.org = org_card(card);
            r.filed_at = at;
            Commit {
                review: Some(ReviewWrite::Insert(Box::new(r))),
                receipt: Some(Receipt {
                    code: code(c),
                    kind: ReceiptKind::ReviewApplication,
                    at,
                    review_id: None,
                    terms_version: None,
                }),
                audit: vec![event("review.file")],
                ..Default::default()
            }
        };
        let file = |c: &str, at| file_card(c, "0A77", at);
        let id1 = db
            .commit(file("AB12", T0))
            .await
            .unwrap()
            .review_id
            .unwrap();
        let id2 = db
            .commit(file_card("CD34", "0B01", T0 + Duration::minutes(1)))
            .await
            .unwrap()
            .review_id
            .unwrap();
        // One pending application per card: the same card again is told one is pending, and
        // nothing of that commit stays.
        assert_eq!(
            db.commit(file("AB12", T0 + Duration::minutes(2)))
                .await
                .unwrap_err(),
            DomainError::ReviewPending
        );
        assert_eq!(db.receipts(&code("AB12")).await.unwrap().len(), 1);
        let id3 = db
            .commit(file_card("AB12", "0A78", T0 + Duration::minutes(2)))
            .await
            .unwrap()
            .review_id
            .unwrap();
        // The receipt points at the review of its own commit.
        let receipts = db.receipts(&code("AB12")).await.unwrap();
        assert_eq!(
            receipts.iter().map(|r| r.review_id).collect::<Vec<_>>(),
            [Some(id3), Some(id1)]
        );
        let mut expected = review_app("AB12");
        expected.id = id1;
        assert_eq!(db.review(id1).await.unwrap(), Some(expected));
        assert_eq!(db.review(999).await.unwrap(), None);
        let ids = |v: Vec<ReviewApplication>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(db.reviews(&code("AB12")).await.unwrap()), [id3, id1]);
        assert_eq!(ids(db.pending_reviews().await.unwrap()), [id1, id2, id3]);

        let approved = ReviewState::Approved {
            decided_at: T0 + Duration::hours(1),
            effective: date!(2026 - 06 - 02),
            reviewer: "審核員".into(),
            note: "核准".into(),
        };
        let reviewer = db
            .add_reviewer("審核員", Section::First, &serial("AA01"))
            .await
            .unwrap();
        let decide_by = |reviewer_id, id, state: &ReviewState| Commit {
            review: Some(ReviewWrite::Decide {
                id,
                state: state.clone(),
                reviewer_id,
            }),
            audit: vec![event("review.decide")],
            ..Default::default()
        };
        let decide = |id, state: &ReviewState| Commit {
            review: Some(ReviewWrite::Decide {
                id,
                state: state.clone(),
                reviewer_id: reviewer,
            }),
            audit: vec![event("review.decide")],
            ..Default::default()
        };
        db.commit(decide(id1, &approved)).await.unwrap();
        assert_eq!(db.review(id1).await.unwrap().unwrap().state, approved);
        let rejected = ReviewState::Rejected {
            decided_at: T0 + Duration::hours(2),
            reviewer: "審核員".into(),
            note: "資料不符".into(),
        };
        // Only a pending application can be decided.
        assert_eq!(
            db.commit(decide(id1, &rejected)).await.unwrap_err(),
            DomainError::Conflict
        );
        db.commit(decide(id2, &rejected)).await.unwrap();
        assert_eq!(db.review(id2).await.unwrap().unwrap().state, rejected);
        assert_eq!(ids(db.pending_reviews().await.unwrap()), [id3]);

        // A decided card may be filed again.
        let id4 = db
            .commit(file("AB12", T0 + Duration::hours(3)))
            .await
            .unwrap()
            .review_id
            .unwrap();
        // A disabled reviewer, or one not on file, records nothing.
        db.set_reviewer_active(reviewer, false).await.unwrap();
        assert_eq!(
            db.commit(decide(id4, &rejected)).await.unwrap_err(),
            DomainError::NotReviewer
        );
        assert_eq!(
            db.commit(decide_by(9999, id4, &rejected))
                .await
                .unwrap_err(),
            DomainError::NotReviewer
        );
        assert_eq!(ids(db.pending_reviews().await.unwrap()), [id3, id4]);

        let unknown = file_card("ZZ99", "0C01", T0);
        assert_eq!(
            db.commit(unknown).await.unwrap_err(),
            DomainError::UnknownAgency
        );
    })
    .await;
}

#[tokio::test]
async fn the_one_pending_review_migration_closes_duplicates_filed_before_it() {
    each_db(|t| async move {
        let db = &t.db;
        db.upsert_agencies(&[agency("AB12"), agency("CD34")])
            .await
            .unwrap();
        // As a database before the rule: the index is not there, one card filed three times.
        t.exec("DROP INDEX reviews_pending_card_key".into()).await;
        let mut ids = Vec::new();
        for (c, minutes) in [("AB12", 0), ("CD34", 1), ("AB12", 2)] {
            let mut r = review_app(c);
            r.filed_at = T0 + Duration::minutes(minutes);
            let done = db
                .commit(Commit {
                    review: Some(ReviewWrite::Insert(Box::new(r))),
                    ..Default::default()
                })
                .await
                .unwrap();
            ids.push(done.review_id.unwrap());
        }
        let migration = store::migrations::MIGRATIONS
            .iter()
            .find(|m| m.file_name == "0008_reviews_pending_card.sql")
            .unwrap();
        let sql = match db.backend() {
            Backend::Sqlite => migration.sqlite,
            Backend::Postgres => migration.postgres,
        };
        t.exec(sql.to_string()).await;
        let pending: Vec<i64> = db
            .pending_reviews()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(pending, [ids[0]]);
        for id in &ids[1..] {
            match db.review(*id).await.unwrap().unwrap().state {
                ReviewState::Rejected {
                    decided_at, note, ..
                } => {
                    assert!(decided_at > T0);
                    assert!(note.contains("重複"), "{note}");
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn reviewers_round_trip() {
    each_db(|t| async move {
        let db = &t.db;
        let a = db
            .add_reviewer("審核甲", Section::First, &serial("AA01"))
            .await
            .unwrap();
        let b = db
            .add_reviewer("審核乙", Section::Second, &serial("AA02"))
            .await
            .unwrap();
        assert_eq!(
            db.add_reviewer("重複", Section::First, &serial("AA01"))
                .await
                .unwrap_err()
                .code(),
            "invalid_input"
        );
        db.set_reviewer_active(a, false).await.unwrap();
        assert!(db.set_reviewer_active(999, false).await.is_err());
        assert_eq!(
            db.reviewers().await.unwrap(),
            [
                Reviewer {
                    id: a,
                    name: "審核甲".into(),
                    section: Section::First,
                    cert_serial: serial("AA01"),
                    cert_issuer: None,
                    active: false,
                },
                Reviewer {
                    id: b,
                    name: "審核乙".into(),
                    section: Section::Second,
                    cert_serial: serial("AA02"),
                    cert_issuer: None,
                    active: true,
                },
            ]
        );
    })
    .await;
}

fn session_record(id: &str, kind: &str, c: Option<&str>) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        kind: kind.into(),
        code: c.map(str::to_string),
        data: format!("{{\"who\":\"{id}\"}}"),
        created_at: T0,
        touched_at: T0,
        expires_at: T0 + Duration::minutes(15),
        version: 1,
    }
}

/// A request on one of its session's flows reads both at once: the flow comes only with the
/// session it belongs to, a flow that cannot be read does not take the session with it, and
/// nothing comes for an ended or unknown session.
#[tokio::test]
async fn a_session_is_read_with_its_own_flow_only() {
    each_db(|t| async move {
        let db = &t.db;
        db.session_insert(&session_record("s-1", "operator", Some("AB12")))
            .await
            .unwrap();
        db.session_insert(&session_record("s-2", "operator", Some("AB12")))
            .await
            .unwrap();
        let mut mine = Flow::new("f-1".into(), FlowKind::OperatorLogin, "s-1", T0);
        mine.data.code = Some(code("AB12"));
        db.insert_flow(&mine).await.unwrap();
        db.insert_flow(&Flow::new("f-2".into(), FlowKind::OperatorLogin, "s-2", T0))
            .await
            .unwrap();
        let now = T0 + Duration::minutes(1);
        let (session, flow) = db.session_get_with_flow("s-1", now, "f-1").await.unwrap();
        assert_eq!(session, db.session_get("s-1", now).await.unwrap());
        assert_eq!(session.unwrap().data, "{\"who\":\"s-1\"}");
        assert_eq!(flow, Some(mine));
        // Another session's flow, or none by that id: the session alone.
        for other in ["f-2", "f-9"] {
            let (session, flow) = db.session_get_with_flow("s-1", now, other).await.unwrap();
            assert!(session.is_some());
            assert_eq!(flow, None, "{other}");
        }
        // A flow that cannot be read leaves the session readable; the flow's own read fails.
        t.raw("UPDATE flows SET data_enc = 'not a sealed value' WHERE id = 'f-1'")
            .await;
        let (session, flow) = db.session_get_with_flow("s-1", now, "f-1").await.unwrap();
        assert_eq!((session.is_some(), flow), (true, None));
        assert!(db.flow("f-1").await.is_err());
        // An expired or unknown session: nothing, its flow neither.
        let late = T0 + Duration::minutes(16);
        assert_eq!(
            db.session_get_with_flow("s-1", late, "f-1").await.unwrap(),
            (None, None)
        );
        assert_eq!(
            db.session_get_with_flow("s-9", now, "f-1").await.unwrap(),
            (None, None)
        );
    })
    .await;
}

#[tokio::test]
async fn sessions_round_trip_and_replacement_ends_admin_sessions() {
    each_db(|t| async move {
        let db = &t.db;
        let a = session_record("s-admin", "admin", Some("AB12"));
        db.session_insert(&a).await.unwrap();
        db.session_insert(&session_record("s-other", "admin", Some("CD34")))
            .await
            .unwrap();
        db.session_insert(&session_record("s-op", "operator", Some("AB12")))
            .await
            .unwrap();
        assert!(
            db.session_insert(&a).await.is_err(),
            "a key is never taken twice"
        );
        assert_eq!(
            db.session_get("s-admin", T0).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            db.session_get("s-admin", T0 + Duration::minutes(15))
                .await
                .unwrap(),
            None
        );
        // A request that changed nothing moves the idle deadline only.
        assert!(
            db.session_touch(
                "s-admin",
                T0 + Duration::minutes(10),
                T0 + Duration::minutes(25)
            )
            .await
            .unwrap()
        );
        let mut touched = a.clone();
        touched.touched_at = T0 + Duration::minutes(10);
        touched.expires_at = T0 + Duration::minutes(25);
        assert_eq!(
            db.session_get("s-admin", T0 + Duration::minutes(20))
                .await
                .unwrap(),
            Some(touched.clone())
        );
        // A change names the version it read.
        let mut changed = touched.clone();
        changed.data = "{\"who\":\"changed\"}".into();
        assert_eq!(
            db.session_update(&changed).await.unwrap(),
            SessionSaved::Saved(2)
        );
        assert_eq!(
            db.session_update(&changed).await.unwrap(),
            SessionSaved::Changed,
            "version 1 is no longer current"
        );
        let stored = db.session_get("s-admin", T0).await.unwrap().unwrap();
        assert_eq!(
            (stored.version, stored.data.as_str()),
            (2, "{\"who\":\"changed\"}")
        );

        db.commit(Commit {
            end_admin_sessions: Some(code("AB12")),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(db.session_get("s-admin", T0).await.unwrap(), None);
        assert!(db.session_get("s-other", T0).await.unwrap().is_some());
        assert!(db.session_get("s-op", T0).await.unwrap().is_some());
        // Ended sessions stay ended: neither a change nor a touch writes them again.
        assert_eq!(
            db.session_update(&stored).await.unwrap(),
            SessionSaved::Gone
        );
        assert!(
            !db.session_touch("s-admin", T0, T0 + Duration::minutes(15))
                .await
                .unwrap()
        );
        assert_eq!(db.session_get("s-admin", T0).await.unwrap(), None);
        db.session_delete("s-op").await.unwrap();
        assert_eq!(db.session_get("s-op", T0).await.unwrap(), None);
        assert_eq!(
            db.session_delete_expired(T0 + Duration::hours(1))
                .await
                .unwrap(),
            1
        );
    })
    .await;
}

// Twenty requests read the session, then it is deleted (logout, replacement, revocation), then
// all of them save: none brings it back, whatever they changed. A barrier holds them between
// their read and their save.
#[tokio::test]
async fn a_deleted_session_is_never_written_again_by_requests_in_flight() {
    each_db(|t| async move {
        let db = t.db.clone();
        db.session_insert(&session_record("s-op", "operator", Some("AB12")))
            .await
            .unwrap();
        let read = Arc::new(tokio::sync::Barrier::new(21));
        let go = Arc::new(tokio::sync::Barrier::new(21));
        let mut requests = Vec::new();
        for i in 0..20 {
            let (db, read, go) = (db.clone(), read.clone(), go.clone());
            requests.push(tokio::spawn(async move {
                let mut r = db.session_get("s-op", T0).await.unwrap().unwrap();
                read.wait().await;
                go.wait().await;
                if i % 2 == 0 {
                    r.data = format!("{{\"request\":{i}}}");
                    db.session_update(&r).await.unwrap()
                } else if db
                    .session_touch("s-op", T0, T0 + Duration::minutes(15))
                    .await
                    .unwrap()
                {
                    SessionSaved::Saved(r.version)
                } else {
                    SessionSaved::Gone
                }
            }));
        }
        read.wait().await;
        db.session_delete("s-op").await.unwrap();
        go.wait().await;
        for r in requests {
            assert_eq!(r.await.unwrap(), SessionSaved::Gone);
        }
        assert_eq!(db.session_get("s-op", T0).await.unwrap(), None);
        assert_eq!(t.count("SELECT COUNT(*) FROM sessions").await, 0);
    })
    .await;
}

// Two requests that read the same version: the second's save is told of the first's change
// instead of overwriting it.
#[tokio::test]
async fn concurrent_session_changes_are_not_overwritten() {
    each_db(|t| async move {
        let db = &t.db;
        db.session_insert(&session_record("s", "anonymous", None))
            .await
            .unwrap();
        let mut first = db.session_get("s", T0).await.unwrap().unwrap();
        let mut second = first.clone();
        first.data = "{\"flash\":\"first\"}".into();
        second.data = "{\"result\":\"second\"}".into();
        assert_eq!(
            db.session_update(&first).await.unwrap(),
            SessionSaved::Saved(2)
        );
        assert_eq!(
            db.session_update(&second).await.unwrap(),
            SessionSaved::Changed
        );
        assert_eq!(
            db.session_get("s", T0).await.unwrap().unwrap().data,
            "{\"flash\":\"first\"}"
        );
    })
    .await;
}

// A login's session is written in the login's own commit: with its flow, or not at all. A
// double submit of the step (the flow's version no longer current) writes no session; a
// bearer session changed meanwhile is reported and does not hold off the flow; a session
// ended meanwhile refuses the whole commit.
#[tokio::test]
async fn a_login_writes_its_session_with_its_flow_or_not_at_all() {
    each_db(|t| async move {
        let db = &t.db;
        let mut f = flow("flow-1", FlowKind::OperatorLogin);
        db.insert_flow(&f).await.unwrap();
        db.session_insert(&session_record("old", "anonymous", None))
            .await
            .unwrap();
        db.session_insert(&session_record("bearer", "anonymous", None))
            .await
            .unwrap();
        let until = T0 + Duration::minutes(5);
        let login = |flow: &Flow, write: SessionWrite| Commit {
            flow: Some(flow.clone()),
            audit: vec![event("operator.login")],
            session: Some(write),
            ..Default::default()
        };

        // A cookie session: the old id becomes a tombstone, the fresh one holds the role.
        let stale = f.clone();
        f.advance(T0 + Duration::minutes(1));
        let fresh = session_record("fresh", "operator", Some("AB12"));
        let done = db
            .commit(login(
                &f,
                SessionWrite::Rotate {
                    old: Some("old".into()),
                    until,
                    record: fresh.clone(),
                },
            ))
            .await
            .unwrap();
        assert_eq!(done.session, Some(SessionSaved::Saved(1)));
        assert_eq!(db.session_get("fresh", T0).await.unwrap(), Some(fresh));
        let old = db.session_get("old", T0).await.unwrap().unwrap();
        assert_eq!((old.kind.as_str(), old.data.as_str()), (SUPERSEDED, "{}"));
        assert_eq!(old.expires_at, until);

        // The same step again: refused before anything else is written.
        let mut again = stale.clone();
        again.advance(T0 + Duration::minutes(1));
        let err = db
            .commit(login(
                &again,
                SessionWrite::Rotate {
                    old: Some("bearer".into()),
                    until,
                    record: session_record("fresh-2", "operator", Some("AB12")),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err, DomainError::Conflict);
        assert_eq!(db.session_get("fresh-2", T0).await.unwrap(), None);
        assert_eq!(
            db.session_get("bearer", T0).await.unwrap(),
            Some(session_record("bearer", "anonymous", None))
        );

        // A bearer session keeps its id and is written at the version it was read at.
        let mut role = session_record("bearer", "operator", Some("AB12"));
        role.data = "{\"who\":\"operator\"}".into();
        f.advance(T0 + Duration::minutes(2));
        let done = db
            .commit(login(&f, SessionWrite::Update(role.clone())))
            .await
            .unwrap();
        assert_eq!(done.session, Some(SessionSaved::Saved(2)));
        let stored = db.session_get("bearer", T0).await.unwrap().unwrap();
        assert_eq!((stored.kind.as_str(), stored.version), ("operator", 2));

        // Read at version 1, changed meanwhile: the flow goes on, the session is not
        // overwritten, and the caller learns to merge.
        f.advance(T0 + Duration::minutes(3));
        let done = db
            .commit(login(&f, SessionWrite::Update(role.clone())))
            .await
            .unwrap();
        assert_eq!(done.session, Some(SessionSaved::Changed));
        assert_eq!(db.flow("flow-1").await.unwrap(), Some(f.clone()));
        assert_eq!(db.session_get("bearer", T0).await.unwrap(), Some(stored));

        // Ended meanwhile (logout, revocation, another login): it stays ended, and the login
        // with it: nothing of the commit is written.
        db.session_delete("bearer").await.unwrap();
        let before = f.clone();
        f.advance(T0 + Duration::minutes(4));
        role.version = 2;
        let mut tomb = session_record("old", "operator", Some("AB12"));
        tomb.version = 2;
        let ended = [
            SessionWrite::Update(role),
            SessionWrite::Update(tomb),
            SessionWrite::Rotate {
                old: Some("bearer".into()),
                until,
                record: session_record("fresh-3", "operator", Some("AB12")),
            },
            // A second login of a session another login has already replaced.
            SessionWrite::Rotate {
                old: Some("old".into()),
                until,
                record: session_record("fresh-4", "operator", Some("AB12")),
            },
        ];
        for write in ended {
            let err = db.commit(login(&f, write.clone())).await.unwrap_err();
            assert_eq!(err, DomainError::FlowNotFound, "{write:?}");
            assert_eq!(db.flow("flow-1").await.unwrap(), Some(before.clone()));
        }
        assert_eq!(db.session_get("bearer", T0).await.unwrap(), None);
        assert_eq!(db.session_get("fresh-3", T0).await.unwrap(), None);
        assert_eq!(db.session_get("fresh-4", T0).await.unwrap(), None);
        let old = db.session_get("old", T0).await.unwrap().unwrap();
        assert_eq!((old.kind.as_str(), old.expires_at), (SUPERSEDED, until));
        assert_eq!(
            t.count("SELECT COUNT(*) FROM audit_log WHERE action = 'operator.login'")
                .await,
            3,
            "the three logins that were written"
        );
    })
    .await;
}

// The data of a session is bound to its row: copied into another session's row it does not
// decrypt, so a stolen row cannot be replayed under a key its thief holds.
#[tokio::test]
async fn session_data_is_bound_to_its_row() {
    each_db(|t| async move {
        let db = &t.db;
        let key = store::session_key("the-cookie-value");
        assert_eq!(key.len(), 64);
        db.session_insert(&session_record(&key, "admin", Some("AB12")))
            .await
            .unwrap();
        db.session_insert(&session_record("mine", "anonymous", None))
            .await
            .unwrap();
        t.raw(&format!(
            "UPDATE sessions SET data_enc = (SELECT data_enc FROM sessions WHERE id = '{key}') \
             WHERE id = 'mine'"
        ))
        .await;
        assert!(db.session_get("mine", T0).await.is_err());
        assert!(db.session_get(&key, T0).await.unwrap().is_some());
        assert_eq!(
            t.count("SELECT COUNT(*) FROM sessions WHERE id = 'the-cookie-value'")
                .await,
            0
        );
    })
    .await;
}

/// The national IDs a test wrote, none of which may appear in plain text at rest.
async fn write_personal_data(db: &Db) -> Vec<String> {
    let admin = nid("A12345678");
    let operator = nid("B22345678");
    let in_flow = nid("F12345678");
    register(db, "AB12", &admin).await;
    db.commit(add_operator("AB12", "C001", &operator))
        .await
        .unwrap();
    let mut f = flow("f", FlowKind::FirstRegistration);
    f.data.admin_id = Some(in_flow.clone());
    db.insert_flow(&f).await.unwrap();
    db.session_insert(&SessionRecord {
        id: "s".into(),
        kind: "admin".into(),
        code: Some("AB12".into()),
        data: format!("{{\"id\":\"{}\"}}", in_flow.as_str()),
        created_at: T0,
        touched_at: T0,
        expires_at: T0 + Duration::minutes(15),
        version: 1,
    })
    .await
    .unwrap();
    // Decrypts back for the store's own reads.
    assert_eq!(
        db.registration(&code("AB12"))
            .await
            .unwrap()
            .unwrap()
            .admin_id,
        admin
    );
    [admin, operator, in_flow]
        .iter()
        .map(|i| i.as_str().to_string())
        .collect()
}

#[tokio::test]
async fn national_ids_are_not_stored_in_plain_text() {
    each_db(|t| async move {
        let ids = write_personal_data(&t.db).await;
        match t.backend() {
            Backend::Sqlite => {
                t.db.close().await;
                let file = t.file.clone().unwrap();
                let mut bytes = std::fs::read(&file).unwrap();
                // Whatever is still in the write-ahead log counts as stored too.
                let wal = file.with_extension("db-wal");
                bytes.extend(std::fs::read(&wal).unwrap_or_default());
                assert!(bytes.len() > 4096);
                for id in &ids {
                    let found = bytes.windows(id.len()).any(|w| w == id.as_bytes());
                    assert!(!found, "{id} in the SQLite file");
                    let lower = id.to_lowercase();
                    assert!(!bytes.windows(id.len()).any(|w| w == lower.as_bytes()));
                }
            }
            Backend::Postgres => {
                let tables = t
                    .texts(
                        "SELECT table_name::text FROM information_schema.tables \
                         WHERE table_schema = 'public'",
                    )
                    .await;
                assert!(tables.len() >= 10, "{tables:?}");
                let mut all = String::new();
                for table in tables {
                    for row in t.texts(&format!("SELECT t::text FROM {table} t")).await {
                        all.push_str(&row);
                        all.push('\n');
                    }
                }
                assert!(all.contains("AB12"), "the dump sees the data");
                for id in &ids {
                    assert!(
                        !all.to_uppercase().contains(id.as_str()),
                        "{id} in PostgreSQL"
                    );
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn wrong_key_cannot_read_personal_data() {
    each_db(|t| async move {
        write_personal_data(&t.db).await;
        let other = Db::connect(&t.url, &Secrets::generate().unwrap())
            .await
            .unwrap();
        let e = other.registration(&code("AB12")).await.unwrap_err();
        assert_eq!(e.code(), "internal");
        assert!(other.flow("f").await.is_err());
        other.close().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Audit chain

/// Five events, seq 1..=5, appended both ways (alone and inside commits).
async fn five_events(db: &Db) {
    db.upsert_agencies(&[agency("AB12")]).await.unwrap();
    db.append_audit(&event("proof.verify").client(Some("127.0.0.1")))
        .await
        .unwrap();
    db.commit(Commit {
        audit: vec![event("a.two").agency(&code("AB12")), event("a.three")],
        ..Default::default()
    })
    .await
    .unwrap();
    db.append_audit(&event("a.four")).await.unwrap();
    db.append_audit(&event("a.five")).await.unwrap();
    let report = db.verify_audit().await.unwrap();
    assert_eq!(
        report,
        AuditReport {
            events: 5,
            first_broken: None,
            detail: None
        }
    );
}

/// Removes the append-only triggers, as someone with direct access to the database could.
async fn unprotect(t: &TestDb) {
    match t.backend() {
        Backend::Sqlite => {
            t.raw("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete")
                .await
        }
        Backend::Postgres => {
            t.raw(
                "DROP TRIGGER audit_log_no_update ON audit_log; \
                 DROP TRIGGER audit_log_no_delete ON audit_log",
            )
            .await
        }
    }
}

async fn broken_at(db: &Db) -> Option<u64> {
    let report = db.verify_audit().await.unwrap();
    assert_eq!(report.first_broken.is_some(), report.detail.is_some());
    report.first_broken
}

#[tokio::test]
async fn audit_log_refuses_updates_and_deletes() {
    each_db(|t| async move {
        five_events(&t.db).await;
        for sql in [
            "UPDATE audit_log SET outcome = 'x' WHERE seq = 2",
            "DELETE FROM audit_log WHERE seq = 5",
        ] {
            let refused = testkit::outside::try_exec(&t.url, sql).await.is_err();
            assert!(refused, "{sql}");
        }
        assert_eq!(broken_at(&t.db).await, None);
    })
    .await;
}

#[tokio::test]
async fn audit_verify_reports_a_changed_row() {
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        t.raw("UPDATE audit_log SET outcome = 'denied' WHERE seq = 3")
            .await;
        assert_eq!(broken_at(&t.db).await, Some(3));
    })
    .await;
}

/// Rewrites rows `from..` of the five events as someone with the database but without the key
/// file would: `outcome` of row `from` changed, and every hash from there on recomputed with
/// plain SHA-256 (the unkeyed form), the head moved along.
async fn rewrite_unkeyed(t: &TestDb, from: i64) {
    let mut events =
        t.db.audit_search(&store::AuditFilter {
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    events.sort_by_key(|(seq, _)| *seq);
    let any_key = store::audit::ChainKey::new(&Secrets::generate().unwrap());
    // The row before keeps its keyed hash: the attacker links to it as stored.
    let mut prev = if from == 1 {
        store::audit::GENESIS.to_string()
    } else {
        stored_hash(t, from - 1).await
    };
    for (seq, e) in events.iter().filter(|(seq, _)| *seq >= from) {
        let mut e = e.clone();
        if *seq == from {
            e.outcome = "denied".into();
        }
        let mut row = store::audit::AuditRow::new(*seq, prev.clone(), &e, &any_key);
        row.hash = row.unkeyed_hash();
        t.raw(&format!(
            "UPDATE audit_log SET outcome = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {seq}",
            row.outcome, row.prev_hash, row.hash
        ))
        .await;
        prev = row.hash;
    }
    t.raw(&format!(
        "UPDATE audit_head SET hash = '{prev}' WHERE id = 1"
    ))
    .await;
}

/// The stored hash of row `seq`, read outside the store.
async fn stored_hash(t: &TestDb, seq: i64) -> String {
    let sql = format!("SELECT hash FROM audit_log WHERE seq = {seq}");
    testkit::outside::text(&t.url, &sql).await
}

#[tokio::test]
async fn audit_chain_is_keyed_so_plain_sha256_rewrites_are_detected() {
    each_db(|t| async move {
        five_events(&t.db).await;
        let (seq, head) = t.db.audit_head().await.unwrap();
        assert_eq!(seq, 5);
        assert!(head.starts_with("v2:"), "{head}");
        unprotect(&t).await;
        // From the middle: the rewritten rows follow keyed ones.
        rewrite_unkeyed(&t, 3).await;
        assert_eq!(broken_at(&t.db).await, Some(3));
    })
    .await;
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        // The whole chain, head included: it no longer ends in a keyed row.
        rewrite_unkeyed(&t, 1).await;
        assert_eq!(broken_at(&t.db).await, Some(1));
        // Keyed hashes recomputed with another key fail too.
        let other = Db::connect(&t.url, &Secrets::generate().unwrap())
            .await
            .unwrap();
        assert!(other.verify_audit().await.unwrap().first_broken.is_some());
        other.close().await;
    })
    .await;
}

// A chain written before the log was keyed (plain SHA-256 rows) still verifies once it is
// sealed under the key; until then it reads as not keyed, and an edit of its rows still breaks
// it.
#[tokio::test]
async fn an_unkeyed_chain_is_sealed_under_the_key_and_still_checked() {
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        // As a database of the version before keying would hold them.
        rewrite_unkeyed(&t, 1).await;
        t.raw("UPDATE audit_log SET outcome = 'ok' WHERE seq = 1")
            .await;
        rewrite_unkeyed_keeping_outcomes(&t).await;
        assert_eq!(broken_at(&t.db).await, Some(1), "not sealed yet");
        assert!(t.db.seal_audit_chain(T0).await.unwrap());
        assert!(!t.db.seal_audit_chain(T0).await.unwrap(), "once");
        assert_eq!(broken_at(&t.db).await, None);
        assert_eq!(t.db.verify_audit().await.unwrap().events, 6);
        t.db.append_audit(&event("after")).await.unwrap();
        assert_eq!(broken_at(&t.db).await, None);
        t.raw("UPDATE audit_log SET actor = 'someone' WHERE seq = 2")
            .await;
        assert_eq!(broken_at(&t.db).await, Some(2));
    })
    .await;
}

// An attacker who rewrites the whole chain in the unkeyed form cannot have it taken in by the
// next keyed row: only the seal written under the key takes unkeyed rows in.
#[tokio::test]
async fn a_chain_rewritten_unkeyed_from_its_first_row_stays_broken_after_an_append() {
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        t.raw("UPDATE audit_log SET actor = 'someone' WHERE seq = 2")
            .await;
        rewrite_unkeyed_keeping_outcomes(&t).await;
        t.db.append_audit(&event("after")).await.unwrap();
        assert_eq!(broken_at(&t.db).await, Some(6));
    })
    .await;
}

/// Every row's hash recomputed in the unkeyed form with the rows as they stand.
async fn rewrite_unkeyed_keeping_outcomes(t: &TestDb) {
    let mut events =
        t.db.audit_search(&store::AuditFilter {
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    events.sort_by_key(|(seq, _)| *seq);
    let any_key = store::audit::ChainKey::new(&Secrets::generate().unwrap());
    let mut prev = store::audit::GENESIS.to_string();
    for (seq, e) in &events {
        let mut row = store::audit::AuditRow::new(*seq, prev.clone(), e, &any_key);
        row.hash = row.unkeyed_hash();
        t.raw(&format!(
            "UPDATE audit_log SET prev_hash = '{}', hash = '{}' WHERE seq = {seq}",
            row.prev_hash, row.hash
        ))
        .await;
        prev = row.hash;
    }
    t.raw(&format!(
        "UPDATE audit_head SET hash = '{prev}' WHERE id = 1"
    ))
    .await;
}

#[tokio::test]
async fn audit_verify_reports_a_changed_row_with_recomputed_hash() {
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        // Rewriting a row's hash as well only moves the break to the next link.
        t.raw("UPDATE audit_log SET hash = 'ff' WHERE seq = 2")
            .await;
        let report = t.db.verify_audit().await.unwrap();
        assert_eq!(report.first_broken, Some(2));
    })
    .await;
}

#[tokio::test]
async fn audit_verify_reports_a_deleted_row() {
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        t.raw("DELETE FROM audit_log WHERE seq = 2").await;
        assert_eq!(broken_at(&t.db).await, Some(2));
    })
    .await;
}

#[tokio::test]
async fn audit_verify_reports_deleted_newest_rows() {
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        t.raw("DELETE FROM audit_log WHERE seq >= 4").await;
        assert_eq!(broken_at(&t.db).await, Some(4));
    })
    .await;
}

#[tokio::test]
async fn audit_verify_reports_swapped_rows() {
    each_db(|t| async move {
        five_events(&t.db).await;
        unprotect(&t).await;
        t.raw(
            "UPDATE audit_log SET seq = -1 WHERE seq = 2; \
             UPDATE audit_log SET seq = 2 WHERE seq = 4; \
             UPDATE audit_log SET seq = 4 WHERE seq = -1",
        )
        .await;
        assert_eq!(broken_at(&t.db).await, Some(2));
    })
    .await;
}

#[tokio::test]
async fn audit_chain_survives_concurrent_appends() {
    each_db(|t| async move {
        let db = t.db.clone();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        db.append_audit(&event("alone")).await
                    } else {
                        db.commit(Commit {
                            audit: vec![event("in.commit.1"), event("in.commit.2")],
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let report = db.verify_audit().await.unwrap();
        assert_eq!((report.events, report.first_broken), (30, None));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Connecting and migrating

#[tokio::test]
async fn unknown_url_scheme_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::generate().unwrap();
    let path = dir.path().join("certreg.db");
    for url in [
        path.display().to_string(),
        format!("file://{}", path.display()),
        format!("sqlite3://{}", path.display()),
        format!("mysql://root@localhost/{}", path.display()),
        "".to_string(),
    ] {
        let e = Db::connect(&url, &secrets).await.err().expect(&url);
        assert!(
            matches!(e, store::StoreError::UnsupportedScheme(_)),
            "{url}: {e}"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // The sqlite scheme does create the file, and migrating again applies nothing.
    let url = format!("sqlite://{}", path.display());
    let db = Db::connect(&url, &secrets).await.unwrap();
    assert!(path.exists());
    assert_eq!(db.migrate().await.unwrap(), 0);
    assert_eq!(store::sqlite_path(&url), Some(path.clone()));
    assert_eq!(store::sqlite_path("sqlite::memory:"), None);
    db.close().await;

    let mem = Db::connect("sqlite::memory:", &secrets).await.unwrap();
    mem.upsert_agencies(&[agency("AB12")]).await.unwrap();
    assert!(mem.agency(&code("AB12")).await.unwrap().is_some());
}

#[test]
fn migrations_have_identical_file_names_for_both_backends() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let names = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let sqlite = names("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, names("postgres"));
    // Every file is embedded, under its own version.
    let embedded: Vec<String> = store::migrations::MIGRATIONS
        .iter()
        .map(|m| m.file_name.to_string())
        .collect();
    assert_eq!(sqlite, embedded);
    for m in store::migrations::MIGRATIONS {
        assert!(m.file_name.starts_with(&format!("{:04}_", m.version)));
    }
}

#[test]
fn every_mapped_constraint_is_named_in_both_migrations() {
    let all = |pick: fn(&store::migrations::MigrationPair) -> &'static str| {
        store::migrations::MIGRATIONS
            .iter()
            .map(pick)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let sqlite = all(|m| m.sqlite);
    let postgres = all(|m| m.postgres);
    for name in store::error::mapped_constraints() {
        // A constraint, or a unique index (partial or on an expression).
        let named = |sql: &str| {
            sql.contains(&format!("CONSTRAINT {name} "))
                || sql.contains(&format!("UNIQUE INDEX {name} "))
        };
        assert!(named(&sqlite), "sqlite: {name}");
        assert!(named(&postgres), "postgres: {name}");
    }
}

#[tokio::test]
async fn concurrent_connects_share_one_schema() {
    // Several service instances starting at once all migrate; none fails.
    each_db(|t| async move {
        let secrets = Arc::new(t.secrets.clone());
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (url, secrets) = (t.url.clone(), secrets.clone());
                tokio::spawn(async move { Db::connect(&url, &secrets).await.map(|_| ()) })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_migrations_of_a_new_sqlite_file_take_turns() {
    // Instances starting at once on a file that does not exist yet: one of them creates the
    // schema, the others wait for it and find nothing left to apply.
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("new.db").display());
        let secrets = Arc::new(Secrets::generate().unwrap());
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (url, secrets) = (url.clone(), secrets.clone());
                tokio::spawn(async move {
                    let db = Db::connect_only(&url, &secrets).await?;
                    let applied = db.migrate().await;
                    db.close().await;
                    applied
                })
            })
            .collect();
        let mut applied = Vec::new();
        for task in tasks {
            applied.push(task.await.unwrap().unwrap());
        }
        applied.sort();
        let mut expected = vec![0; 5];
        expected.push(store::migrations::MIGRATIONS.len());
        assert_eq!(applied, expected, "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------
// Durability

const CRASH_CHILD_ENV: &str = "CERTREG_STORE_CRASH_CHILD_URL";

/// Not a test on its own: the child process of `killed_process_leaves_no_partial_registration`.
/// It registers agencies on the SQLite file it is given until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_registers_until_killed() {
    let Ok(url) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let key = std::env::var("CERTREG_STORE_CRASH_CHILD_KEY").unwrap();
    let db = Db::connect(&url, &Secrets::from_base64(&key).unwrap())
        .await
        .unwrap();
    let agencies: Vec<Agency> = (0..5000).map(|i| agency(&format!("K{i:05}"))).collect();
    db.upsert_agencies(&agencies).await.unwrap();
    println!("ready");
    for a in &agencies {
        register(&db, a.code.as_str(), &nid("A12345678")).await;
    }
}

#[tokio::test]
async fn killed_process_leaves_no_partial_registration() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let secrets = Secrets::generate().unwrap();
    let mut child = testkit::KillOnDrop::new(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_registers_until_killed",
                "--nocapture",
            ])
            .env(CRASH_CHILD_ENV, &url)
            .env("CERTREG_STORE_CRASH_CHILD_KEY", secrets.to_base64())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kill it once some registrations are in, while it is writing more.
    let probe = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let Ok(db) = Db::connect(&url, &secrets).await else {
                continue;
            };
            let n = db.verify_audit().await.map(|r| r.events).unwrap_or(0);
            db.close().await;
            if n >= 20 {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), probe)
        .await
        .expect("the child made progress");
    child.kill().unwrap();
    child.wait().unwrap();

    let db = Db::connect(&url, &secrets).await.unwrap();
    let t = TestDb::for_url(db.clone(), &url, &secrets);
    let registrations = t.count("SELECT COUNT(*) FROM registrations").await;
    assert!(registrations >= 20, "{registrations}");
    // Each registration has its receipt and its audit event, or none of them.
    assert_eq!(
        t.count("SELECT COUNT(*) FROM receipts").await,
        registrations
    );
    assert_eq!(
        t.count("SELECT COUNT(*) FROM audit_log").await,
        registrations
    );
    assert_eq!(
        t.count(
            "SELECT COUNT(*) FROM registrations r WHERE NOT EXISTS \
             (SELECT 1 FROM receipts c WHERE c.code = r.code)"
        )
        .await,
        0
    );
    let report = db.verify_audit().await.unwrap();
    assert_eq!(report.first_broken, None, "{report:?}");
    // And the file takes new registrations after the crash.
    register(&db, "NEW1", &nid("A12345678")).await;
}

const GROUP_CHILD_ENV: &str = "CERTREG_STORE_GROUP_CHILD_URL";

/// Not a test on its own: the child process of `a_write_reported_done_survives_kill_9`. Many
/// writers at once on the SQLite file it is given (so their commits are grouped), each printing
/// the id of a session once its insert has returned, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_child_writes_until_killed() {
    let Ok(url) = std::env::var(GROUP_CHILD_ENV) else {
        return;
    };
    let key = std::env::var("CERTREG_STORE_CRASH_CHILD_KEY").unwrap();
    let db = Db::connect(&url, &Secrets::from_base64(&key).unwrap())
        .await
        .unwrap();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("w{w}-{i}");
                    db.session_insert(&session_record(&id, "anonymous", None))
                        .await
                        .unwrap();
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{id}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

// Group commit shares a COMMIT between writers, never the promise: every write whose call
// returned before `kill -9` is in the file afterwards.
#[tokio::test]
async fn a_write_reported_done_survives_kill_9() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("group.db").display());
    let secrets = Secrets::generate().unwrap();
    // Migrated before the child starts, so it writes from its first moment.
    Db::connect(&url, &secrets).await.unwrap().close().await;
    let mut child = testkit::KillOnDrop::new(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "group_child_writes_until_killed", "--nocapture"])
            .env(GROUP_CHILD_ENV, &url)
            .env("CERTREG_STORE_CRASH_CHILD_KEY", secrets.to_base64())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.stdout.take().unwrap();
    let reported = tokio::task::spawn_blocking(move || {
        let mut ids = Vec::new();
        let mut lines = std::io::BufReader::new(stdout).lines();
        // The pipe stays open until the child is killed, so its writers never see it closed.
        for line in lines.by_ref() {
            let line = line.unwrap();
            // The test harness's own lines are not ids.
            if line.starts_with('w') && line.contains('-') && !line.contains(' ') {
                ids.push(line);
            }
            if ids.len() >= 2000 {
                break;
            }
        }
        (ids, lines)
    });
    let (reported, pipe) = tokio::time::timeout(std::time::Duration::from_secs(120), reported)
        .await
        .expect("the child made progress")
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(pipe);
    assert_eq!(reported.len(), 2000, "the child wrote until killed");

    let db = Db::connect(&url, &secrets).await.unwrap();
    let t = TestDb::for_url(db.clone(), &url, &secrets);
    let stored = t.count("SELECT COUNT(*) FROM sessions").await;
    assert!(stored >= 2000, "{stored}");
    let missing: Vec<&String> = {
        let mut missing = Vec::new();
        for id in &reported {
            if db.session_get(id, T0).await.unwrap().is_none() {
                missing.push(id);
            }
        }
        missing
    };
    assert!(missing.is_empty(), "reported done but lost: {missing:?}");
}

// ---------------------------------------------------------------------------------------------
// Business calendar (SPEC §4.2)

fn calendar_file(name: &str) -> Vec<domain::calendar::CalendarDay> {
    let path = format!(
        "{}/../../../shared/data/calendar/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    domain::calendar::parse_csv(&bytes).unwrap()
}

/// A whole year following Monday–Friday with no holiday at all.
fn plain_year(year: i32) -> Vec<domain::calendar::CalendarDay> {
    let mut d = time::Date::from_calendar_date(year, time::Month::January, 1).unwrap();
    let mut days = Vec::new();
    while d.year() == year {
        days.push(domain::calendar::CalendarDay {
            date: d,
            day_off: matches!(d.weekday(), time::Weekday::Saturday | time::Weekday::Sunday),
            name: String::new(),
        });
        d = d.next_day().unwrap();
    }
    days
}

#[tokio::test]
async fn spec_4_2_calendar_import_replaces_whole_years() {
    each_db(|t| async move {
        let db = &t.db;
        assert_eq!(db.calendar_days().await.unwrap(), vec![]);
        let y2025 = calendar_file("2025-big5.csv");
        let y2026 = calendar_file("2026.csv");
        db.import_calendar(&y2025).await.unwrap();
        assert_eq!(db.calendar_days().await.unwrap(), y2025);
        db.import_calendar(&y2026).await.unwrap();
        let both: Vec<_> = y2025.iter().chain(&y2026).cloned().collect();
        assert_eq!(db.calendar_days().await.unwrap(), both);

        // A corrected 2025 replaces that year only.
        db.import_calendar(&plain_year(2025)).await.unwrap();
        let stored = db.calendar_days().await.unwrap();
        assert_eq!(stored.len(), 365 * 2);
        assert_eq!(&stored[..365], &plain_year(2025)[..]);
        assert_eq!(&stored[365..], &y2026[..]);

        // What the service starts from: shipped years, imported ones over them.
        let cal = domain::calendar::BusinessCalendar::with_imported(stored).unwrap();
        assert!(cal.is_business_day(date!(2025 - 10 - 10)).business);
        assert!(!cal.is_business_day(date!(2026 - 02 - 16)).business);

        // Two years at once, and a refused import that changes nothing.
        let mut two = plain_year(2027);
        two.extend(plain_year(2028));
        db.import_calendar(&two).await.unwrap();
        let before = db.calendar_days().await.unwrap();
        assert_eq!(before.len(), 365 * 3 + 366);
        let mut partial = calendar_file("2025.csv");
        partial.extend(plain_year(2029));
        partial.pop();
        let err = db.import_calendar(&partial).await.unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.message_zh().contains("2029 年資料不完整"), "{err:?}");
        let mut doubled = plain_year(2030);
        doubled.push(doubled[3].clone());
        assert_eq!(
            db.import_calendar(&doubled).await.unwrap_err().code(),
            "invalid_input"
        );
        assert_eq!(db.calendar_days().await.unwrap(), before);
        db.import_calendar(&[]).await.unwrap();
        assert_eq!(db.calendar_days().await.unwrap(), before);
    })
    .await;
}

#[tokio::test]
async fn calendar_import_is_one_transaction() {
    each_db(|t| async move {
        let db = &t.db;
        db.import_calendar(&calendar_file("2025.csv"))
            .await
            .unwrap();
        // A trigger outside the store makes the last row of a 2025+2026 import fail: the DELETE
        // of 2025 and every row before it must roll back.
        match t.backend() {
            Backend::Sqlite => {
                t.raw(
                    "CREATE TRIGGER fail_last BEFORE INSERT ON calendar_days \
                     WHEN NEW.day = '2026-12-31' BEGIN SELECT RAISE(ABORT, 'injected'); END",
                )
                .await
            }
            Backend::Postgres => {
                t.raw(
                    "CREATE FUNCTION fail_last() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN IF NEW.day = '2026-12-31' THEN RAISE EXCEPTION 'injected'; END IF; \
                     RETURN NEW; END $$; \
                     CREATE TRIGGER fail_last BEFORE INSERT ON calendar_days \
                     FOR EACH ROW EXECUTE FUNCTION fail_last()",
                )
                .await
            }
        }
        let mut both = plain_year(2025);
        both.extend(calendar_file("2026.csv"));
        assert_eq!(
            db.import_calendar(&both).await.unwrap_err().code(),
            "internal"
        );
        assert_eq!(db.calendar_days().await.unwrap(), calendar_file("2025.csv"));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bulk loading

#[tokio::test]
async fn bulk_loads_read_back_like_committed_rows() {
    each_db(|t| async move {
        let db = &t.db;
        let agencies: Vec<Agency> = (0..3).map(|i| agency(&format!("BK{i:03}"))).collect();
        assert_eq!(db.bulk_load_agencies(&agencies).await.unwrap(), 3);
        assert_eq!(
            db.agency(&code("BK001")).await.unwrap(),
            Some(agencies[1].clone())
        );
        let admin = nid("A12345678");
        let regs: Vec<Registration> = (0..2)
            .map(|i| registration(&format!("BK{i:03}"), &admin))
            .collect();
        assert_eq!(db.bulk_load_registrations(&regs).await.unwrap(), 2);
        assert_eq!(
            db.registration(&code("BK000")).await.unwrap(),
            Some(regs[0].clone())
        );
        assert_eq!(
            db.bulk_load_registrations(&regs[..1]).await.unwrap_err(),
            DomainError::AlreadyRegistered
        );
        let receipt = Receipt {
            code: code("BK000"),
            kind: ReceiptKind::FirstRegistration,
            at: T0,
            review_id: None,
            terms_version: Some("2026-01".into()),
        };
        assert_eq!(
            db.bulk_load_receipts(std::slice::from_ref(&receipt))
                .await
                .unwrap(),
            1
        );
        assert_eq!(db.receipts(&code("BK000")).await.unwrap(), vec![receipt]);
        let ops: Vec<_> = (0..5)
            .map(|i| {
                (
                    code(if i < 3 { "BK000" } else { "BK001" }),
                    operator_input(&format!("0C{i:02}"), &nid(&format!("B2{i:07}"))),
                )
            })
            .collect();
        assert_eq!(db.bulk_load_operators(&ops, T0).await.unwrap(), 5);
        let listed = db.operators(&code("BK000")).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[2].serial, ops[2].1.serial);
        assert_eq!(listed[2].national_id, ops[2].1.national_id);
        assert_eq!((listed[2].version, listed[2].updated_at), (1, T0));
        // Found by keyed hash like any operator.
        assert_eq!(
            db.agencies_of_person(&ops[4].1.national_id).await.unwrap(),
            vec![(code("BK001"), PersonRole::Operator)]
        );
        assert_eq!(
            db.bulk_load_operators(&ops[..1], T0).await.unwrap_err(),
            DomainError::DuplicateOperator
        );
        // More rows than one statement's binds allow on SQLite: split, none lost.
        let many: Vec<_> = (0..7_000)
            .map(|i| {
                (
                    code("BK001"),
                    operator_input(&format!("F{i:06X}"), &nid(&format!("B1{i:07}"))),
                )
            })
            .collect();
        assert_eq!(db.bulk_load_operators(&many, T0).await.unwrap(), 7_000);
        assert_eq!(db.operators(&code("BK001")).await.unwrap().len(), 7_002);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Back-office search (R6.3)

#[tokio::test]
async fn r6_3_audit_search_filters_newest_first_and_is_capped() {
    each_db(|t| async move {
        let db = &t.db;
        db.upsert_agencies(&[agency("AB12")]).await.unwrap();
        let cert = |s: &str| format!("CN=CA|{s}");
        let mut e1 = event("a.one").agency(&code("AB12"));
        e1.cert = Some(cert("0A1B"));
        let mut e2 = AuditEvent::new(T0 + Duration::days(1), "system", "a.two", "oid_mismatch");
        e2.cert = Some(cert("0A1B"));
        db.append_audit(&e1).await.unwrap();
        db.append_audit(&e2).await.unwrap();
        db.append_audit(&event("a.three")).await.unwrap();
        let all = db
            .audit_search(&store::AuditFilter {
                limit: 200,
                ..Default::default()
            })
            .await
            .unwrap();
        let actions: Vec<_> = all.iter().map(|(_, e)| e.action.as_str()).collect();
        assert_eq!(actions, ["a.three", "a.two", "a.one"]);
        assert_eq!(all[2].1.detail["n"], "a.one");
        let by = |f: store::AuditFilter| async move {
            db.audit_search(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, e)| e.action)
                .collect::<Vec<_>>()
        };
        let base = store::AuditFilter {
            limit: 200,
            ..Default::default()
        };
        assert_eq!(
            by(store::AuditFilter {
                code: Some(code("AB12")),
                ..base.clone()
            })
            .await,
            ["a.one"]
        );
        assert_eq!(
            by(store::AuditFilter {
                serial: Some(serial("0A1B")),
                ..base.clone()
            })
            .await,
            ["a.two", "a.one"]
        );
        assert_eq!(
            by(store::AuditFilter {
                outcome: Some("oid_mismatch".into()),
                ..base.clone()
            })
            .await,
            ["a.two"]
        );
        assert_eq!(
            by(store::AuditFilter {
                from: Some(T0 + Duration::hours(1)),
                to: Some(T0 + Duration::days(2)),
                ..base.clone()
            })
            .await,
            ["a.two"]
        );
        assert_eq!(
            by(store::AuditFilter {
                limit: 1,
                ..base.clone()
            })
            .await,
            ["a.three"]
        );
        // Above the cap: the cap.
        for i in 0..205 {
            db.append_audit(&event(&format!("bulk.{i}"))).await.unwrap();
        }
        assert_eq!(
            by(store::AuditFilter {
                limit: 10_000,
                ..base.clone()
            })
            .await
            .len(),
            200
        );
        assert!(
            db.codes_by_serial(&serial("0A1B"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(db.decided_reviews(10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn live_sessions_and_registered_codes() {
    each_db(|t| async move {
        let db = &t.db;
        let session = |id: &str, kind: &str, at: time::OffsetDateTime| SessionRecord {
            id: id.into(),
            kind: kind.into(),
            code: Some("AB12".into()),
            data: format!("{{\"who\":\"{id}\"}}"),
            created_at: at,
            touched_at: at,
            expires_at: at + Duration::minutes(15),
            version: 1,
        };
        let op1 = session("s-op1", "operator", T0);
        let op2 = session("s-op2", "operator", T0 + Duration::minutes(1));
        let admin = session("s-admin", "admin", T0);
        db.session_insert(&op2).await.unwrap();
        db.session_insert(&op1).await.unwrap();
        db.session_insert(&admin).await.unwrap();
        db.session_insert(&session("s-old", "operator", T0 - Duration::hours(1)))
            .await
            .unwrap();
        assert_eq!(
            db.sessions_live(T0).await.unwrap(),
            vec![admin, op1, op2],
            "live ones only, oldest first, data decrypted"
        );

        assert!(db.registered_codes().await.unwrap().is_empty());
        register(db, "CD34", &nid("A12345678")).await;
        register(db, "AB12", &nid("B22345678")).await;
        assert_eq!(
            db.registered_codes().await.unwrap(),
            vec![code("AB12"), code("CD34")]
        );
    })
    .await;
}

#[tokio::test]
async fn notices_are_claimed_once_a_day_and_given_back_on_failure() {
    each_db(|t| async move {
        let db = &t.db;
        let day = time::macros::date!(2026 - 06 - 01);
        let keys = [
            "A|admin|CN=MOICA|0A".to_string(),
            "A|org|CN=GCA|0B".to_string(),
        ];
        assert_eq!(db.notice_claim(day, &keys).await.unwrap(), [true, true]);
        assert_eq!(db.notice_claim(day, &keys).await.unwrap(), [false, false]);
        // A failed mail gives its claim back.
        db.notice_release(day, &keys[..1]).await.unwrap();
        assert_eq!(db.notice_claim(day, &keys).await.unwrap(), [true, false]);
        // Eight instances at once: each notice is claimed by exactly one.
        let next = day.next_day().unwrap();
        let claims = claims_of_eight_instances(db, next, &keys).await;
        for i in 0..keys.len() {
            assert_eq!(claims.iter().filter(|c| c[i]).count(), 1, "{claims:?}");
        }
    })
    .await;
}

async fn claims_of_eight_instances(
    db: &store::Db,
    day: time::Date,
    keys: &[String],
) -> Vec<Vec<bool>> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (db, keys) = (db.clone(), keys.to_vec());
        tasks.push(tokio::spawn(async move {
            db.notice_claim(day, &keys).await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
