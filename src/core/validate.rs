//! Input checks shared by every operation.

use serde_json::Value;

use crate::error::{AppError, AppResult};

pub const MAX_ID_CHARS: usize = 128;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
pub const MAX_JSON_BYTES: usize = 16 * 1024;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 50;
pub const MAX_ATTACHMENTS: usize = 20;

pub const PLATFORMS: &[&str] = &["websocket", "telegram", "discord", "x", "whatsapp"];
pub const PARTICIPANT_TYPES: &[&str] = &["user", "agent", "system"];
pub const ROLES: &[&str] = &["owner", "member"];

/// For list fields clients send as `null` when empty (seed 000: `participants?: string[] | null`).
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// An optional integer that JSON Schema would call one: `3` and `3.0` alike (JavaScript
/// clients may send either); `3.5`, strings and out-of-range values are refused.
pub fn whole_number<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::{Deserialize, de::Error};
    let value = Option::<Value>::deserialize(deserializer)?;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= -9.0e15 && *f <= 9.0e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom("must be an integer within ±9e15")),
        Some(other) => Err(D::Error::custom(format!(
            "invalid type: {}, expected an integer",
            match other {
                Value::String(_) => "string",
                Value::Bool(_) => "boolean",
                Value::Array(_) => "array",
                _ => "object",
            }
        ))),
    }
}

/// Deepest nesting accepted in client JSON (objects and arrays).
pub const MAX_JSON_DEPTH: usize = 32;

/// Text Postgres cannot store: U+0000 is refused everywhere, before it reaches a query.
pub fn no_nul(field: &str, value: &str) -> AppResult<()> {
    if value.contains('\0') {
        return Err(AppError::invalid_field(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    Ok(())
}

/// Every client JSON document (REST bodies, socket payloads, `/ws` frames) passes here
/// before it is read: no NUL in any string or key, bounded nesting. Numbers are checked on
/// the raw text by [`exact_numbers`], where the transport has it; a double stored as
/// `jsonb` decimal parses back to the same double (serde_json's `float_roundtrip`).
pub fn untrusted_json(value: &Value) -> AppResult<()> {
    fn walk(v: &Value, path: &mut String, depth: usize) -> AppResult<()> {
        if depth > MAX_JSON_DEPTH {
            return Err(AppError::invalid_field(
                if path.is_empty() { "body" } else { path },
                format!("nests deeper than {MAX_JSON_DEPTH} levels"),
            ));
        }
        match v {
            Value::String(s) => no_nul(if path.is_empty() { "body" } else { path }, s),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path, depth + 1)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    if k.contains('\0') {
                        path.push_str(&k.replace('\0', "\\u0000"));
                        return Err(AppError::invalid_field(
                            path,
                            "keys must not contain the NUL character (U+0000)",
                        ));
                    }
                    path.push_str(k);
                    walk(item, path, depth + 1)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(value, &mut String::new(), 0)
}

/// Every number in a JSON text must be stored and read back exactly (contract §3): an
/// integer literal must fit in 64 bits, and any other number must be exactly the decimal
/// of the double it parses to — `0.1` and `1.5e300` are, `0.10000000000000000001`,
/// `12345678901234567890123` and `1e-400` (which would come back as something else) are
/// not. `json` must already be known to be valid JSON.
pub fn exact_numbers(json: &str) -> AppResult<()> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                exact_number(&json[start..i])?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn exact_number(token: &str) -> AppResult<()> {
    let refuse = |problem: &str| {
        Err(AppError::Validation {
            message: format!("number {token}: {problem}"),
            details: Some(serde_json::json!({ "number": token, "problem": problem })),
        })
    };
    if !token.contains(['.', 'e', 'E']) {
        if token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok() {
            return Ok(());
        }
        return refuse("integers must fit in 64 bits (send larger ones as strings)");
    }
    let Ok(parsed) = token.parse::<f64>() else {
        return refuse("is not a number");
    };
    if !parsed.is_finite() {
        return refuse("is out of the range of a 64-bit float");
    }
    if decimal(token) != decimal(&format!("{parsed:e}")) {
        return refuse(
            "has more precision than a 64-bit float keeps (send it as a string to keep every digit)",
        );
    }
    Ok(())
}

/// A decimal as (negative, significant digits, power of ten), zero as (false, "", 0).
fn decimal(text: &str) -> (bool, String, i64) {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (
            m,
            e.trim_start_matches('+').parse::<i64>().unwrap_or(i64::MAX),
        ),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let mut power = exponent.saturating_sub(frac.len() as i64);
    let digits = digits.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    power = power.saturating_add((digits.len() - trimmed.len()) as i64);
    if trimmed.is_empty() {
        return (false, String::new(), 0);
    }
    (negative, trimmed.to_owned(), power)
}

/// Timestamps a client names must lie where Postgres and every client can represent
/// them: years 1 to 9999.
pub fn date(field: &str, value: Option<&chrono::DateTime<chrono::Utc>>) -> AppResult<()> {
    use chrono::Datelike;
    if let Some(v) = value
        && !(1..=9999).contains(&v.year())
    {
        return Err(AppError::invalid_field(
            field,
            "must be between 0001-01-01 and 9999-12-31",
        ));
    }
    Ok(())
}

/// A non-empty id of at most 128 characters without control characters.
pub fn id(field: &str, value: &str) -> AppResult<()> {
    if value.trim().is_empty() {
        return Err(AppError::invalid_field(field, "must not be empty"));
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(AppError::invalid_field(
            field,
            format!("must be at most {MAX_ID_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::invalid_field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn max_chars(field: &str, value: &str, max: usize) -> AppResult<()> {
    no_nul(field, value)?;
    if value.chars().count() > max {
        return Err(AppError::invalid_field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

pub fn one_of(field: &str, value: &str, allowed: &[&str]) -> AppResult<()> {
    if !allowed.contains(&value) {
        return Err(AppError::invalid_field(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ));
    }
    Ok(())
}

/// Metadata-like fields: a JSON object of at most 16 KiB.
pub fn json_object(field: &str, value: &Value) -> AppResult<()> {
    if !value.is_object() {
        return Err(AppError::invalid_field(field, "must be a JSON object"));
    }
    untrusted_json(value).map_err(|e| match e {
        AppError::Validation { message, details } => AppError::Validation {
            message: format!("{field}.{message}"),
            details,
        },
        other => other,
    })?;
    if value.to_string().len() > MAX_JSON_BYTES {
        return Err(AppError::invalid_field(
            field,
            format!("must be at most {MAX_JSON_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Message text: non-blank and within the configured length. Stored verbatim.
pub fn text(value: &str, max: usize) -> AppResult<()> {
    no_nul("text", value)?;
    if value.trim().is_empty() {
        return Err(AppError::invalid_field("text", "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(AppError::Validation {
            message: format!("text: must be at most {max} characters (got {chars})"),
            details: Some(serde_json::json!({ "field": "text", "max_chars": max, "chars": chars })),
        });
    }
    Ok(())
}

pub fn tags(values: &[String]) -> AppResult<()> {
    if values.len() > MAX_TAGS {
        return Err(AppError::invalid_field(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    for t in values {
        if t.trim().is_empty() {
            return Err(AppError::invalid_field("tags", "tags must not be empty"));
        }
        max_chars("tags", t, MAX_TAG_CHARS)?;
    }
    Ok(())
}

/// An optional whole number within `min..=max`, as the `i32` its column holds.
pub fn within(field: &str, value: Option<i64>, min: i32, max: i32) -> AppResult<Option<i32>> {
    match value.map(i32::try_from) {
        None => Ok(None),
        Some(Ok(v)) if (min..=max).contains(&v) => Ok(Some(v)),
        Some(_) => Err(AppError::invalid_field(
            field,
            format!("must be {min} to {max}"),
        )),
    }
}

/// Page size: 1..=max, with a default.
pub fn limit(value: Option<i64>, default: i64, max: i64) -> AppResult<i64> {
    match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(_) => Err(AppError::invalid_field(
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

pub fn offset(value: Option<i64>) -> AppResult<i64> {
    match value {
        None => Ok(0),
        Some(v) if (0..=1_000_000_000).contains(&v) => Ok(v),
        Some(_) => Err(AppError::invalid_field(
            "offset",
            "must be between 0 and 1000000000",
        )),
    }
}

/// Escapes `%`, `_` and `\` so user text matches literally inside `ILIKE`.
pub fn like_pattern(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 2);
    out.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_bounds() {
        assert_eq!(limit(None, 50, 100).ok(), Some(50));
        assert!(limit(Some(0), 50, 100).is_err());
        assert!(limit(Some(101), 50, 100).is_err());
        assert!(limit(Some(-1), 50, 100).is_err());
    }

    #[test]
    fn like_pattern_escapes_wildcards() {
        assert_eq!(like_pattern("50%_a\\"), "%50\\%\\_a\\\\%");
    }

    #[test]
    fn nul_is_refused_anywhere_in_a_document() {
        let ok = serde_json::json!({"a": [1, {"b": "c"}], "n": 1.7976931348623157e308});
        assert!(untrusted_json(&ok).is_ok());
        for bad in [
            serde_json::json!({"a": "x\u{0}y"}),
            serde_json::json!({"a": [{"b": ["\u{0}"]}]}),
            serde_json::json!({"k\u{0}": 1}),
        ] {
            assert!(untrusted_json(&bad).is_err(), "{bad}");
        }
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!([deep]);
        }
        assert!(untrusted_json(&deep).is_err());
    }

    /// How Postgres prints a `jsonb` number: the decimal it was given, without exponent.
    fn postgres_plain(shortest: &str) -> String {
        let (sign, rest) = match shortest.strip_prefix('-') {
            Some(r) => ("-", r),
            None => ("", shortest),
        };
        let (mantissa, exp) = match rest.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i64>().expect("exponent")),
            None => (rest, 0),
        };
        let point = mantissa.find('.').unwrap_or(mantissa.len()) as i64;
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let at = point + exp;
        let body = if at >= digits.len() as i64 {
            format!(
                "{digits}{}",
                "0".repeat((at - digits.len() as i64) as usize)
            )
        } else if at <= 0 {
            format!("0.{}{digits}", "0".repeat((-at) as usize))
        } else {
            format!("{}.{}", &digits[..at as usize], &digits[at as usize..])
        };
        format!("{sign}{body}")
    }

    #[test]
    fn huge_doubles_survive_the_postgres_decimal_form() {
        for x in [
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            1e300,
            0.1,
            123.456e-7,
        ] {
            let sent = serde_json::to_string(&x).expect("serialises");
            let stored = postgres_plain(&sent);
            let back: f64 = serde_json::from_str(&stored).expect("parses back");
            assert_eq!(back, x, "{sent} stored as {stored}");
        }
    }

    #[test]
    fn numbers_must_read_back_exactly() {
        for ok in [
            "1",
            "-1",
            "0",
            "-0",
            "0.0",
            "1.50",
            "1e2",
            "1E+2",
            "0.1",
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "5e-324",
            "18446744073709551615",
            "-9223372036854775808",
            "123.456e-7",
            "2210627553.0",
        ] {
            assert!(exact_numbers(ok).is_ok(), "{ok}");
        }
        for bad in [
            "12345678901234567890123",
            "18446744073709551616",
            "0.10000000000000000001",
            "1e-400",
            "1.00000000000000000001e5",
            "-9223372036854775809",
        ] {
            assert!(exact_numbers(bad).is_err(), "{bad}");
        }
        let doc = r#"{"a":"12345678901234567890123 in a string","b":[1,2.5,{"c":"\\\"9e999"}]}"#;
        assert!(exact_numbers(doc).is_ok());
        assert!(exact_numbers(r#"{"a":"x","n":0.10000000000000000001}"#).is_err());
    }

    #[test]
    fn dates_outside_years_1_to_9999_are_refused() {
        let far: chrono::DateTime<chrono::Utc> =
            "-262143-01-01T00:00:00Z".parse().expect("chrono parses it");
        assert!(date("start_date", Some(&far)).is_err());
        let ok: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().expect("date");
        assert!(date("start_date", Some(&ok)).is_ok());
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        assert!(text("héllo", 5).is_ok());
        assert!(text("héllo!", 5).is_err());
        assert!(text("   ", 5).is_err());
    }
}
