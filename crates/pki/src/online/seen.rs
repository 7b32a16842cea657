//! The certificates the online check has judged, by issuer and serial: what it needs to ask
//! about one again (its DER and its issuer) and whether its sources last said it is revoked.
//! Sessions rest on cards named by issuer and serial only; this is how the session sweep and
//! the checks of every use of a grant learn what OCSP or a distribution point says about them.

use crate::facts::ParsedCert;
use crate::serial::CertSerial;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use time::OffsetDateTime;

/// Upper bound of certificates kept (about 2 KiB each, the issuers shared).
pub const CARDS_KEPT: usize = 10_000;

/// Upper bound of certificates asked about for one serial whose issuer is not known.
const SAME_SERIAL_ASKED: usize = 4;

/// One certificate the online check judged.
struct Seen {
    der: Arc<[u8]>,
    issuer: Arc<ParsedCert>,
    /// When its sources last gave a verdict and it was "revoked": the revocation time.
    revoked: Option<OffsetDateTime>,
    /// When it was last judged, in the order of judgements (the oldest goes first when full).
    used: u64,
}

/// A certificate to ask about again: its DER and its issuer.
pub(crate) struct Known {
    pub der: Arc<[u8]>,
    pub issuer: Arc<ParsedCert>,
    pub revoked: Option<OffsetDateTime>,
}

#[derive(Default)]
struct Table {
    by_cert: HashMap<(String, CertSerial), Seen>,
    clock: u64,
}

/// The bounded table of judged certificates.
pub(crate) struct SeenCards {
    table: Mutex<Table>,
    capacity: usize,
}

impl SeenCards {
    pub fn new(capacity: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change leaves the table consistent, so a panic elsewhere does not poison it.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().by_cert.len()
    }

    /// Records that `cert`, issued by `issuer`, was judged: `verdict` is `Some(revoked)` when
    /// its sources answered (`revoked`: the revocation time, `None` for not revoked) and `None`
    /// when none could, which leaves what was learned before as it is.
    pub fn note(
        &self,
        cert: &ParsedCert,
        issuer: &Arc<ParsedCert>,
        verdict: Option<Option<OffsetDateTime>>,
    ) {
        let key = (cert.facts.issuer.clone(), cert.facts.serial.clone());
        let mut table = self.lock();
        table.clock += 1;
        let used = table.clock;
        if let Some(seen) = table.by_cert.get_mut(&key)
            && *seen.der == *cert.der
        {
            seen.used = used;
            seen.issuer = issuer.clone();
            if let Some(revoked) = verdict {
                seen.revoked = revoked;
            }
            return;
        }
        if table.by_cert.len() >= self.capacity && !table.by_cert.contains_key(&key) {
            // The certificate judged longest ago goes.
            if let Some(oldest) = table
                .by_cert
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            {
                table.by_cert.remove(&oldest);
            }
        }
        table.by_cert.insert(
            key,
            Seen {
                der: Arc::from(cert.der.as_slice()),
                issuer: issuer.clone(),
                revoked: verdict.flatten(),
                used,
            },
        );
    }

    /// The certificates judged with this serial, of `issuer` (a DN as the certificate facts
    /// write it) or, for `None`, of any issuer (at most a few).
    pub fn find(&self, issuer: Option<&str>, serial: &CertSerial) -> Vec<Known> {
        let table = self.lock();
        let known = |s: &Seen| Known {
            der: s.der.clone(),
            issuer: s.issuer.clone(),
            revoked: s.revoked,
        };
        match issuer {
            Some(i) => table
                .by_cert
                .get(&(i.to_string(), serial.clone()))
                .map(known)
                .into_iter()
                .collect(),
            None => table
                .by_cert
                .iter()
                .filter(|((_, s), _)| s == serial)
                .map(|(_, s)| known(s))
                .take(SAME_SERIAL_ASKED)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// Three MOICA cards of the test PKI, parsed here, and their issuer.
    fn cards() -> (Vec<ParsedCert>, Arc<ParsedCert>) {
        let pki = testpki::TestPki::generate(testpki::TestPkiOptions::new(datetime!(
            2026-06-01 00:00 UTC
        )))
        .unwrap();
        let parse = |der: &[u8]| ParsedCert::from_der(der.to_vec()).unwrap();
        let cards = ["moica-admin", "moica-operator-1", "moica-operator-2"]
            .map(|name| parse(&pki.card(name).issued.cert_der))
            .into();
        (
            cards,
            Arc::new(parse(&pki.ca(testpki::CaKind::Moica).cert_der)),
        )
    }

    #[test]
    fn at_most_capacity_certificates_are_kept_the_longest_unjudged_going_first() {
        let (cards, issuer) = cards();
        let at = datetime!(2026-05-01 00:00 UTC);
        let seen = SeenCards::new(2);
        let find = |c: &ParsedCert| seen.find(Some(&c.facts.issuer), &c.facts.serial);
        seen.note(&cards[0], &issuer, Some(Some(at)));
        seen.note(&cards[1], &issuer, Some(None));
        // Judged again without an answer: what was learned stays, and it is now the newest.
        seen.note(&cards[0], &issuer, None);
        seen.note(&cards[2], &issuer, None);
        assert_eq!(seen.len(), 2);
        assert!(find(&cards[1]).is_empty());
        assert_eq!(find(&cards[0])[0].revoked, Some(at));
        assert_eq!(find(&cards[2])[0].revoked, None);
        assert_eq!(*find(&cards[2])[0].der, *cards[2].der);
        // By serial alone, and not under another issuer.
        assert_eq!(seen.find(None, &cards[0].facts.serial).len(), 1);
        assert!(
            seen.find(Some("CN=other"), &cards[0].facts.serial)
                .is_empty()
        );
        // A later answer replaces an earlier one.
        seen.note(&cards[0], &issuer, Some(None));
        assert_eq!(find(&cards[0])[0].revoked, None);
    }
}
