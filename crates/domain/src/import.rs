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

/// Parses the whole file; `Err` lists every bad line (at most 100).
pub fn parse_agencies_csv(bytes: &[u8]) -> Result<Vec<Agency>, Vec<LineError>> {
    let err = |line, m: &str| LineError {
        line,
        message_zh: m.to_string(),
    };
    let text = crate::text::decode_utf8_or_big5(bytes)
        .map_err(|line| vec![err(line, "檔案編碼錯誤，須為 UTF-8 或 Big5")])?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(vec![err(1, "檔案是空的")]);
    };
    let header: Vec<String> = header
        .split(',')
        .map(|h| h.trim().replace(' ', ""))
        .collect();
    if !HEADERS
        .iter()
        .any(|h| header.iter().map(String::as_str).eq(h.iter().copied()))
    {
        return Err(vec![err(
            1,
            "標題列應為：機關代號,機關名稱,縣市,機關憑證OID",
        )]);
    }
    let mut agencies = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (n, raw) in lines {
        let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
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
        if errors.len() >= 100 {
            break;
        }
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
}
