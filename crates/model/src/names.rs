//! Column-name normalisation: every name becomes snake_case ASCII, as Glue and Athena expect.

use std::fmt::Write as _;

use heck::ToSnakeCase;

/// The core columns of a market record, in schema order.
pub const CORE_COLUMNS: [&str; 7] = ["symbol", "ts", "open", "high", "low", "close", "volume"];

/// Turns a source column name into a snake_case ASCII identifier.
///
/// `Adj Close` -> `adj_close`, `CloseUSD` -> `close_usd`, `Trade Price (EUR)` -> `trade_price_eur`.
/// Characters outside ASCII letters and digits separate words; a name that would start with a digit gets a
/// `c_` prefix; a name with no usable character becomes `column`.
pub fn normalize_column_name(name: &str) -> String {
    let trimmed = name.trim();
    if is_normalized(trimmed) {
        return trimmed.to_owned();
    }
    let ascii: String = trimmed
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect();
    let snake = ascii.to_snake_case();
    if snake.is_empty() {
        "column".to_owned()
    } else if snake.as_bytes()[0].is_ascii_digit() {
        format!("c_{snake}")
    } else {
        snake
    }
}

/// True when `name` is already a normalised identifier (lower-case ASCII, digits, single underscores).
pub fn is_normalized(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        && !name.contains("__")
        && !name.ends_with('_')
}

/// Which core field a (normalised) source column name stands for, by the usual names feeds give them.
///
/// `index` and `ticker` mean `symbol`; `date`, `time`, `timestamp` and `datetime` mean `ts`;
/// `price` and `last` mean `close`. Anything else is `None` (an extra column).
pub fn core_alias(normalized: &str) -> Option<&'static str> {
    Some(match normalized {
        "symbol" | "index" | "ticker" | "sym" | "instrument" => "symbol",
        "ts" | "timestamp" | "date" | "datetime" | "time" | "date_time" => "ts",
        "open" => "open",
        "high" => "high",
        "low" => "low",
        "close" | "price" | "last" => "close",
        "volume" | "vol" => "volume",
        _ => return None,
    })
}

/// Escapes a partition value as Hive does (`FileUtils.escapePathName`): control characters and
/// `"#%'*/:=?\{[]^` and DEL become `%XX`, so a value can never add a folder level or leave the table.
/// An empty value is Hive's `__HIVE_DEFAULT_PARTITION__`.
pub fn hive_escape(value: &str) -> String {
    if value.is_empty() {
        return "__HIVE_DEFAULT_PARTITION__".into();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if needs_escape(c) {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`hive_escape`].
pub fn hive_unescape(escaped: &str) -> String {
    let b = escaped.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The longest symbol, counted in bytes of its Hive-escaped form (the folder name is `symbol=<escaped>`):
/// 200 keeps that folder name well under the 255 bytes that file systems allow for a name, and S3 keys
/// under their 1,024 bytes. Plain letters and digits count one byte; characters that need escaping
/// (`/`, `:`, `=`, …) count three.
pub const MAX_SYMBOL_BYTES: usize = 200;

/// The longest extra column name, in bytes (Glue and Hive accept longer ones, but not much longer).
pub const MAX_COLUMN_NAME_BYTES: usize = 128;

/// Checks that `symbol` can name a lake folder: not blank, and at most [`MAX_SYMBOL_BYTES`] once
/// Hive-escaped. Returns what is wrong otherwise.
pub fn check_symbol(symbol: &str) -> Result<(), String> {
    if symbol.trim().is_empty() {
        return Err("is empty".into());
    }
    let escaped = escaped_len(symbol);
    if escaped > MAX_SYMBOL_BYTES {
        return Err(format!(
            "is too long: {escaped} bytes once escaped for its folder name (symbol=...), more than \
             the {MAX_SYMBOL_BYTES} a symbol may have"
        ));
    }
    Ok(())
}

fn needs_escape(c: char) -> bool {
    c.is_ascii_control()
        || matches!(
            c,
            '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
        )
}

fn escaped_len(value: &str) -> usize {
    value
        .chars()
        .map(|c| if needs_escape(c) { 3 } else { c.len_utf8() })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_columns_normalise() {
        assert_eq!(normalize_column_name("Adj Close"), "adj_close");
        assert_eq!(normalize_column_name("CloseUSD"), "close_usd");
        assert_eq!(normalize_column_name("Index"), "index");
        assert_eq!(normalize_column_name("Volume"), "volume");
    }

    #[test]
    fn awkward_names_become_identifiers() {
        assert_eq!(
            normalize_column_name("Trade Price (EUR)"),
            "trade_price_eur"
        );
        assert_eq!(normalize_column_name("  52wk High "), "c_52wk_high");
        assert_eq!(normalize_column_name("ümlaut"), "mlaut");
        assert_eq!(normalize_column_name("%%"), "column");
        assert_eq!(normalize_column_name("already_snake"), "already_snake");
        assert_eq!(normalize_column_name("a--b"), "a_b");
    }

    #[test]
    fn symbol_limits() {
        assert!(check_symbol("AAPL").is_ok());
        assert!(check_symbol(&"X".repeat(MAX_SYMBOL_BYTES)).is_ok());
        let long = check_symbol(&"X".repeat(300)).unwrap_err();
        assert!(long.contains("300 bytes once escaped"), "{long}");
        // 70 slashes escape to 210 bytes.
        assert!(check_symbol(&"/".repeat(70)).is_err());
        assert_eq!(escaped_len("a/b"), hive_escape("a/b").len());
        assert_eq!(escaped_len("ü€:"), hive_escape("ü€:").len());
        assert_eq!(check_symbol("  ").unwrap_err(), "is empty");
    }

    #[test]
    fn aliases() {
        assert_eq!(core_alias("index"), Some("symbol"));
        assert_eq!(core_alias("date"), Some("ts"));
        assert_eq!(core_alias("price"), Some("close"));
        assert_eq!(core_alias("adj_close"), None);
    }
}
