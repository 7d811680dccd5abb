//! Column-name normalisation: every name becomes snake_case ASCII, as Glue and Athena expect.

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
    fn aliases() {
        assert_eq!(core_alias("index"), Some("symbol"));
        assert_eq!(core_alias("date"), Some("ts"));
        assert_eq!(core_alias("price"), Some("close"));
        assert_eq!(core_alias("adj_close"), None);
    }
}
