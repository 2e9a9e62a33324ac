//! Time without a clock: conversions between the calendar forms clouds use and
//! Unix seconds, which is how the host passes the verification time.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days-from-civil algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds of a UTC calendar time; `None` if a field is out of range.
pub fn unix_from_parts(year: i64, month: u32, day: u32, hour: u32, min: u32, sec: u32) -> Option<i64> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day == 0 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + (hour * 3600 + min * 60 + sec) as i64)
}

/// The decimal number at byte range `r` of `text`, all ASCII digits, or `None`.
pub fn digits(text: &str, r: std::ops::Range<usize>) -> Option<u32> {
    let s = text.get(r)?;
    if s.is_empty() {
        return None;
    }
    // By hand, not `str::parse`: the same answer (overflow is `None` too), and
    // cheaper in the sandbox, where every Azure and RFC 3339 timestamp passes here.
    s.bytes().try_fold(0u32, |n, c| {
        if !c.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u32::from(c - b'0'))
    })
}

/// Parses an RFC 3339 timestamp (`2022-03-25T20:07:16Z`, fractional seconds and
/// numeric offsets allowed) to Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r| digits(text, r);
    let (year, month, day) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            // Digits only: `str::parse` would also take a sign ("+-1:30").
            let (oh, om) = (digits(rest, 1..3)? as i64, digits(rest, 4..6)? as i64);
            if oh > 23 || om > 59 {
                return None;
            }
            (oh * 3600 + om * 60) * if rb[0] == b'-' { -1 } else { 1 }
        }
    };
    Some(unix_from_parts(year, month, day, hour, min, sec)? - offset)
}

/// Formats Unix seconds as RFC 3339 UTC (`2022-03-25T20:07:16Z`).
pub fn format_rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // civil-from-days, the inverse of `days_from_civil`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    if !(0..=9999).contains(&year) {
        return format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        );
    }
    // Digits by hand: `format!`'s padding was a visible share of a sandboxed
    // Azure verification, which formats two times on every success.
    let mut out = String::with_capacity(20);
    let mut push = |n: i64, width: u32, sep: Option<char>| {
        for place in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10i64.pow(place) % 10) as u8));
        }
        out.extend(sep);
    };
    push(year, 4, Some('-'));
    push(month, 2, Some('-'));
    push(day, 2, Some('T'));
    push(secs / 3600, 2, Some(':'));
    push(secs % 3600 / 60, 2, Some(':'));
    push(secs % 60, 2, Some('Z'));
    out
}

/// A time for messages: RFC 3339 within years 0..=9999, else raw seconds (a
/// token can carry any integer).
pub fn describe(unix: i64) -> String {
    if (-62_167_219_200..=253_402_300_799).contains(&unix) {
        format_rfc3339(unix)
    } else {
        format!("{unix} (Unix seconds)")
    }
}

/// Unix seconds of an X.509 `Time` (UTCTime or GeneralizedTime).
pub fn x509_unix(time: &x509_cert::time::Time) -> i64 {
    time.to_unix_duration().as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-05-17T16:19:47Z"), Some(1_715_962_787));
        assert_eq!(parse_rfc3339("2024-05-17T18:19:47.123+02:00"), Some(1_715_962_787));
        assert_eq!(format_rfc3339(1_715_962_787), "2024-05-17T16:19:47Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(-62_167_219_200), "0000-01-01T00:00:00Z");
        // Outside years 0..=9999, as `format!` pads them.
        assert_eq!(format_rfc3339(253_402_300_800), "10000-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(-62_167_219_201), "-001-12-31T23:59:59Z");
        assert_eq!(describe(0), "1970-01-01T00:00:00Z");
        assert_eq!(describe(i64::MAX), format!("{} (Unix seconds)", i64::MAX));
    }

    #[test]
    fn digits_are_ascii_digits_only() {
        assert_eq!(digits("x0042y", 1..5), Some(42));
        assert_eq!(digits("4294967295", 0..10), Some(u32::MAX));
        for (text, r) in [
            ("", 0..0),
            ("12", 1..3),
            ("+1", 0..2),
            ("-1", 0..2),
            ("4a", 0..2),
            ("1 ", 0..2),
        ] {
            assert_eq!(digits(text, r.clone()), None, "{text:?} {r:?}");
        }
        assert_eq!(digits("4294967296", 0..10), None, "overflow");
        assert_eq!(digits("é1", 1..3), None, "not on a char boundary");
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for bad in [
            "",
            "2024-05-17",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-17T16:19:47",
            "2024-05-17T16:19:47.Z",
            "2024-05-17T16:19:47+0200",
            "２０２４-05-17T16:19:47Z",
            // Offsets RFC 3339 does not allow (`time-numoffset` is two digits
            // 00-23, colon, two digits 00-59); these were once accepted.
            "2024-05-17T16:19:47+-1:30",
            "2024-05-17T16:19:47++1:00",
            "2024-05-17T16:19:47+24:00",
            "2024-05-17T16:19:47+00:60",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
