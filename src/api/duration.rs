//! Durations and int-or-percent values as users write them in specs.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Parses a Go-style duration ("500ms", "30s", "5m", "1h30m"). A bare number
/// is rejected here; callers that accept integer seconds handle that first.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. \"30s\", \"5m\" or \"1h\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number before {rest:?}"
            ));
        }
        let number: f64 = rest[..digits].parse().map_err(|_| {
            format!(
                "invalid duration {text:?}: {:?} is not a number",
                &rest[..digits]
            )
        })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit; use ms, s, m or h (e.g. \"{number}s\")"
                ));
            }
            unit => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {unit:?}; use ms, s, m or h"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(number * seconds_per_unit);
    }
    Ok(total)
}

/// A pause or delay written either as integer seconds or as a duration string.
pub fn parse_int_or_duration(value: &IntOrString) -> Result<Duration, String> {
    match value {
        IntOrString::Int(seconds) if *seconds >= 0 => Ok(Duration::from_secs(*seconds as u64)),
        IntOrString::Int(seconds) => Err(format!("duration must not be negative, got {seconds}")),
        IntOrString::String(text) => match text.trim().parse::<i64>() {
            Ok(seconds) if seconds >= 0 => Ok(Duration::from_secs(seconds as u64)),
            Ok(seconds) => Err(format!("duration must not be negative, got {seconds}")),
            Err(_) => parse_duration(text),
        },
    }
}

/// Resolves a count-or-percentage against `total`. Unlike Argo, a string must
/// end in `%`: "1" is an error rather than silently meaning 1%.
pub fn resolve_int_or_percent(
    value: &IntOrString,
    total: i32,
    round_up: bool,
) -> Result<i32, String> {
    match value {
        IntOrString::Int(count) if *count >= 0 => Ok(*count),
        IntOrString::Int(count) => Err(format!("must not be negative, got {count}")),
        IntOrString::String(text) => {
            let Some(number) = text.trim().strip_suffix('%') else {
                return Err(format!(
                    "{text:?} is neither a number nor a percentage; write {text} (no quotes) for a pod count or \"{text}%\" for a percentage"
                ));
            };
            let percent: i64 = number
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a valid percentage; write e.g. \"25%\""))?;
            if !(0..=100).contains(&percent) {
                return Err(format!("percentage {text:?} must be between 0% and 100%"));
            }
            let scaled = percent * i64::from(total);
            let value = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            Ok(value as i32)
        }
    }
}

/// An integer limit written as a number or a numeric string ("3").
pub fn parse_int_or_string(value: &IntOrString) -> Result<i64, String> {
    match value {
        IntOrString::Int(number) => Ok(i64::from(*number)),
        IntOrString::String(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_bad_durations_with_a_hint() {
        assert!(parse_duration("").unwrap_err().contains("30s"));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("3d")
                .unwrap_err()
                .contains("unknown unit \"d\"")
        );
        assert!(
            parse_duration("s")
                .unwrap_err()
                .contains("expected a number")
        );
    }

    #[test]
    fn int_or_duration_accepts_seconds_in_both_forms() {
        assert_eq!(
            parse_int_or_duration(&IntOrString::Int(5)),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            parse_int_or_duration(&IntOrString::String("7".into())),
            Ok(Duration::from_secs(7))
        );
        assert_eq!(
            parse_int_or_duration(&IntOrString::String("2m".into())),
            Ok(Duration::from_secs(120))
        );
        assert!(parse_int_or_duration(&IntOrString::Int(-1)).is_err());
    }

    #[test]
    fn percentages_round_as_asked_and_bare_strings_are_rejected() {
        let quarter = IntOrString::String("25%".into());
        assert_eq!(resolve_int_or_percent(&quarter, 5, true), Ok(2));
        assert_eq!(resolve_int_or_percent(&quarter, 5, false), Ok(1));
        assert_eq!(
            resolve_int_or_percent(&IntOrString::Int(3), 5, false),
            Ok(3)
        );
        let bare = resolve_int_or_percent(&IntOrString::String("1".into()), 5, false).unwrap_err();
        assert!(bare.contains("\"1%\""), "{bare}");
        assert!(resolve_int_or_percent(&IntOrString::String("120%".into()), 5, false).is_err());
    }
}
