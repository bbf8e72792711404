//! JSON log lines on stderr, one object a line, filtered by `ROOMCAST_LOG`.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::config::LogLevel;

static MAX_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

pub fn set_level(level: LogLevel) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

pub fn error(msg: &str, fields: Value) {
    write(LogLevel::Error, msg, fields);
}

pub fn warn(msg: &str, fields: Value) {
    write(LogLevel::Warn, msg, fields);
}

pub fn info(msg: &str, fields: Value) {
    write(LogLevel::Info, msg, fields);
}

pub fn debug(msg: &str, fields: Value) {
    write(LogLevel::Debug, msg, fields);
}

/// A log line never grows past this: error texts from peers can be long.
const MAX_LINE: usize = 1024;
/// Text fields are cut to this many bytes.
const MAX_FIELD: usize = 200;

/// `text` cut to at most `MAX_FIELD` bytes, on a character boundary, marked when cut.
pub fn cut(text: &str) -> String {
    if text.len() <= MAX_FIELD {
        return text.to_string();
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn write(level: LogLevel, msg: &str, fields: Value) {
    if !enabled(level) {
        return;
    }
    let fields = match fields {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => (key, Value::String(cut(&text))),
                    other => (key, other),
                })
                .collect(),
        ),
        other => other,
    };
    let level = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    // ts, level and msg lead the line; the fields follow in their own order.
    let mut text = format!(
        "{{\"ts\":\"{}\",\"level\":\"{level}\",\"msg\":{}",
        timestamp(),
        Value::from(msg)
    );
    match fields {
        Value::Object(fields) if !fields.is_empty() => {
            let fields = Value::Object(fields).to_string();
            text.push(',');
            text.push_str(&fields[1..]);
        }
        _ => text.push('}'),
    }
    if text.len() > MAX_LINE {
        text = format!(
            "{{\"ts\":\"{}\",\"level\":\"{level}\",\"msg\":{},\"fields_cut\":true}}",
            timestamp(),
            Value::from(cut(msg))
        );
    }
    text.push('\n');
    // One write per line so concurrent lines never interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// RFC 3339 UTC with milliseconds, without a date crate.
fn timestamp() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(300);
        let cut_text = cut(&long);
        assert!(cut_text.len() <= MAX_FIELD + "…".len());
        assert!(cut_text.ends_with('…'));
    }

    #[test]
    fn converts_days_to_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }
}
