//! Every rule of SPEC §3 and §4 as a test of the domain services over the real store (SQLite,
//! and PostgreSQL when `TEST_DATABASE_URL` is set), with a fixed clock and test-PKI cards.
//! Test names carry the requirement ids.

mod helpers;
mod notices;
mod paused;
mod races;

use domain::DomainError;
use domain::flow::{FlowKind, Step};
use domain::model::{ReceiptKind, ReviewState};
use domain::service::{OperatorForm, StepOutcome};
use domain::store::Store as _;
use helpers::*;
use time::Duration;
use time::macros::date;

fn code_of<T: std::fmt::Debug>(r: domain::Result<T>) -> String {
    r.expect_err("expected a refusal").code().to_string()
}

#[tokio::test]
async fn r1_1_terms_come_first_and_are_recorded() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        assert_eq!(
            code_of(svc.issue_challenge(&flow.id, SESSION).await),
            "wrong_step"
        );
        let agreed = svc.agree_terms(&flow.id, SESSION).await.unwrap();
        assert_eq!(agreed.step, Step::OrgCard);
        assert_eq!(
            agreed.data.terms_version.as_deref(),
            Some(svc.config().terms_version.as_str())
        );
        assert_eq!(
            code_of(svc.agree_terms(&flow.id, SESSION).await),
            "wrong_step"
        );
    }
}

#[tokio::test]
async fn r1_2_organization_card_refusals() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency", Some("Z9999"), None).await),
            "unknown_agency"
        );
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency", Some("bad code!"), None).await),
            "invalid_input"
        );
        assert_eq!(
            code_of(card_step(svc, &flow.id, "moica-admin", Some(TAIPEI), None).await),
            "wrong_role"
        );
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency-expired", Some(TAIPEI), None).await),
            "cert_expired"
        );
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency-revoked", Some(TAIPEI), None).await),
            "cert_revoked"
        );
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency-wrongku", Some(TAIPEI), None).await),
            "key_usage"
        );
        // Still at the same step: refusals do not advance the flow.
        advanced(
            card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None)
                .await
                .unwrap(),
        );
    }
}

#[tokio::test]
async fn r1_2_already_registered_points_elsewhere() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        let e = card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "already_registered");
        assert!(e.message_zh().contains("更換憑證") && e.message_zh().contains("授權指派"));
    }
}

#[tokio::test]
async fn r1_3_mismatch_review_pending_then_approved_from_the_next_business_day() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        let outcome = card_step(svc, &flow.id, "gca-agency-mismatch", Some(MISMATCH), None)
            .await
            .unwrap();
        assert!(
            matches!(outcome, StepOutcome::ReviewNeeded(_)),
            "{outcome:?}"
        );
        assert_eq!(
            code_of(
                svc.file_review(&flow.id, SESSION, "", "0223456789", None)
                    .await
            ),
            "invalid_input"
        );
        let (application, section) = svc
            .file_review(&flow.id, SESSION, "林小華", "(02)2345-6789", None)
            .await
            .unwrap();
        assert_eq!(application.state, ReviewState::Pending);
        assert_eq!(section.unwrap().extension, "5312");

        // Until decided, the same card gets the 圖3-7 message again.
        let again = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&again.id, SESSION).await.unwrap();
        let e = card_step(svc, &again.id, "gca-agency-mismatch", Some(MISMATCH), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "review_pending");
        assert!(e.message_zh().contains("次一營業日"));

        // Approved on Thursday 2025-10-09: Friday is 國慶日, so it counts from Monday 10-13.
        let reviewer = reviewer(svc).await;
        let state = svc
            .decide_review(&reviewer, application.id, true, "核對無誤")
            .await
            .unwrap();
        assert!(
            matches!(state, ReviewState::Approved { effective, .. } if effective == date!(2025-10-13))
        );
        let e = card_step(svc, &again.id, "gca-agency-mismatch", Some(MISMATCH), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "review_not_yet_effective");
        env.clock.set(NOW + Duration::days(3)); // Sunday 10-12
        let sunday = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&sunday.id, SESSION).await.unwrap();
        assert_eq!(
            code_of(card_step(svc, &sunday.id, "gca-agency-mismatch", Some(MISMATCH), None).await),
            "review_not_yet_effective"
        );
        env.clock.set(NOW + Duration::days(4)); // Monday 10-13, 10:00 Taipei
        let monday = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&monday.id, SESSION).await.unwrap();
        advanced(
            card_step(svc, &monday.id, "gca-agency-mismatch", Some(MISMATCH), None)
                .await
                .unwrap(),
        );
    }
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
async fn spec_4_2_services_use_the_years_imported_into_the_store() {
    for env in envs().await {
        let svc = &env.svc;
        // A 2025 without 國慶日 in the store, and 2027 added.
        let mut days = plain_year(2025);
        days.extend(plain_year(2027));
        svc.store().import_calendar(&days).await.unwrap();
        let started = domain::service::Services::with_stored_calendar(
            svc.store().clone(),
            env.clock.clone(),
            validator(),
            domain::service::ServiceConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(svc.reload_calendar().await.unwrap(), vec![2025, 2026, 2027]);
        // One agency per service: each files and gets a decision of its own.
        for (svc, card, code) in [
            (&**svc, "moeaca-company", COMPANY),
            (&started, "gca-agency-mismatch", MISMATCH),
        ] {
            let flow = svc
                .start_flow(FlowKind::FirstRegistration, SESSION)
                .await
                .unwrap();
            svc.agree_terms(&flow.id, SESSION).await.unwrap();
            card_step(svc, &flow.id, card, Some(code), None)
                .await
                .unwrap();
            let (application, section) = svc
                .file_review(&flow.id, SESSION, "陳先生", "04-2222-3333", None)
                .await
                .unwrap();
            let reviewer = reviewer_of(svc, section.unwrap().section).await;
            // Thursday 2025-10-09: the imported year makes Friday 10-10 a business day.
            let state = svc
                .decide_review(&reviewer, application.id, true, "")
                .await
                .unwrap();
            assert!(
                matches!(state, ReviewState::Approved { effective, .. } if effective == date!(2025-10-10)),
                "{state:?}"
            );
        }
    }
}

async fn reviewer(svc: &Svc) -> domain::model::Reviewer {
    reviewer_of(svc, domain::model::Section::First).await
}

/// An active reviewer of `section`: the one on file, else a new account (承保第一科 with the
/// test PKI's reviewer card, 承保第二科 with a serial of its own).
async fn reviewer_of<S: domain::store::Store, C: domain::clock::Clock>(
    svc: &domain::service::Services<S, C>,
    section: domain::model::Section,
) -> domain::model::Reviewer {
    let on_file = svc.store().reviewers().await.unwrap();
    if let Some(r) = on_file
        .into_iter()
        .find(|r| r.section == section && r.active)
    {
        return r;
    }
    let serial = match section {
        domain::model::Section::First => pki().card("moica-reviewer").issued.serial_hex(),
        domain::model::Section::Second => "5EC0D2".to_string(),
    };
    let serial = pki::serial::CertSerial::parse(&serial).unwrap();
    let id = svc
        .store()
        .add_reviewer("審核員甲", section, &serial)
        .await
        .unwrap();
    svc.store()
        .reviewers()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap()
}

#[tokio::test]
async fn r1_3_rejected_application_lets_the_agency_apply_again() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        card_step(svc, &flow.id, "moeaca-company", Some(COMPANY), None)
            .await
            .unwrap();
        let (application, section) = svc
            .file_review(&flow.id, SESSION, "陳先生", "04-2222-3333", None)
            .await
            .unwrap();
        assert_eq!(section.unwrap().extension, "5353", "臺中 is 承保第二科");
        // 承保第一科 neither sees nor decides it: the same answer as an id nobody has.
        let first = reviewer(svc).await;
        for id in [application.id, application.id + 1000] {
            assert_eq!(
                code_of(svc.review_case(&first, id).await),
                "review_not_found"
            );
            assert_eq!(
                code_of(svc.decide_review(&first, id, true, "").await),
                "review_not_found"
            );
        }
        let listed = svc
            .review_list(&first, domain::service::ReviewList::Pending, None)
            .await
            .unwrap();
        assert!(listed.iter().all(|c| c.application.id != application.id));
        let reviewer = reviewer_of(svc, domain::model::Section::Second).await;
        let listed = svc
            .review_list(&reviewer, domain::service::ReviewList::Pending, None)
            .await
            .unwrap();
        assert!(listed.iter().any(|c| c.application.id == application.id));
        svc.decide_review(&reviewer, application.id, false, "資料不符")
            .await
            .unwrap();
        let retry = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&retry.id, SESSION).await.unwrap();
        let outcome = card_step(svc, &retry.id, "moeaca-company", Some(COMPANY), None)
            .await
            .unwrap();
        assert!(matches!(outcome, StepOutcome::ReviewNeeded(_)));
        // A decided application cannot be decided again.
        assert_eq!(
            code_of(svc.decide_review(&reviewer, application.id, true, "").await),
            "conflict"
        );
    }
}

#[tokio::test]
async fn r1_4_administrator_id_must_match_the_card() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None)
            .await
            .unwrap();
        assert_eq!(
            code_of(card_step(svc, &flow.id, "moica-admin", None, Some("A123456788")).await),
            "invalid_input"
        );
        assert_eq!(
            code_of(
                card_step(
                    svc,
                    &flow.id,
                    "moica-admin",
                    None,
                    Some(&id_of("moica-admin2"))
                )
                .await
            ),
            "id_mismatch"
        );
        assert_eq!(
            code_of(
                card_step(
                    svc,
                    &flow.id,
                    "gca-agency",
                    None,
                    Some(&id_of("moica-admin"))
                )
                .await
            ),
            "wrong_role"
        );
        let f = advanced(
            card_step(
                svc,
                &flow.id,
                "moica-admin",
                None,
                Some(&id_of("moica-admin")),
            )
            .await
            .unwrap(),
        );
        assert_eq!(f.step, Step::Confirm);
    }
}

#[tokio::test]
async fn r1_5_confirmation_writes_registration_receipt_and_audit_once() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None)
            .await
            .unwrap();
        card_step(
            svc,
            &flow.id,
            "moica-admin",
            None,
            Some(&id_of("moica-admin")),
        )
        .await
        .unwrap();
        let mut bad = contact();
        bad.email = "not-an-email".into();
        let e = svc
            .confirm(&flow.id, SESSION, &bad, None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, DomainError::Invalid { field: "email", .. }),
            "{e:?}"
        );
        let reg = svc
            .confirm(&flow.id, SESSION, &contact(), None)
            .await
            .unwrap();
        assert_eq!(reg.admin.name.as_str(), "王大明");
        assert_eq!(
            code_of(svc.confirm(&flow.id, SESSION, &contact(), None).await),
            "already_confirmed"
        );
        let code = domain::types::InstitutionCode::parse(TAIPEI).unwrap();
        let stored = svc.store().registration(&code).await.unwrap().unwrap();
        assert_eq!(stored, reg);
        let receipts = svc.store().receipts(&code).await.unwrap();
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].kind, ReceiptKind::FirstRegistration);
        assert_eq!(svc.store().verify_audit().await.unwrap().first_broken, None);
    }
}

#[tokio::test]
async fn r2_1_r2_2_administrator_login_needs_the_registered_cards() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        // A renewed organization card of the same agency.
        let flow = svc.start_flow(FlowKind::AdminLogin, SESSION).await.unwrap();
        let e = card_step(svc, &flow.id, "gca-agency-renewed", Some(TAIPEI), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "org_card_changed");
        assert_eq!(e.message_zh(), "機關憑證已更換或展期，請先辦理更換機關憑證");
        // Another agency's card.
        assert_eq!(
            code_of(card_step(svc, &flow.id, "xca-school", Some(TAIPEI), None).await),
            "forbidden"
        );
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency", Some(SCHOOL), None).await),
            "not_registered"
        );
        advanced(
            card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None)
                .await
                .unwrap(),
        );
        // The administrator's renewed card, and somebody else's.
        let e = card_step(
            svc,
            &flow.id,
            "moica-admin-renewed",
            None,
            Some(&id_of("moica-admin")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "admin_card_changed");
        assert!(e.message_zh().contains("更換授權管理者自然人憑證"));
        assert_eq!(
            code_of(
                card_step(
                    svc,
                    &flow.id,
                    "moica-admin2",
                    None,
                    Some(&id_of("moica-admin2"))
                )
                .await
            ),
            "not_administrator"
        );
        let grant = match card_step(
            svc,
            &flow.id,
            "moica-admin",
            None,
            Some(&id_of("moica-admin")),
        )
        .await
        .unwrap()
        {
            StepOutcome::Admin(g) => g,
            other => panic!("{other:?}"),
        };
        assert_eq!(grant.code.as_str(), TAIPEI);
        assert!(svc.operators(&grant).await.unwrap().is_empty());
    }
}

fn operator_form(card: &str, functions: &[&str]) -> OperatorForm {
    OperatorForm {
        read_certificate: None,
        serial: pki().card(card).issued.serial_hex(),
        name: pki().card(card).holder.clone(),
        national_id: id_of(card),
        functions: functions.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn r2_3_to_r2_6_operators_add_modify_delete() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        // R2.4: typed serial; at least one function; read certificate must match the ID.
        assert_eq!(
            code_of(
                svc.add_operator(&grant, &operator_form("moica-operator-1", &[]), None)
                    .await
            ),
            "invalid_input"
        );
        let id = svc
            .add_operator(
                &grant,
                &operator_form("moica-operator-1", &["enroll", "query"]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            code_of(
                svc.add_operator(
                    &grant,
                    &operator_form("moica-operator-1", &["enroll"]),
                    None
                )
                .await
            ),
            "duplicate_operator"
        );
        let mut read = operator_form("moica-operator-2", &["premium"]);
        read.read_certificate = Some(pki().card("moica-operator-2").issued.cert_der.clone());
        read.national_id = id_of("moica-operator-1");
        assert_eq!(
            code_of(svc.add_operator(&grant, &read, None).await),
            "id_mismatch"
        );
        read.national_id = id_of("moica-operator-2");
        read.serial = "ignored when the card was read".into();
        let id2 = svc.add_operator(&grant, &read, None).await.unwrap();
        let list = svc.operators(&grant).await.unwrap();
        assert_eq!(list.len(), 2);
        let op2 = list.iter().find(|o| o.id == id2).unwrap();
        assert_eq!(op2.name.as_str(), pki().card("moica-operator-2").holder);

        // R2.5: two tabs modify the same operator from the same version: one conflicts.
        let op = svc.operator(&grant, id).await.unwrap();
        svc.modify_operator(
            &grant,
            id,
            op.version,
            &operator_form("moica-operator-1", &["withdraw"]),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            code_of(
                svc.modify_operator(
                    &grant,
                    id,
                    op.version,
                    &operator_form("moica-operator-1", &["premium"]),
                    None
                )
                .await
            ),
            "conflict"
        );
        let now = svc.operator(&grant, id).await.unwrap();
        assert_eq!(now.functions, vec!["withdraw".to_string()]);

        // R2.6
        assert_eq!(
            code_of(svc.delete_operator(&grant, id, op.version, None).await),
            "conflict"
        );
        svc.delete_operator(&grant, id, now.version, None)
            .await
            .unwrap();
        assert_eq!(
            code_of(svc.operator(&grant, id).await),
            "operator_not_found"
        );
    }
}

#[tokio::test]
async fn spec_4_7_administrator_cannot_reach_another_agencys_operators() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        register(svc, SCHOOL, "xca-school", "moica-admin2").await;
        let taipei = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        let school = admin_login(svc, SCHOOL, "xca-school", "moica-admin2")
            .await
            .unwrap();
        let id = svc
            .add_operator(
                &school,
                &operator_form("moica-operator-1", &["enroll"]),
                None,
            )
            .await
            .unwrap();
        let v = svc.operator(&school, id).await.unwrap().version;
        assert_eq!(
            code_of(svc.operator(&taipei, id).await),
            "operator_not_found"
        );
        assert_eq!(
            code_of(
                svc.modify_operator(
                    &taipei,
                    id,
                    v,
                    &operator_form("moica-operator-1", &["query"]),
                    None
                )
                .await
            ),
            "operator_not_found"
        );
        assert_eq!(
            code_of(svc.delete_operator(&taipei, id, v, None).await),
            "operator_not_found"
        );
        assert_eq!(svc.operators(&taipei).await.unwrap().len(), 0);
    }
}

#[tokio::test]
async fn r3_1_replace_organization_card() {
    for env in envs().await {
        let svc = &env.svc;
        let before = register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        let op = svc
            .add_operator(
                &grant,
                &operator_form("moica-operator-1", &["enroll"]),
                None,
            )
            .await
            .unwrap();
        let flow = svc.start_flow(FlowKind::ReplaceOrg, SESSION).await.unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None).await),
            "same_certificate"
        );
        advanced(
            card_step(svc, &flow.id, "gca-agency-renewed", Some(TAIPEI), None)
                .await
                .unwrap(),
        );
        assert_eq!(
            code_of(
                card_step(
                    svc,
                    &flow.id,
                    "moica-admin2",
                    None,
                    Some(&id_of("moica-admin2"))
                )
                .await
            ),
            "not_administrator"
        );
        advanced(
            card_step(
                svc,
                &flow.id,
                "moica-admin",
                None,
                Some(&id_of("moica-admin")),
            )
            .await
            .unwrap(),
        );
        let after = svc
            .confirm(&flow.id, SESSION, &contact(), None)
            .await
            .unwrap();
        assert_ne!(after.org.cert.serial, before.org.cert.serial);
        assert_eq!(after.admin_card, before.admin_card);
        // R3.4: history, receipt, operators untouched, administrator session ended.
        let code = domain::types::InstitutionCode::parse(TAIPEI).unwrap();
        let history = svc.store().cert_history(&code).await.unwrap();
        assert_eq!(history.len(), 1);
        assert!(history[0].cert.same_as(&before.org.cert));
        assert_eq!(
            svc.store().receipts(&code).await.unwrap()[0].kind,
            ReceiptKind::ReplaceOrg
        );
        assert_eq!(code_of(svc.operators(&grant).await), "forbidden");
        let grant = admin_login(svc, TAIPEI, "gca-agency-renewed", "moica-admin")
            .await
            .unwrap();
        assert!(svc.operator(&grant, op).await.is_ok());
        assert_eq!(
            code_of(admin_login(svc, TAIPEI, "gca-agency", "moica-admin").await),
            "org_card_changed"
        );
    }
}

#[tokio::test]
async fn r3_2_replace_administrator_card_with_another_person() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let flow = svc
            .start_flow(FlowKind::ReplaceAdmin, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        assert_eq!(
            code_of(card_step(svc, &flow.id, "gca-agency-renewed", Some(TAIPEI), None).await),
            "org_card_changed"
        );
        advanced(
            card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None)
                .await
                .unwrap(),
        );
        assert_eq!(
            code_of(
                card_step(
                    svc,
                    &flow.id,
                    "moica-admin",
                    None,
                    Some(&id_of("moica-admin"))
                )
                .await
            ),
            "same_certificate"
        );
        advanced(
            card_step(
                svc,
                &flow.id,
                "moica-admin2",
                None,
                Some(&id_of("moica-admin2")),
            )
            .await
            .unwrap(),
        );
        let mut c = contact();
        c.name = "李小美".into();
        let after = svc.confirm(&flow.id, SESSION, &c, None).await.unwrap();
        assert_eq!(after.admin.name.as_str(), "李小美");
        assert!(
            admin_login(svc, TAIPEI, "gca-agency", "moica-admin2")
                .await
                .is_ok()
        );
        assert_eq!(
            code_of(admin_login(svc, TAIPEI, "gca-agency", "moica-admin").await),
            "not_administrator"
        );
    }
}

#[tokio::test]
async fn r3_3_replace_both_cards() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let flow = svc
            .start_flow(FlowKind::ReplaceBoth, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        advanced(
            card_step(svc, &flow.id, "gca-agency-renewed", Some(TAIPEI), None)
                .await
                .unwrap(),
        );
        advanced(
            card_step(
                svc,
                &flow.id,
                "moica-admin-renewed",
                None,
                Some(&id_of("moica-admin-renewed")),
            )
            .await
            .unwrap(),
        );
        svc.confirm(&flow.id, SESSION, &contact(), None)
            .await
            .unwrap();
        let code = domain::types::InstitutionCode::parse(TAIPEI).unwrap();
        assert_eq!(svc.store().cert_history(&code).await.unwrap().len(), 2);
        assert_eq!(
            svc.store().receipts(&code).await.unwrap()[0].kind,
            ReceiptKind::ReplaceBoth
        );
        assert!(
            admin_login(svc, TAIPEI, "gca-agency-renewed", "moica-admin-renewed")
                .await
                .is_ok()
        );
    }
}

#[tokio::test]
async fn r3_4_new_organization_card_goes_through_the_identifier_check() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let flow = svc.start_flow(FlowKind::ReplaceOrg, SESSION).await.unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        let outcome = card_step(svc, &flow.id, "gca-agency-mismatch", Some(TAIPEI), None)
            .await
            .unwrap();
        assert!(matches!(outcome, StepOutcome::ReviewNeeded(_)));
    }
}

#[tokio::test]
async fn r4_1_receipts_newest_first_with_review_state() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        card_step(svc, &flow.id, "gca-agency-mismatch", Some(MISMATCH), None)
            .await
            .unwrap();
        svc.file_review(&flow.id, SESSION, "林小華", "0223456789", None)
            .await
            .unwrap();
        env.clock.advance(Duration::minutes(1));
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let (agency, receipts) = svc.receipts(MISMATCH).await.unwrap();
        assert_eq!(agency.name, "新北市政府主計處");
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].0.kind, ReceiptKind::ReviewApplication);
        assert_eq!(receipts[0].1, Some(ReviewState::Pending));
        let (_, taipei) = svc.receipts(TAIPEI).await.unwrap();
        assert_eq!(taipei[0].0.kind, ReceiptKind::FirstRegistration);
        assert_eq!(code_of(svc.receipts("Z9999").await), "unknown_agency");
    }
}

/// 查詢機關憑證 OID of `card` for `code`: where it stands.
async fn oid_query(svc: &Svc, card: &str, code: &str) -> domain::model::OidVerdict {
    let flow = svc
        .start_flow(FlowKind::QueryOrgOid, SESSION)
        .await
        .unwrap();
    match card_step(svc, &flow.id, card, Some(code), None)
        .await
        .unwrap()
    {
        StepOutcome::OrgOid {
            org_identifier,
            verdict,
            on_file,
            ..
        } => {
            assert_eq!(
                org_identifier.as_str(),
                pki().card(card).org_identifier.as_deref().unwrap()
            );
            assert!(on_file.is_some() || verdict != domain::model::OidVerdict::OnFile);
            verdict
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn r4_2_query_org_oid_says_where_the_card_stands_in_every_state() {
    use domain::model::OidVerdict as V;
    for env in envs().await {
        let svc = &env.svc;
        assert_eq!(oid_query(svc, "gca-agency", TAIPEI).await, V::OnFile);
        // Nothing filed: registering will ask for a review application.
        assert_eq!(
            oid_query(svc, "gca-agency-mismatch", MISMATCH).await,
            V::Mismatch
        );
        assert!(V::Mismatch.message_zh().contains("將需審核"));
        // Filed: pending, and the query no longer says a review will be needed.
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        card_step(svc, &flow.id, "gca-agency-mismatch", Some(MISMATCH), None)
            .await
            .unwrap();
        let (application, _) = svc
            .file_review(&flow.id, SESSION, "陳先生", "02-2222-3333", None)
            .await
            .unwrap();
        let pending = oid_query(svc, "gca-agency-mismatch", MISMATCH).await;
        assert_eq!(pending, V::Pending);
        assert!(!pending.message_zh().contains("將需審核"));
        // Approved on Thursday 2025-10-09: in effect from Monday 10-13 (Friday is 國慶日).
        let reviewer = reviewer(svc).await;
        svc.decide_review(&reviewer, application.id, true, "")
            .await
            .unwrap();
        let from = oid_query(svc, "gca-agency-mismatch", MISMATCH).await;
        assert_eq!(
            from,
            V::ApprovedFrom {
                effective: date!(2025 - 10 - 13)
            }
        );
        assert!(from.message_zh().contains("2025/10/13"));
        assert!(!from.accepted());
        env.clock.advance(Duration::days(4));
        let approved = oid_query(svc, "gca-agency-mismatch", MISMATCH).await;
        assert_eq!(approved, V::Approved);
        assert!(approved.accepted());
    }
}

#[tokio::test]
async fn r4_3_query_citizen_serial() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::QueryCitizenSerial, SESSION)
            .await
            .unwrap();
        match card_step(
            svc,
            &flow.id,
            "moica-operator-1",
            None,
            Some(&id_of("moica-operator-1")),
        )
        .await
        .unwrap()
        {
            StepOutcome::CitizenSerial { name, serial } => {
                assert_eq!(name, pki().card("moica-operator-1").holder);
                assert_eq!(
                    serial.as_str(),
                    pki().card("moica-operator-1").issued.serial_hex()
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A grant with a validity period (從/至) logs in only within it, ends a login that outlives
/// it, and a period that ends before it starts is refused.
#[tokio::test]
async fn an_operator_grant_holds_only_within_its_validity_period() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        let backwards = OperatorForm {
            valid_from: "2025-10-20".into(),
            valid_until: "2025-10-10".into(),
            ..operator_form("moica-operator-1", &["query"])
        };
        let e = svc
            .add_operator(&grant, &backwards, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DomainError::Invalid {
                    field: "valid_until",
                    ..
                }
            ),
            "{e:?}"
        );
        let bad = OperatorForm {
            valid_from: "2025-02-30".into(),
            ..operator_form("moica-operator-1", &["query"])
        };
        let e = svc.add_operator(&grant, &bad, None).await.unwrap_err();
        assert!(
            matches!(
                e,
                DomainError::Invalid {
                    field: "valid_from",
                    ..
                }
            ),
            "{e:?}"
        );
        // Today is Thursday 2025-10-09 (Taipei): from Friday to Saturday.
        let form = OperatorForm {
            valid_from: "2025/10/10".into(),
            valid_until: "2025-10-11".into(),
            ..operator_form("moica-operator-1", &["query"])
        };
        let id = svc.add_operator(&grant, &form, None).await.unwrap();
        let on_file = svc.operator(&grant, id).await.unwrap();
        assert_eq!(
            on_file.validity,
            domain::model::Validity {
                from: Some(date!(2025 - 10 - 10)),
                until: Some(date!(2025 - 10 - 11)),
            }
        );
        let login = || async {
            let flow = svc
                .start_flow(FlowKind::OperatorLogin, SESSION)
                .await
                .unwrap();
            let id = id_of("moica-operator-1");
            card_step(svc, &flow.id, "moica-operator-1", Some(TAIPEI), Some(&id)).await
        };
        let e = login().await.unwrap_err();
        assert_eq!(e.code(), "grant_not_yet_valid");
        assert!(e.message_zh().contains("2025/10/10"), "{}", e.message_zh());
        env.clock.advance(Duration::days(1));
        let StepOutcome::Operator(op_grant) = login().await.unwrap() else {
            panic!("not an operator login");
        };
        assert!(svc.current_operator(&op_grant).await.unwrap().is_some());
        // Past the last day: the login in hand ends, and a new one is refused.
        env.clock.advance(Duration::days(2));
        assert!(svc.current_operator(&op_grant).await.unwrap().is_none());
        let e = login().await.unwrap_err();
        assert_eq!(e.code(), "grant_expired");
        assert!(e.message_zh().contains("2025/10/11"), "{}", e.message_zh());
    }
}

#[tokio::test]
async fn r5_1_operator_login() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        let op_id = svc
            .add_operator(
                &grant,
                &operator_form("moica-operator-1", &["enroll", "query"]),
                None,
            )
            .await
            .unwrap();
        let typed = svc.operator(&grant, op_id).await.unwrap();
        assert_eq!(
            typed.cert, None,
            "a typed serial: issuer and notAfter unknown"
        );
        let login = |card: &'static str, id: String| {
            let svc = &env.svc;
            async move {
                let flow = svc
                    .start_flow(FlowKind::OperatorLogin, SESSION)
                    .await
                    .unwrap();
                card_step(svc, &flow.id, card, Some(TAIPEI), Some(&id)).await
            }
        };
        match login("moica-operator-1", id_of("moica-operator-1"))
            .await
            .unwrap()
        {
            StepOutcome::Operator(g) => {
                assert_eq!(g.functions, vec!["enroll".to_string(), "query".to_string()])
            }
            other => panic!("{other:?}"),
        }
        // The login taught the grant its certificate, without changing the grant's version.
        let learnt = svc.operator(&grant, op_id).await.unwrap();
        let card = &pki().card("moica-operator-1").issued;
        let facts = pki::facts::ParsedCert::from_der(card.cert_der.clone())
            .unwrap()
            .facts;
        assert_eq!(
            learnt.cert,
            Some(domain::model::OperatorCert {
                issuer: facts.issuer.clone(),
                not_after: facts.not_after,
            })
        );
        assert_eq!(learnt.version, typed.version);
        assert_eq!(
            code_of(login("moica-operator-2", id_of("moica-operator-2")).await),
            "not_operator"
        );
        // Another card of a granted person (the admin's ID is not granted; use a renewed card
        // whose holder is granted: grant moica-admin, log in with moica-admin-renewed).
        svc.add_operator(&grant, &operator_form("moica-admin", &["query"]), None)
            .await
            .unwrap();
        // The refusal is the same whether or not the typed ID belongs to an operator here
        // (nothing to learn about who is one); its message covers the renewed card.
        let e = login("moica-admin-renewed", id_of("moica-admin-renewed"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "not_operator");
        assert!(e.message_zh().contains("請洽授權管理者修改憑證序號"));
        // A 機關代號 not on file is named as such, whatever else is wrong; a typed ID that is
        // not the card's is refused before any grant is looked at.
        for (card, id) in [
            ("moica-operator-1", id_of("moica-operator-1")),
            ("moica-operator-1", id_of("moica-operator-2")),
        ] {
            let flow = svc
                .start_flow(FlowKind::OperatorLogin, SESSION)
                .await
                .unwrap();
            assert_eq!(
                code_of(card_step(svc, &flow.id, card, Some("Z9999"), Some(&id)).await),
                "unknown_agency"
            );
        }
        assert_eq!(
            code_of(login("moica-operator-1", id_of("moica-operator-2")).await),
            "id_mismatch"
        );
    }
}

/// What a login hands its caller's session: recorded, and written in the login's commit.
#[derive(Debug)]
struct Recorder {
    refuse: bool,
    record: domain::store::SessionRecord,
    writes: std::sync::Mutex<Vec<String>>,
    saved: std::sync::Mutex<Vec<domain::store::SessionSaved>>,
}

impl domain::service::LoginSession for Recorder {
    fn write(&self, outcome: &StepOutcome) -> domain::Result<Option<domain::store::SessionWrite>> {
        self.writes.lock().unwrap().push(format!("{outcome:?}"));
        if self.refuse {
            return Err(DomainError::Forbidden);
        }
        Ok(Some(domain::store::SessionWrite::Rotate {
            old: None,
            until: NOW,
            record: self.record.clone(),
        }))
    }

    fn saved(&self, saved: domain::store::SessionSaved) {
        self.saved.lock().unwrap().push(saved);
    }
}

// A login asks for its session's write only once every rule has passed, and writes it in its
// own commit; a refused write refuses the login before anything is written.
#[tokio::test]
async fn r5_1_a_login_writes_its_session_only_when_granted() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        svc.add_operator(&grant, &operator_form("moica-operator-1", &["query"]), None)
            .await
            .unwrap();
        let login = |card: &'static str, id: String, refuse: bool| {
            let svc = &env.svc;
            async move {
                let recorder = std::sync::Arc::new(Recorder {
                    refuse,
                    record: domain::store::SessionRecord {
                        id: format!("login-{card}-{refuse}"),
                        kind: "operator".into(),
                        code: Some(TAIPEI.into()),
                        data: "{}".into(),
                        created_at: NOW,
                        touched_at: NOW,
                        expires_at: NOW + Duration::minutes(15),
                        version: 1,
                    },
                    writes: Default::default(),
                    saved: Default::default(),
                });
                let flow = svc
                    .start_flow(FlowKind::OperatorLogin, SESSION)
                    .await
                    .unwrap();
                let hook: std::sync::Arc<dyn domain::service::LoginSession> = recorder.clone();
                let result =
                    card_step_as(svc, &flow.id, card, Some(TAIPEI), Some(&id), Some(hook)).await;
                let step = svc.session_flow(&flow.id, SESSION).await.unwrap().step;
                let writes = recorder.writes.lock().unwrap().len();
                let saved = recorder.saved.lock().unwrap().clone();
                (result.map(|_| ()), step, writes, saved)
            }
        };
        use domain::store::SessionSaved::Saved;
        // Refused by the rules: the session is never asked for.
        let (r, step, writes, saved) =
            login("moica-operator-1", id_of("moica-operator-2"), false).await;
        assert_eq!(code_of(r), "id_mismatch");
        assert_eq!((step, writes, saved), (Step::OperatorCard, 0, vec![]));
        let (r, step, writes, saved) =
            login("moica-operator-2", id_of("moica-operator-2"), false).await;
        assert_eq!(code_of(r), "not_operator");
        assert_eq!((step, writes, saved), (Step::OperatorCard, 0, vec![]));
        // Refused by the session's door: nothing is written.
        let (r, step, writes, saved) =
            login("moica-operator-1", id_of("moica-operator-1"), true).await;
        assert_eq!(code_of(r), "forbidden");
        assert_eq!((step, writes, saved), (Step::OperatorCard, 1, vec![]));
        // Granted: asked once, written with the flow.
        let (r, step, writes, saved) =
            login("moica-operator-1", id_of("moica-operator-1"), false).await;
        r.unwrap();
        assert_eq!((step, writes, saved), (Step::Done, 1, vec![Saved(1)]));
    }
}

#[tokio::test]
async fn spec_4_1_flow_expires_after_15_idle_minutes() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        env.clock
            .advance(Duration::minutes(15) + Duration::seconds(1));
        assert_eq!(
            code_of(svc.issue_challenge(&flow.id, SESSION).await),
            "flow_expired"
        );
    }
}

#[tokio::test]
async fn spec_4_1_replayed_and_misdirected_proofs() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        let ch = svc.issue_challenge(&flow.id, SESSION).await.unwrap();
        let input = domain::service::CardStepInput {
            flow_id: flow.id.clone(),
            session: SESSION.into(),
            challenge_id: ch.id.clone(),
            signature: cms("gca-agency", &ch.tbs),
            institution_code: Some(TAIPEI.into()),
            ..Default::default()
        };
        // Another session cannot use this flow.
        let mut other_session = input.clone();
        other_session.session = "session-2".into();
        assert_eq!(
            code_of(svc.submit_card(other_session).await),
            "flow_not_found"
        );
        advanced(svc.submit_card(input.clone()).await.unwrap());
        // Replay: the challenge is spent (and the flow moved on).
        let e = code_of(svc.submit_card(input.clone()).await);
        assert!(e == "challenge_used" || e == "wrong_step", "{e}");
        // A proof signed for another flow's challenge.
        let other = svc
            .start_flow(FlowKind::QueryOrgOid, SESSION)
            .await
            .unwrap();
        let other_ch = svc.issue_challenge(&other.id, SESSION).await.unwrap();
        let ch2 = svc.issue_challenge(&flow.id, SESSION).await.unwrap();
        let forged = domain::service::CardStepInput {
            challenge_id: ch2.id,
            signature: cms("moica-admin", &other_ch.tbs),
            national_id: Some(id_of("moica-admin")),
            institution_code: None,
            ..input
        };
        assert_eq!(code_of(svc.submit_card(forged).await), "challenge_mismatch");
        // An expired challenge.
        let ch3 = svc.issue_challenge(&flow.id, SESSION).await.unwrap();
        env.clock.advance(Duration::minutes(6));
        let late = domain::service::CardStepInput {
            flow_id: flow.id.clone(),
            session: SESSION.into(),
            challenge_id: ch3.id,
            signature: cms("moica-admin", &ch3.tbs),
            national_id: Some(id_of("moica-admin")),
            ..Default::default()
        };
        assert_eq!(code_of(svc.submit_card(late).await), "challenge_expired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_two_first_registrations_of_one_agency() {
    for env in envs().await {
        let svc = std::sync::Arc::new(env.svc);
        let mut flows = Vec::new();
        for _ in 0..2 {
            let flow = svc
                .start_flow(FlowKind::FirstRegistration, SESSION)
                .await
                .unwrap();
            svc.agree_terms(&flow.id, SESSION).await.unwrap();
            card_step(&svc, &flow.id, "gca-agency", Some(TAIPEI), None)
                .await
                .unwrap();
            card_step(
                &svc,
                &flow.id,
                "moica-admin",
                None,
                Some(&id_of("moica-admin")),
            )
            .await
            .unwrap();
            flows.push(flow.id);
        }
        let tasks: Vec<_> = flows
            .into_iter()
            .map(|id| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.confirm(&id, SESSION, &contact(), None).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.code(), "already_registered"),
            }
        }
        assert_eq!(ok, 1);
        let code = domain::types::InstitutionCode::parse(TAIPEI).unwrap();
        assert_eq!(svc.store().receipts(&code).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_100_submissions_of_one_proof() {
    for env in envs().await {
        let svc = std::sync::Arc::new(env.svc);
        let flow = svc
            .start_flow(FlowKind::QueryCitizenSerial, SESSION)
            .await
            .unwrap();
        let ch = svc.issue_challenge(&flow.id, SESSION).await.unwrap();
        let input = domain::service::CardStepInput {
            flow_id: flow.id.clone(),
            session: SESSION.into(),
            challenge_id: ch.id,
            signature: cms("moica-operator-1", &ch.tbs),
            national_id: Some(id_of("moica-operator-1")),
            ..Default::default()
        };
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let svc = svc.clone();
                let input = input.clone();
                tokio::spawn(async move { svc.submit_card(input).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 1);
    }
}

#[tokio::test]
async fn r1_3_approval_on_a_friday_before_a_holiday_takes_effect_after_it() {
    for env in envs().await {
        let svc = &env.svc;
        // Friday 2025-10-03 10:00 in Taipei; Monday 10-06 is 中秋節.
        env.clock.set(time::macros::datetime!(2025-10-03 02:00 UTC));
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        card_step(svc, &flow.id, "gca-agency-mismatch", Some(MISMATCH), None)
            .await
            .unwrap();
        let (application, _) = svc
            .file_review(&flow.id, SESSION, "林小華", "0223456789", None)
            .await
            .unwrap();
        let state = svc
            .decide_review(&reviewer(svc).await, application.id, true, "")
            .await
            .unwrap();
        assert!(
            matches!(state, ReviewState::Approved { effective, .. } if effective == date!(2025-10-07)),
            "{state:?}"
        );
        // Late on Monday the holiday (Taipei time) it is still not in effect.
        env.clock.set(time::macros::datetime!(2025-10-06 15:59 UTC));
        let f = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&f.id, SESSION).await.unwrap();
        assert_eq!(
            code_of(card_step(svc, &f.id, "gca-agency-mismatch", Some(MISMATCH), None).await),
            "review_not_yet_effective"
        );
        // Tuesday 00:00 Taipei (Monday 16:00 UTC) it is.
        env.clock.set(time::macros::datetime!(2025-10-06 16:00 UTC));
        let f = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&f.id, SESSION).await.unwrap();
        advanced(
            card_step(svc, &f.id, "gca-agency-mismatch", Some(MISMATCH), None)
                .await
                .unwrap(),
        );
    }
}

#[tokio::test]
async fn spec_4_5_refusals_are_audited_and_the_chain_holds() {
    for env in envs().await {
        let svc = &env.svc;
        let flow = svc
            .start_flow(FlowKind::FirstRegistration, SESSION)
            .await
            .unwrap();
        svc.agree_terms(&flow.id, SESSION).await.unwrap();
        let _ = card_step(svc, &flow.id, "gca-agency-revoked", Some(TAIPEI), None).await;
        let _ = card_step(svc, &flow.id, "gca-agency", Some("Z9999"), None).await;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let report = svc.store().verify_audit().await.unwrap();
        assert_eq!(report.first_broken, None);
        assert_eq!(
            report.events, 3,
            "revoked card, unknown code, the registration: {report:?}"
        );
    }
}

#[tokio::test]
async fn r2_4_a_read_certificate_must_be_a_valid_citizen_card() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        for (card, code) in [
            ("moica-revoked", "cert_revoked"),
            ("moica-expired", "cert_expired"),
            ("gca-agency", "wrong_role"),
        ] {
            let mut form = operator_form("moica-operator-1", &["enroll"]);
            form.read_certificate = Some(pki().card(card).issued.cert_der.clone());
            assert_eq!(
                code_of(svc.add_operator(&grant, &form, None).await),
                code,
                "{card}"
            );
        }
        // A certificate from another hierarchy that claims to be a citizen card.
        let mut spec = pki().card("moica-operator-1").issued.spec.clone();
        spec.serial = vec![0x42, 0x42];
        let fake_ca = testpki::self_signed(&pki().ca(testpki::CaKind::Moica).spec);
        let forged = testpki::issue(&spec, &fake_ca);
        let mut form = operator_form("moica-operator-1", &["enroll"]);
        form.read_certificate = Some(forged.cert_der.clone());
        let e = code_of(svc.add_operator(&grant, &form, None).await);
        assert!(e == "signature_invalid" || e == "cert_untrusted", "{e}");
    }
}

#[tokio::test]
async fn r6_1_reviewer_login_needs_an_active_reviewer_account_for_the_card() {
    for env in envs().await {
        let svc = &env.svc;
        let serial =
            domain::types::cert_serial("serial", &pki().card("moica-reviewer").issued.serial_hex())
                .unwrap();
        let login = |card: &'static str| async move {
            let flow = svc
                .start_flow(FlowKind::ReviewerLogin, SESSION)
                .await
                .unwrap();
            assert_eq!(flow.step, Step::ReviewerCard);
            // No 機關代號 and no 身分證統一編號 on this step.
            card_step(svc, &flow.id, card, None, None).await
        };
        let e = login("moica-reviewer").await.unwrap_err();
        assert_eq!(e.code(), "not_reviewer");
        assert_eq!(e.message_zh(), "此自然人憑證未建立本部審核人員帳號");
        let id = svc
            .store()
            .add_reviewer("李建國", domain::model::Section::Second, &serial)
            .await
            .unwrap();
        match login("moica-reviewer").await.unwrap() {
            StepOutcome::Reviewer(r) => {
                assert_eq!((r.id, r.section), (id, domain::model::Section::Second));
                assert_eq!(r.name, "李建國");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(code_of(login("moica-operator-1").await), "not_reviewer");
        // An organization card is not a citizen card, as on every citizen card step.
        assert!(login("gca-agency").await.is_err());
        svc.store().set_reviewer_active(id, false).await.unwrap();
        assert_eq!(code_of(login("moica-reviewer").await), "not_reviewer");
    }
}

/// A card step waiting on a slow OCSP responder does not hold the async worker: on a runtime
/// with one thread, other requests are served meanwhile, and the step completes once the
/// responder answers.
#[tokio::test(flavor = "current_thread")]
async fn a_card_step_waiting_for_ocsp_does_not_stop_other_requests() {
    let responder = testkit::gate::HeldCheck::new();
    let validator = || std::sync::Arc::new(plain_validator().with_online(responder.clone()));
    let env = envs_with(validator).await.remove(0);
    let svc = &env.svc;
    let flow = svc
        .start_flow(FlowKind::FirstRegistration, SESSION)
        .await
        .unwrap();
    svc.agree_terms(&flow.id, SESSION).await.unwrap();

    responder.hold_next();
    let step = card_step(svc, &flow.id, "gca-agency", Some(TAIPEI), None);
    let meanwhile = async {
        responder.entered().await;
        // Served while the step still waits for the responder.
        let other = svc
            .start_flow(FlowKind::AdminLogin, "session-2")
            .await
            .unwrap();
        let (agency, receipts) = svc.receipts(TAIPEI).await.unwrap();
        assert_eq!(agency.code.as_str(), TAIPEI);
        responder.release();
        (other, receipts)
    };
    let (stepped, (other, receipts)) = tokio::join!(step, meanwhile);
    let flow = advanced(stepped.expect("the step completes once the responder answers"));
    assert_eq!(flow.step, Step::AdminCard);
    assert_eq!(other.kind, FlowKind::AdminLogin);
    assert!(receipts.is_empty());
}
