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
    // Lines are numbered as in a text editor; blank ones hold no record. A record is one line
    // (a field may not span lines), so a quote left open is refused at its own line and the
    // lines after it are still read.
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(vec![err(1, "檔案是空的")]);
    };
    let header_ok = read_record(header).is_ok_and(|h| {
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
    for (n, line) in lines {
        if errors.len() >= 100 {
            break;
        }
        let record = match read_record(line) {
            Ok(r) => r,
            Err(m) => {
                errors.push(err(n, &m));
                continue;
            }
        };
        let fields: Vec<&str> = record.iter().map(String::as_str).collect();
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

/// The fields of one line, RFC 4180 quoting undone and each field trimmed.
fn read_record(line: &str) -> Result<Vec<String>, String> {
    // `lines()` took the line's own terminator off; the one added here is the only one the
    // reader sees, so a lone '\r' inside the line stays a character of its field as it is.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(std::io::Read::chain(line.as_bytes(), &b"\n"[..]));
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        // An open quote runs to the end of the input and takes the terminator into its field.
        Ok(_) if record.iter().any(|f| f.contains('\n')) => {
            Err("引號未成對（欄位不可跨行）".to_string())
        }
        Ok(_) => Ok(record.iter().map(|f| f.trim().to_string()).collect()),
        Err(e) => Err(format!("CSV 格式錯誤：{e}")),
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

    #[test]
    fn big5_quoted_field_with_a_backslash_trail_byte() {
        // 許 is 0xB3 0x5C in Big5: its trail byte is '\\', which must stay a part of the name.
        let csv = "code,name,county,org_identifier\r\nA0001,\"許厝國小,分校\",雲林縣,\r\n";
        let (big5, _, unmappable) = encoding_rs::BIG5.encode(csv);
        assert!(!unmappable);
        assert!(big5.windows(2).any(|w| w == [0xB3, 0x5C]));
        let a = parse_agencies_csv(&big5).unwrap();
        assert_eq!(
            (a[0].name.as_str(), a[0].county.as_str()),
            ("許厝國小,分校", "雲林縣")
        );
    }

    #[test]
    fn error_lines_count_blank_lines_and_crlf() {
        for nl in ["\n", "\r\n"] {
            let csv = [
                "",
                "code,name,county,org_identifier",
                "A0001,甲,臺北市,",
                "",
                "   ",
                "A0002,\"乙,臺北市,",
                "",
                ",,,",
                "\"\"",
                "A0003,丙,臺北市,",
                "bad!,丁,臺北市,",
                "",
            ]
            .join(nl);
            let errors = parse_agencies_csv(csv.as_bytes()).unwrap_err();
            let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
            assert_eq!(lines, vec![6, 8, 9, 11], "{nl:?} {errors:?}");
            assert!(errors[0].message_zh.contains("引號"), "{errors:?}");
            assert!(errors[2].message_zh.contains("實有 1 個"), "{errors:?}");
        }
    }

    #[test]
    fn at_most_100_errors() {
        let mut csv = String::from("code,name,county,org_identifier\n");
        for _ in 0..150 {
            csv.push_str("bad!,甲,臺北市,\n");
        }
        let errors = parse_agencies_csv(csv.as_bytes()).unwrap_err();
        assert_eq!((errors.len(), errors[99].line), (100, 101));
    }
}
