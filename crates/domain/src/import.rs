//! Agency master data from CSV (`certreg agencies import`): `機關代號,機關名稱,縣市,機關憑證OID`
//! (the header may also be English: `code,name,county,org_identifier`). All or nothing: every
//! error is reported with its line number, and nothing is imported while any remains.

use crate::model::Agency;
use crate::types::{InstitutionCode, OrgIdentifier};
use std::collections::HashSet;

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message_zh: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "第 {} 行：{}", self.line, self.message_zh)
    }
}

const HEADERS: [[&str; 4]; 2] = [
    ["機關代號", "機關名稱", "縣市", "機關憑證OID"],
    ["code", "name", "county", "org_identifier"],
];

/// Parses the whole file; `Err` lists every bad line (at most 100). Fields are RFC 4180 CSV:
/// a name holding a comma or a quote is quoted, its quotes doubled.
pub fn parse_agencies_csv(bytes: &[u8]) -> Result<Vec<Agency>, Vec<LineError>> {
    let err = |line, m: &str| LineError {
        line,
        message_zh: m.to_string(),
    };
    let text = crate::text::decode_utf8_or_big5(bytes)
        .map_err(|line| vec![err(line, "檔案編碼錯誤，須為 UTF-8 或 Big5")])?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    // Blank lines (the reader skips empty ones; these are the ones holding only spaces) are
    // not records.
    let mut records = reader
        .records()
        .map(|r| {
            let line = |p: Option<&csv::Position>| p.map_or(1, |p| p.line() as usize);
            match r {
                Ok(record) => (line(record.position()), Ok(record)),
                Err(e) => (line(e.position()), Err(e)),
            }
        })
        .filter(|(_, r)| {
            r.as_ref()
                .map_or(true, |rec| rec.iter().any(|f| !f.is_empty()))
        });
    let header = match records.next() {
        None => return Err(vec![err(1, "檔案是空的")]),
        Some((_, Err(_))) => None,
        Some((_, Ok(h))) => Some(h),
    };
    let header_ok = header.is_some_and(|h| {
        let h: Vec<String> = h.iter().map(|f| f.replace(' ', "")).collect();
        HEADERS
            .iter()
            .any(|expected| h.iter().map(String::as_str).eq(expected.iter().copied()))
    });
    if !header_ok {
        return Err(vec![err(
            1,
            "標題列應為：機關代號,機關名稱,縣市,機關憑證OID",
        )]);
    }
    let mut agencies = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (n, record) in records {
        if errors.len() >= 100 {
            break;
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(err(n, &format!("CSV 格式錯誤：{e}")));
                continue;
            }
        };
        // A quote left open swallows the lines after it into one field.
        if record.iter().any(|f| f.contains(['\n', '\r'])) {
            errors.push(err(n, "引號未成對（欄位不可跨行）"));
            continue;
        }
        let fields: Vec<&str> = record.iter().collect();
        if fields.len() != 4 {
            errors.push(err(n, &format!("應有 4 個欄位，實有 {} 個", fields.len())));
            continue;
        }
        let code = match InstitutionCode::parse(fields[0]) {
            Ok(c) => c,
            Err(e) => {
                errors.push(err(n, &e.message_zh()));
                continue;
            }
        };
        if fields[1].is_empty() || fields[1].chars().count() > 100 {
            errors.push(err(n, "機關名稱不可空白或超過 100 字"));
            continue;
        }
        if fields[2].is_empty() || fields[2].chars().count() > 20 {
            errors.push(err(n, "縣市不可空白或超過 20 字"));
            continue;
        }
        let org_identifier = if fields[3].is_empty() {
            None
        } else {
            match OrgIdentifier::parse(fields[3]) {
                Ok(o) => Some(o),
                Err(e) => {
                    errors.push(err(n, &e.message_zh()));
                    continue;
                }
            }
        };
        if !seen.insert(code.clone()) {
            errors.push(err(n, &format!("機關代號 {code} 重複")));
            continue;
        }
        agencies.push(Agency {
            code,
            name: fields[1].to_string(),
            county: fields[2].to_string(),
            org_identifier,
        });
    }
    if errors.is_empty() {
        Ok(agencies)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_r6_3_master_data_csv() {
        let csv = "\u{feff}機關代號,機關名稱,縣市,機關憑證OID\r\nA0001,臺北市政府人事處,臺北市,2.16.886.101.20003.20065.20020\r\nC0001,測試股份有限公司,臺中市,\r\n\r\n";
        let a = parse_agencies_csv(csv.as_bytes()).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a[0].org_identifier.as_ref().unwrap().as_str(),
            "2.16.886.101.20003.20065.20020"
        );
        assert_eq!(a[1].org_identifier, None);
        let (big5, _, _) = encoding_rs::BIG5.encode(csv.trim_start_matches('\u{feff}'));
        assert_eq!(parse_agencies_csv(&big5).unwrap(), a);
    }

    #[test]
    fn spec_r6_3_errors_name_every_line_and_nothing_is_taken() {
        let csv = "code,name,county,org_identifier\nA0001,甲,臺北市,1.2.3\nbad!,乙,臺北市,\nA0001,丙,臺北市,\nA0003,丁,臺北市,x.y\nA0004,戊\n";
        let errors = parse_agencies_csv(csv.as_bytes()).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6]);
        assert!(errors[1].to_string().contains("重複"));
        assert_eq!(parse_agencies_csv(b"").unwrap_err()[0].line, 1);
        assert_eq!(parse_agencies_csv(b"a,b\n").unwrap_err()[0].line, 1);
        assert!(parse_agencies_csv(&[0xff, 0xfe, 0x00]).is_err());
    }

    #[test]
    fn quoted_names_keep_their_commas_and_quotes_in_utf8_and_big5() {
        let csv = "機關代號,機關名稱,縣市,機關憑證OID\n\
                   A0001,\"臺北市政府人事處,第一科\",臺北市,\n\
                   A0002,\"「測試」\"\"學校\"\"\",新竹縣,2.16.886.101.20003.20065.1\n   \n";
        let a = parse_agencies_csv(csv.as_bytes()).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].name, "臺北市政府人事處,第一科");
        assert_eq!(a[0].county, "臺北市");
        assert_eq!(a[1].name, "「測試」\"學校\"");
        let (big5, _, unmappable) = encoding_rs::BIG5.encode(csv);
        assert!(!unmappable);
        assert_eq!(parse_agencies_csv(&big5).unwrap(), a);
    }

    #[test]
    fn an_open_quote_is_refused_at_its_line() {
        let csv = "code,name,county,org_identifier\nA0001,甲,臺北市,\nA0002,\"乙,臺北市,\nA0003,丙,臺北市,\n";
        let errors = parse_agencies_csv(csv.as_bytes()).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 3);
        assert!(errors[0].message_zh.contains("引號"), "{errors:?}");
        // A quote inside an unquoted field is a character of it (RFC 4180 readers agree), and
        // the lines after it are their own records.
        let csv = "code,name,county,org_identifier\nA0001,甲\"乙,臺北市,\nA0002,丙,臺北市,\n";
        let a = parse_agencies_csv(csv.as_bytes()).unwrap();
        assert_eq!((a[0].name.as_str(), a.len()), ("甲\"乙", 2));
    }
}
