//! The agencies every suite seeds: one per test card that registers, in both sections of the
//! contact directory (臺北市 and 新北市: 承保第一科, 分機 5312; 臺中市: 承保第二科, 分機 5353).

use domain::model::Agency;
use domain::types::{InstitutionCode, OrgIdentifier};
use testpki::{GCA_AGENCY_OID, HCA_HOSPITAL_OID, XCA_SCHOOL_OID};

/// 臺北市 (承保第一科): its identifier on file is `gca-agency`'s (and its renewal's).
pub const TAIPEI: &str = "A0001";
/// 新北市 (承保第一科): its identifier on file is not what `gca-agency-mismatch` carries, so
/// that card's first registration goes to review.
pub const MISMATCH: &str = "A0002";
/// The identifier on file of [`MISMATCH`].
pub const MISMATCH_OID: &str = "2.16.886.101.20003.20065.20099";
/// 臺北市 (承保第一科): `xca-school`'s (an XCA identifier, not under 2.16.886.101).
pub const SCHOOL: &str = "A0003";
/// 臺中市 (承保第二科): no identifier on file, so `moeaca-company` goes to review.
pub const COMPANY: &str = "A0004";
/// 臺中市 (承保第二科): `hca-hospital`'s.
pub const HOSPITAL: &str = "A0005";

/// The seeded agencies, in code order.
pub fn agencies() -> Vec<Agency> {
    let a = |code: &str, name: &str, county: &str, oid: Option<&str>| Agency {
        code: InstitutionCode::parse(code).expect("agency code"),
        name: name.into(),
        county: county.into(),
        org_identifier: oid.map(|o| OrgIdentifier::parse(o).expect("identifier")),
    };
    vec![
        a(TAIPEI, "臺北市政府人事處", "臺北市", Some(GCA_AGENCY_OID)),
        a(MISMATCH, "新北市政府主計處", "新北市", Some(MISMATCH_OID)),
        a(
            SCHOOL,
            "臺北市立測試國民小學",
            "臺北市",
            Some(XCA_SCHOOL_OID),
        ),
        a(COMPANY, "測試科技股份有限公司", "臺中市", None),
        a(
            HOSPITAL,
            "臺中市立測試醫院",
            "臺中市",
            Some(HCA_HOSPITAL_OID),
        ),
    ]
}

/// The seeded agency of `code`.
pub fn agency(code: &str) -> Agency {
    agencies()
        .into_iter()
        .find(|a| a.code.as_str() == code)
        .unwrap_or_else(|| panic!("{code} is not a seeded agency"))
}

#[cfg(test)]
mod tests {
    use domain::model::{ContactDirectory, Section};

    #[test]
    fn the_seeded_agencies_are_in_the_sections_their_names_say() {
        let contacts = ContactDirectory::default();
        let section = |code| {
            contacts
                .section_for(&super::agency(code).county)
                .map(|s| s.section)
        };
        assert_eq!(section(super::TAIPEI), Some(Section::First));
        assert_eq!(section(super::MISMATCH), Some(Section::First));
        assert_eq!(section(super::SCHOOL), Some(Section::First));
        assert_eq!(section(super::COMPANY), Some(Section::Second));
        assert_eq!(section(super::HOSPITAL), Some(Section::Second));
        assert_ne!(super::MISMATCH_OID, testpki::GCA_MISMATCH_OID);
    }
}
