//! Expiry and revocation notices (`domain::notices`) over the real store: who is told what, once
//! a day, and what happens to a notice that could not be sent.

use crate::helpers::*;
use domain::notices::{Notice, NoticeSender, SendError, notify_once};
use std::sync::Mutex;
use time::Duration;

/// Keeps what it is given; refuses everything while `down`.
#[derive(Default)]
struct Outbox {
    sent: Mutex<Vec<Notice>>,
    down: bool,
    disabled: bool,
}

impl Outbox {
    fn down() -> Self {
        Self {
            down: true,
            ..Self::default()
        }
    }

    fn take(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl NoticeSender for Outbox {
    fn is_enabled(&self) -> bool {
        !self.disabled
    }

    async fn send(&self, notice: &Notice) -> Result<(), SendError> {
        if self.down {
            return Err("the mail server is down".into());
        }
        self.sent.lock().unwrap().push(notice.clone());
        Ok(())
    }
}

#[tokio::test]
async fn expiring_registration_certificates_are_told_to_the_administrator_once_a_day() {
    for env in envs().await {
        let svc = &env.svc;
        let registration = register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        let store = svc.store();
        let validator = plain_validator();
        let outbox = Outbox::default();

        // Two years of validity left: nothing to say.
        assert_eq!(
            notify_once(store, &validator, NOW, &outbox).await.unwrap(),
            0
        );
        assert!(outbox.take().is_empty());

        // Thirty days before the administrator's card expires. Nothing goes out while the
        // sender is disabled or down, and nothing is marked sent.
        let not_after = registration.admin_card.cert.not_after;
        let later = not_after - Duration::days(30);
        let disabled = Outbox {
            disabled: true,
            ..Outbox::default()
        };
        assert_eq!(
            notify_once(store, &validator, later, &disabled)
                .await
                .unwrap(),
            0
        );
        assert!(disabled.take().is_empty());
        assert_eq!(
            notify_once(store, &validator, later, &Outbox::down())
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            notify_once(store, &validator, later, &outbox)
                .await
                .unwrap(),
            1
        );
        let sent = outbox.take();
        assert_eq!(sent.len(), 1);
        let notice = &sent[0];
        assert_eq!(notice.code.as_str(), TAIPEI);
        assert_eq!(notice.to, "admin@example.gov.tw");
        assert_eq!(
            notice.subject,
            format!("憑證到期／廢止通知（機關代號 {TAIPEI}）")
        );
        let date = domain::expiry::taipei_date(not_after);
        assert!(
            notice
                .body
                .starts_with(&format!("{} 您好：", registration.admin.name.as_str())),
            "{}",
            notice.body
        );
        assert!(
            notice.body.contains(&format!(
                "・授權管理者自然人憑證（憑證序號 {}）：憑證將於 {date} 到期\n",
                registration.admin_card.cert.serial.as_str()
            )),
            "{}",
            notice.body
        );
        // The organization certificate of the test PKI expires the same day: one notice says
        // both.
        assert!(
            notice.body.contains(&format!(
                "・機關憑證（憑證序號 {}）：憑證將於 {} 到期\n",
                registration.org.cert.serial.as_str(),
                domain::expiry::taipei_date(registration.org.cert.not_after)
            )),
            "{}",
            notice.body
        );

        // Once a day: a second walk the same day (a later hour, Taipei time) says nothing more.
        assert_eq!(
            notify_once(store, &validator, later + Duration::hours(3), &outbox)
                .await
                .unwrap(),
            0
        );
        assert!(outbox.take().is_empty());
        // The next day it is said again.
        assert_eq!(
            notify_once(store, &validator, later + Duration::days(1), &outbox)
                .await
                .unwrap(),
            1
        );
        assert_eq!(outbox.take().len(), 1);
    }
}

#[tokio::test]
async fn a_revoked_operator_certificate_is_told_to_its_agency_only() {
    for env in envs().await {
        let svc = &env.svc;
        register(svc, TAIPEI, "gca-agency", "moica-admin").await;
        register(svc, SCHOOL, "xca-school", "moica-admin2").await;
        let grant = admin_login(svc, TAIPEI, "gca-agency", "moica-admin")
            .await
            .unwrap();
        let revoked = pki().card("moica-revoked");
        let form = domain::service::OperatorForm {
            read_certificate: None,
            serial: revoked.issued.serial_hex(),
            name: revoked.holder.clone(),
            national_id: id_of("moica-revoked"),
            functions: vec!["enroll".into()],
            ..Default::default()
        };
        svc.add_operator(&grant, &form, None).await.unwrap();
        let outbox = Outbox::default();
        assert_eq!(
            notify_once(svc.store(), &plain_validator(), NOW, &outbox)
                .await
                .unwrap(),
            1
        );
        let sent = outbox.take();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].code.as_str(), TAIPEI);
        assert!(
            sent[0].body.contains(&format!(
                "・經辦人自然人憑證（憑證序號 {}）：憑證已廢止\n",
                revoked.issued.serial_hex()
            )),
            "{}",
            sent[0].body
        );
    }
}
