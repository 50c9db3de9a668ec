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
    fn text_counts_characters_not_bytes() {
        assert!(text("héllo", 5).is_ok());
        assert!(text("héllo!", 5).is_err());
        assert!(text("   ", 5).is_err());
    }
}
