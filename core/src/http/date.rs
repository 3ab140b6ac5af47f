//! HTTP-dates without libc or a clock: [`format_http_date`] writes an IMF-fixdate,
//! [`parse_http_date`] reads all three forms RFC 9110 requires, and [`not_modified`] answers
//! `If-Modified-Since`.

use super::trim_ows;

/// The largest time an IMF-fixdate can show: 9999-12-31 23:59:59 UTC.
pub const MAX_HTTP_DATE: u64 = 253_402_300_799;

const DAY_NAMES: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const LONG_DAY_NAMES: [&[u8]; 7] = [
    b"Sunday",
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// (year, month 1..=12, day 1..=31) from days since 1970-01-01, for days >= 0.
/// Howard Hinnant's `civil_from_days`, restricted to the proleptic Gregorian years we need.
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date in 1970 or later (the inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u32, day: u32) -> u64 {
    let y = year - u64::from(month <= 2);
    let era = y / 400;
    let yoe = y - era * 400;
    let m = u64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + u64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: u64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Writes `unix_secs` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`). Times after
/// [`MAX_HTTP_DATE`] are written as that (a four-digit year is all the format has).
pub fn format_http_date(unix_secs: u64, out: &mut [u8; 29]) {
    let t = unix_secs.min(MAX_HTTP_DATE);
    let days = t / 86_400;
    let secs = t % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 4) % 7) as usize;
    let two = |v: u64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    out[0..3].copy_from_slice(DAY_NAMES[weekday]);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(u64::from(day)));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTH_NAMES[month as usize - 1]);
    out[11] = b' ';
    out[12..14].copy_from_slice(&two(year / 100));
    out[14..16].copy_from_slice(&two(year % 100));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(secs / 3600));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(secs / 60 % 60));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(secs % 60));
    out[25..29].copy_from_slice(b" GMT");
}

/// Writes `unix_secs` as the common log format's time (`10/Oct/2000:13:55:36 +0000`, what
/// nginx's `$time_local` shows), always in UTC: core knows no time zones. Times after
/// [`MAX_HTTP_DATE`] are written as that.
pub fn format_log_date(unix_secs: u64, out: &mut [u8; 26]) {
    let t = unix_secs.min(MAX_HTTP_DATE);
    let (year, month, day) = civil_from_days(t / 86_400);
    let secs = t % 86_400;
    let two = |v: u64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    out[0..2].copy_from_slice(&two(u64::from(day)));
    out[2] = b'/';
    out[3..6].copy_from_slice(MONTH_NAMES[month as usize - 1]);
    out[6] = b'/';
    out[7..9].copy_from_slice(&two(year / 100));
    out[9..11].copy_from_slice(&two(year % 100));
    out[11] = b':';
    out[12..14].copy_from_slice(&two(secs / 3600));
    out[14] = b':';
    out[15..17].copy_from_slice(&two(secs / 60 % 60));
    out[17] = b':';
    out[18..20].copy_from_slice(&two(secs % 60));
    out[20..26].copy_from_slice(b" +0000");
}

/// Parses an HTTP-date (RFC 9110 §5.6.7) into Unix seconds: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), and the obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37
/// GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms that recipients must still accept.
///
/// `None` for anything else, including dates before 1970 (a server then ignores the
/// condition, which is the safe choice). The weekday name must be valid but need not match
/// the date. RFC 850 two-digit years are read as 1970–2069: without a clock, the "50 years in
/// the future" rule of RFC 9110 cannot be applied, and this window is right until 2069.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    let (year, month, day, time) = if v.len() == 29 && v[3] == b',' {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        day_name(&v[..3])?;
        expect(&v[3..5], b", ")?;
        let day = num(&v[5..7])?;
        expect(&v[7..8], b" ")?;
        let month = month_name(&v[8..11])?;
        expect(&v[11..12], b" ")?;
        let year = num(&v[12..16])?;
        expect(&v[16..17], b" ")?;
        let time = &v[17..25];
        expect(&v[25..], b" GMT")?;
        (year, month, day, time)
    } else if v.len() == 24 && v[3] == b' ' {
        // asctime: "Sun Nov  6 08:49:37 1994" (day padded with a space)
        day_name(&v[..3])?;
        let month = month_name(&v[4..7])?;
        expect(&v[7..8], b" ")?;
        let day = match v[8] {
            b' ' => num(&v[9..10])?,
            _ => num(&v[8..10])?,
        };
        expect(&v[10..11], b" ")?;
        let time = &v[11..19];
        expect(&v[19..20], b" ")?;
        let year = num(&v[20..24])?;
        (year, month, day, time)
    } else {
        // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
        let comma = v.iter().position(|b| *b == b',')?;
        if !LONG_DAY_NAMES
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&v[..comma]))
        {
            return None;
        }
        let rest = &v[comma..];
        if rest.len() != 24 {
            return None;
        }
        expect(&rest[..2], b", ")?;
        let day = num(&rest[2..4])?;
        expect(&rest[4..5], b"-")?;
        let month = month_name(&rest[5..8])?;
        expect(&rest[8..9], b"-")?;
        let yy = num(&rest[9..11])?;
        expect(&rest[11..12], b" ")?;
        let time = &rest[12..20];
        expect(&rest[20..], b" GMT")?;
        let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
        (year, month, day, time)
    };
    expect(&time[2..3], b":")?;
    expect(&time[5..6], b":")?;
    let (hour, minute, second) = (num(&time[..2])?, num(&time[3..5])?, num(&time[6..8])?);
    // Second 60 is a leap second, which the grammar allows and Unix time folds into the next.
    if year < 1970 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let month = month as u32;
    if day == 0 || day > u64::from(days_in_month(year, month)) {
        return None;
    }
    let days = days_from_civil(year, month, day as u32);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn expect(got: &[u8], want: &[u8]) -> Option<()> {
    (got == want).then_some(())
}

fn num(v: &[u8]) -> Option<u64> {
    v.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

fn day_name(v: &[u8]) -> Option<()> {
    DAY_NAMES.iter().any(|n| &n[..] == v).then_some(())
}

/// Month 1..=12 from its three-letter name.
fn month_name(v: &[u8]) -> Option<u64> {
    MONTH_NAMES
        .iter()
        .position(|n| &n[..] == v)
        .map(|i| i as u64 + 1)
}

/// True when a 304 is the answer: `If-Modified-Since` is present and parses, and the file
/// (its mtime truncated to whole seconds, as Last-Modified shows it) is not newer than it.
/// An unparsable date is ignored (RFC 9110 §13.1.3), so the full response is sent.
pub fn not_modified(if_modified_since: Option<&[u8]>, mtime_secs: u64) -> bool {
    if_modified_since
        .and_then(parse_http_date)
        .is_some_and(|since| mtime_secs <= since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Status;
    use proptest::prelude::*;

    // --- dates ---

    #[test]
    fn date_vectors() {
        let cases: [(u64, &str); 6] = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 GMT"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
            (MAX_HTTP_DATE, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, text) in cases {
            let mut out = [0u8; 29];
            format_http_date(secs, &mut out);
            assert_eq!(core::str::from_utf8(&out).unwrap(), text);
            assert_eq!(parse_http_date(text.as_bytes()), Some(secs), "{text}");
        }
        let mut out = [0u8; 29];
        format_http_date(u64::MAX, &mut out);
        assert_eq!(&out, b"Fri, 31 Dec 9999 23:59:59 GMT", "clamped");
    }

    #[test]
    fn log_dates() {
        let mut out = [0u8; 26];
        format_log_date(971_185_336, &mut out);
        assert_eq!(&out, b"10/Oct/2000:13:42:16 +0000");
        format_log_date(0, &mut out);
        assert_eq!(&out, b"01/Jan/1970:00:00:00 +0000");
        format_log_date(u64::MAX, &mut out);
        assert_eq!(&out, b"31/Dec/9999:23:59:59 +0000");
    }

    #[test]
    fn obsolete_date_forms() {
        assert_eq!(
            parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date(b"Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date(b"Tue Nov 14 22:13:20 2023"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn bad_dates() {
        for d in [
            &b""[..],
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Sun, 29 Feb 1900 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1969 08:49:37 GMT",
            b"Sun, 0x Nov 1994 08:49:37 GMT",
            b"Funday, 06-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(d), None, "{:?}", core::str::from_utf8(d));
        }
    }

    #[test]
    fn if_modified_since() {
        let ims = Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..]);
        assert!(not_modified(ims, 784_111_777));
        assert!(not_modified(ims, 784_111_000));
        assert!(!not_modified(ims, 784_111_778));
        assert!(!not_modified(None, 0));
        assert!(!not_modified(Some(b"garbage"), 0), "unparsable is ignored");
        assert_eq!(Status::NotModified.code(), 304);
    }

    proptest! {
        #[test]
        fn date_round_trip(secs in 0u64..=MAX_HTTP_DATE) {
            let mut out = [0u8; 29];
            format_http_date(secs, &mut out);
            prop_assert_eq!(parse_http_date(&out), Some(secs));
        }

        #[test]
        fn parse_http_date_never_panics(v in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_http_date(&v);
        }
    }
}
