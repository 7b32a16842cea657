//! Object identifiers of the Taiwan GPKI certificate profile and of the standards certreg reads.

use const_oid::ObjectIdentifier as Oid;

/// subjectDirectoryAttributes (RFC 5280 §4.2.1.8): where GPKI puts identity data.
pub const SUBJECT_DIRECTORY_ATTRIBUTES: Oid = Oid::new_unwrap("2.5.29.9");
/// Subject type (an OID value, see the `SUBJECT_TYPE_*` constants).
pub const GPKI_SUBJECT_TYPE: Oid = Oid::new_unwrap("2.16.886.1.100.2.1");
/// Card kind: `primary` 正卡, `secondary` 附卡, `mobile` 行動自然人憑證.
pub const GPKI_CARD_KIND: Oid = Oid::new_unwrap("2.16.886.1.100.2.2");
/// Last four characters of the holder's national ID (MOICA).
pub const GPKI_ID_LAST4: Oid = Oid::new_unwrap("2.16.886.1.100.2.51");
/// 統一編號 (MOEACA company certificates).
pub const GPKI_UNIFORM_NUMBER: Oid = Oid::new_unwrap("2.16.886.1.100.2.101");
/// Organization identifier as an OID (GCA / XCA), shown to users as 機關憑證 OID.
pub const GPKI_ORG_OID: Oid = Oid::new_unwrap("2.16.886.1.100.2.102");
/// Card number attribute the HiPKI agent adds to CMS signed attributes.
pub const GPKI_CARD_NUMBER: Oid = Oid::new_unwrap("2.16.886.1.100.2.204");

/// Subject types.
pub const SUBJECT_TYPE_CITIZEN: Oid = Oid::new_unwrap("2.16.886.1.100.3.1.1");
pub const SUBJECT_TYPE_GOV_AGENCY: Oid = Oid::new_unwrap("2.16.886.1.100.3.2.1.1");
pub const SUBJECT_TYPE_GOV_UNIT: Oid = Oid::new_unwrap("2.16.886.1.100.3.2.1.2");
pub const SUBJECT_TYPE_COMPANY: Oid = Oid::new_unwrap("2.16.886.1.100.3.2.2.1.1");
pub const SUBJECT_TYPE_XCA_ORG: Oid = Oid::new_unwrap("2.16.886.1.100.3.2.11");
pub const SUBJECT_TYPE_MEDICAL: Oid = Oid::new_unwrap("2.16.886.1.100.3.2.21");
/// Every subject type under this arc is an organization of some kind.
pub const SUBJECT_TYPE_ORG_ARC: Oid = Oid::new_unwrap("2.16.886.1.100.3.2");

/// GPKI certificate policies (real CAs and test CAs).
pub const POLICY_GPKI_LEVEL3: Oid = Oid::new_unwrap("2.16.886.101.0.3.3");
pub const POLICY_GPKI_TEST: Oid = Oid::new_unwrap("2.16.886.101.0.3.0");

/// Name attributes.
pub const AT_COUNTRY: Oid = Oid::new_unwrap("2.5.4.6");
pub const AT_ORGANIZATION: Oid = Oid::new_unwrap("2.5.4.10");
pub const AT_ORG_UNIT: Oid = Oid::new_unwrap("2.5.4.11");
pub const AT_COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");
pub const AT_SERIAL_NUMBER: Oid = Oid::new_unwrap("2.5.4.5");

/// Extensions.
pub const EXT_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
pub const EXT_BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
pub const EXT_CERT_POLICIES: Oid = Oid::new_unwrap("2.5.29.32");
pub const EXT_CRL_DISTRIBUTION_POINTS: Oid = Oid::new_unwrap("2.5.29.31");
pub const EXT_AUTHORITY_INFO_ACCESS: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.1.1");
pub const EXT_EXTENDED_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");
pub const EXT_SUBJECT_KEY_ID: Oid = Oid::new_unwrap("2.5.29.14");
pub const EXT_AUTHORITY_KEY_ID: Oid = Oid::new_unwrap("2.5.29.35");
pub const EXT_CRL_NUMBER: Oid = Oid::new_unwrap("2.5.29.20");
pub const AD_OCSP: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1");
pub const KP_OCSP_SIGNING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.9");
pub const OCSP_BASIC: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.1");
pub const OCSP_NONCE: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.2");

/// CMS content types and attributes.
pub const CMS_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
pub const CMS_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
pub const ATTR_CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
pub const ATTR_MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
pub const ATTR_SIGNING_TIME: Oid = Oid::new_unwrap("1.2.840.113549.1.9.5");
/// The random nonce attribute of the HiPKI agent (PKCS#9 randomNonce).
pub const ATTR_RANDOM_NONCE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.25.3");

/// Algorithms.
pub const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
pub const SHA1_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
pub const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
pub const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
pub const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
pub const ECDSA_WITH_SHA1: Oid = Oid::new_unwrap("1.2.840.10045.4.1");
pub const SECP256R1: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
