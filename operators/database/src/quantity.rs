//! Kubernetes quantities as byte counts: parsing `spec.size` (`10Gi`, `500M`, `1.5e9`) exactly,
//! and formatting a measured size for `status.actualSize` (`7.9Mi`).
//!
//! The grammar is Kubernetes' (`resource.Quantity`): an optional sign, a decimal number, and a
//! binary suffix (`Ki` … `Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M` … `E`) or an
//! exponent (`e3`, `E-2`). Arithmetic is exact (integers, no floating point); fractional bytes
//! round up, as `Quantity.Value()` does.

use std::fmt;

/// Why a string is not a usable size.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a Kubernetes quantity.
    #[error("not a Kubernetes quantity (examples: 10Gi, 500Mi, 1G, 1.5e9)")]
    Syntax,
    /// A quantity, but negative.
    #[error("must not be negative")]
    Negative,
    /// More bytes than fit in 64 bits.
    #[error("too large")]
    TooLarge,
}

/// The number of bytes `quantity` stands for, rounded up to a whole byte.
///
/// ```
/// use database_operator::quantity::parse_bytes;
/// assert_eq!(parse_bytes("10Gi"), Ok(10 << 30));
/// assert_eq!(parse_bytes("1.5k"), Ok(1500));
/// assert_eq!(parse_bytes("1e3"), Ok(1000));
/// assert_eq!(parse_bytes("0.5"), Ok(1)); // rounds up
/// assert!(parse_bytes("ten gigs").is_err());
/// ```
pub fn parse_bytes(quantity: &str) -> Result<u64, QuantityError> {
    let (negative, rest) = match quantity.as_bytes().first() {
        Some(b'+') => (false, &quantity[1..]),
        Some(b'-') => (true, &quantity[1..]),
        _ => (false, quantity),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(QuantityError::Syntax);
    }
    // value = mantissa * 2^binary_exp * 10^decimal_exp
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(QuantityError::TooLarge);
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| QuantityError::Syntax)?
    };
    let mut decimal_exp = -i32::try_from(frac_part.len()).map_err(|_| QuantityError::TooLarge)?;
    let mut binary_exp = 0u32;
    match suffix {
        "" => {}
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            binary_exp = 10 * (1 + "KMGTPE".find(&suffix[..1]).unwrap_or(0) as u32);
        }
        "n" => decimal_exp -= 9,
        "u" => decimal_exp -= 6,
        "m" => decimal_exp -= 3,
        "k" => decimal_exp += 3,
        "M" => decimal_exp += 6,
        "G" => decimal_exp += 9,
        "T" => decimal_exp += 12,
        "P" => decimal_exp += 15,
        "E" => decimal_exp += 18,
        _ => {
            let exp = suffix.strip_prefix(['e', 'E']).ok_or(QuantityError::Syntax)?;
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) || exp.len() > 4 {
                return Err(QuantityError::Syntax);
            }
            decimal_exp += exp.parse::<i32>().map_err(|_| QuantityError::Syntax)?;
        }
    }
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative);
    }
    if mantissa == 0 {
        return Ok(0);
    }
    let scaled = mantissa
        .checked_shl(binary_exp)
        .filter(|v| v >> binary_exp == mantissa);
    let mut value = scaled.ok_or(QuantityError::TooLarge)?;
    if decimal_exp >= 0 {
        let factor = 10u128
            .checked_pow(decimal_exp as u32)
            .ok_or(QuantityError::TooLarge)?;
        value = value.checked_mul(factor).ok_or(QuantityError::TooLarge)?;
    } else {
        // 10^39 exceeds u128; anything divided by it (or more) is below one byte.
        value = match 10u128.checked_pow(decimal_exp.unsigned_abs()) {
            Some(divisor) => value.div_ceil(divisor),
            None => 1,
        };
    }
    u64::try_from(value).map_err(|_| QuantityError::TooLarge)
}

/// A byte count as a short binary-SI quantity with at most one decimal, rounded to nearest:
/// `7.9Mi`, `512Ki`, `10Gi`, `100` (plain bytes below 1Ki). Meant for humans
/// (`status.actualSize`); it parses back with [`parse_bytes`] to about the same value.
///
/// ```
/// use database_operator::quantity::format_bytes;
/// assert_eq!(format_bytes(8_283_750), "7.9Mi");
/// assert_eq!(format_bytes(10 << 30), "10Gi");
/// assert_eq!(format_bytes(1000), "1000");
/// ```
pub fn format_bytes(bytes: u64) -> String {
    FormattedBytes(bytes).to_string()
}

struct FormattedBytes(u64);

impl fmt::Display for FormattedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
        let bytes = u128::from(self.0);
        if bytes < 1024 {
            return write!(f, "{bytes}");
        }
        let mut unit = 0;
        while unit + 1 < SUFFIXES.len() && bytes >= 1024u128 << (10 * (unit + 1)) {
            unit += 1;
        }
        let divisor = 1024u128 << (10 * unit);
        // Tenths, rounded to nearest.
        let tenths = (bytes * 10 + divisor / 2) / divisor;
        if tenths >= 10240 && unit + 1 < SUFFIXES.len() {
            // Rounding carried into the next unit (1023.96Ki -> 1Mi).
            return write!(f, "1{}", SUFFIXES[unit + 1]);
        }
        if tenths.is_multiple_of(10) {
            write!(f, "{}{}", tenths / 10, SUFFIXES[unit])
        } else {
            write!(f, "{}.{}{}", tenths / 10, tenths % 10, SUFFIXES[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_kubernetes_forms() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("+1", 1),
            ("-0", 0),
            ("1Ki", 1024),
            ("1.5Gi", 3 << 29),
            (".5Ki", 512),
            ("5.", 5),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("2T", 2_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("1500m", 2),
            ("1000m", 1),
            ("1n", 1),
            ("12e2", 1200),
            ("12E+2", 1200),
            ("1e-3", 1),
            ("1e-40", 1),
            ("007", 7),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bytes(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "", "Gi", "1GiB", "1 Gi", "1.2.3", "1e", "e3", "1Gi1", "0x10", "1g", "1ki", "+", ".",
        ] {
            assert_eq!(parse_bytes(bad), Err(QuantityError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_bytes("-1Gi"), Err(QuantityError::Negative));
        assert_eq!(parse_bytes("16Ei"), Err(QuantityError::TooLarge));
        assert_eq!(parse_bytes("1e30"), Err(QuantityError::TooLarge));
        assert_eq!(parse_bytes(&"9".repeat(40)), Err(QuantityError::TooLarge));
    }

    #[test]
    fn whatever_the_crd_pattern_accepts_parses() {
        let pattern = regex::Regex::new(crate::types::SIZE_PATTERN).unwrap();
        for s in ["10Gi", "1.5", "1.5T", "0", "500M", "1E", "1Ei", "007k"] {
            assert!(pattern.is_match(s), "{s:?}");
            assert!(parse_bytes(s).is_ok(), "{s:?}");
        }
        for s in [
            ".5Ki", "5.", "1e3", "+1", "1500m", "1Gi1", "1 Gi", "1g", "-1", ".", "",
        ] {
            assert!(!pattern.is_match(s), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn crd_sizes_always_parse(s in "[0-9]{1,6}(\\.[0-9]{1,3})?(Ki|Mi|Gi|Ti|k|M|G|T)?") {
            let pattern = regex::Regex::new(crate::types::SIZE_PATTERN).unwrap();
            prop_assert!(pattern.is_match(&s));
            prop_assert!(parse_bytes(&s).is_ok());
        }
    }

    #[test]
    fn formats_for_humans() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(1023), "1023");
        assert_eq!(format_bytes(1024), "1Ki");
        assert_eq!(format_bytes(1536), "1.5Ki");
        assert_eq!(format_bytes(1024 * 1024 - 1), "1Mi");
        assert_eq!(format_bytes(7 * 1024 * 1024 + 900 * 1024), "7.9Mi");
        assert_eq!(format_bytes(u64::MAX), "16Ei");
    }

    proptest! {
        #[test]
        fn formatted_sizes_parse_back_within_five_percent(bytes in 1024u64..(1 << 62)) {
            let back = parse_bytes(&format_bytes(bytes)).unwrap();
            let (lo, hi) = (bytes.min(back) as f64, bytes.max(back) as f64);
            prop_assert!(hi / lo < 1.05, "{bytes} -> {} -> {back}", format_bytes(bytes));
        }

        #[test]
        fn binary_suffixes_are_exact(n in 0u64..1_000_000, unit in 0usize..4) {
            let suffix = ["Ki", "Mi", "Gi", "Ti"][unit];
            prop_assert_eq!(parse_bytes(&format!("{n}{suffix}")), Ok(n << (10 * (unit + 1))));
        }
    }
}
