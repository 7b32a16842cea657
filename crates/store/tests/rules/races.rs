//! Races replayed in one exact order: the first request has made all its checks and reached
//! the store, the rival runs to the end, then the first commits. What the first checked must be
//! checked again where it commits, on both databases.

use crate::helpers::*;
use domain::flow::FlowKind;
use domain::service::{OperatorForm, StepOutcome};
use domain::store::{RegistrationWrite, ReviewWrite, Store as _};
use domain::types::InstitutionCode;

fn operator_form(card: &str) -> OperatorForm {
    OperatorForm {
        read_certificate: None,
        serial: pki().card(card).issued.serial_hex(),
        name: pki().card(card).holder.clone(),
        national_id: id_of(card),
        functions: vec!["enroll".into()],
        ..Default::default()
    }
}

/// A replacement of the organization card of TAIPEI, run to the end.
async fn replace_org(svc: &Svc, session: &str) -> domain::Result<domain::model::Registration> {
    let flow = svc.start_flow(FlowKind::ReplaceOrg, session).await?;
    svc.agree_terms(&flow.id, session).await?;
    replace_steps(svc, &flow.id, session).await?;
    svc.confirm(&flow.id, session, &contact(), None).await
}

async fn replace_steps(svc: &Svc, flow: &str, session: &str) -> domain::Result<()> {
    let step = |card: &'static str, code: Option<&'static str>, id: Option<String>| {
        let flow = flow.to_string();
        let session = session.to_string();
        async move {
            let ch = svc.issue_challenge(&flow, &session).await?;
            svc.submit_card(domain::service::CardStepInput {
                flow_id: flow.clone(),
                session: session.clone(),
                challenge_id: ch.id,
                signature: cms(card, &ch.tbs),
                certificate: None,
                institution_code: code.map(Into::into),
                national_id: id,
                client: None,
                login_session: None,
            })
            .await
        }
    };
    advanced(step("gca-agency-renewed", Some(TAIPEI), None).await?);
    advanced(step("moica-admin", None, Some(id_of("moica-admin"))).await?);
    Ok(())
}

#[tokio::test]
async fn an_operator_add_checked_before_a_replacement_commits_after_it_is_refused() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        let held = svc.store().hold(|c| c.operator.is_some());
        let add = {
            let (svc, grant) = (svc.clone(), grant.clone());
            tokio::spawn(async move {
                svc.add_operator(&grant, &operator_form("moica-operator-1"), None)
                    .await
            })
        };
        held.arrived().await;
        replace_org(svc, "session-2").await.unwrap();
        held.release().await;
        let e = add.await.unwrap().unwrap_err();
        assert_eq!(e.code(), "registration_changed");
        let code = InstitutionCode::parse(TAIPEI).unwrap();
        assert!(svc.store().operators(&code).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn of_two_replacements_checked_against_one_version_the_later_commit_is_refused() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let first = svc.start_flow(FlowKind::ReplaceOrg, SESSION).await.unwrap();
        svc.agree_terms(&first.id, SESSION).await.unwrap();
        replace_steps(svc, &first.id, SESSION).await.unwrap();
        let held = svc
            .store()
            .hold(|c| matches!(c.registration, Some(RegistrationWrite::Replace { .. })));
        let confirm = {
            let (svc, id) = (svc.clone(), first.id.clone());
            tokio::spawn(async move { svc.confirm(&id, SESSION, &contact(), None).await })
        };
        held.arrived().await;
        let won = replace_org(svc, "session-2").await.unwrap();
        held.release().await;
        // Its own error: not 「已確認」, which would say this flow's change took effect.
        let e = confirm.await.unwrap().unwrap_err();
        assert_eq!(e.code(), "registration_changed");
        let code = InstitutionCode::parse(TAIPEI).unwrap();
        assert_eq!(svc.store().registration(&code).await.unwrap(), Some(won));
        assert_eq!(svc.store().cert_history(&code).await.unwrap().len(), 1);
        assert_eq!(svc.store().receipts(&code).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn two_flows_of_one_card_filing_a_review_at_once_leave_one_application() {
    for env in envs().await {
        let svc = &env.svc;
        let mut flows = Vec::new();
        for session in ["session-a", "session-b"] {
            let flow = svc
                .start_flow(FlowKind::FirstRegistration, session)
                .await
                .unwrap();
            svc.agree_terms(&flow.id, session).await.unwrap();
            let ch = svc.issue_challenge(&flow.id, session).await.unwrap();
            let outcome = svc
                .submit_card(domain::service::CardStepInput {
                    flow_id: flow.id.clone(),
                    session: session.into(),
                    challenge_id: ch.id,
                    signature: cms("gca-agency-mismatch", &ch.tbs),
                    certificate: None,
                    institution_code: Some(MISMATCH.into()),
                    national_id: None,
                    client: None,
                    login_session: None,
                })
                .await
                .unwrap();
            assert!(
                matches!(outcome, StepOutcome::ReviewNeeded(_)),
                "{outcome:?}"
            );
            flows.push((flow.id, session));
        }
        let held = svc
            .store()
            .hold(|c| matches!(c.review, Some(ReviewWrite::Insert(_))));
        let first = {
            let (svc, (id, session)) = (svc.clone(), flows[0].clone());
            tokio::spawn(async move {
                svc.file_review(&id, session, "林小華", "(02)2345-6789", None)
                    .await
            })
        };
        held.arrived().await;
        let (id, session) = &flows[1];
        svc.file_review(id, session, "王大明", "(02)2345-6789", None)
            .await
            .unwrap();
        held.release().await;
        let e = first.await.unwrap().unwrap_err();
        assert_eq!(e.code(), "review_pending");
        let code = InstitutionCode::parse(MISMATCH).unwrap();
        assert_eq!(svc.store().reviews(&code).await.unwrap().len(), 1);
        assert_eq!(svc.store().receipts(&code).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_reviewer_disabled_while_deciding_records_nothing() {
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
        let (application, _) = svc
            .file_review(&flow.id, SESSION, "林小華", "(02)2345-6789", None)
            .await
            .unwrap();
        let reviewer = crate::reviewer(svc).await;
        let held = svc
            .store()
            .hold(|c| matches!(c.review, Some(ReviewWrite::Decide { .. })));
        let decide = {
            let (svc, reviewer) = (svc.clone(), reviewer.clone());
            tokio::spawn(
                async move { svc.decide_review(&reviewer, application.id, true, "").await },
            )
        };
        held.arrived().await;
        svc.store()
            .set_reviewer_active(reviewer.id, false)
            .await
            .unwrap();
        held.release().await;
        assert_eq!(decide.await.unwrap().unwrap_err().code(), "not_reviewer");
        let review = svc.store().review(application.id).await.unwrap().unwrap();
        assert_eq!(review.state, domain::model::ReviewState::Pending);
    }
}
