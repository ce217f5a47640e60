//! Timestamps as the ledger and the logs write them: RFC 3339, UTC.

use std::time::SystemTime;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
pub fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (date, time) = civil(secs);
    let two = |n: i64, out: &mut Vec<u8>| {
        out.push(b'0' + (n / 10) as u8);
        out.push(b'0' + (n % 10) as u8);
    };
    let (y, m, d) = date;
    out.extend_from_slice(itoa::Buffer::new().format(y).as_bytes());
    out.push(b'-');
    two(m, out);
    out.push(b'-');
    two(d, out);
    out.push(b'T');
    two(time / 3600, out);
    out.push(b':');
    two(time % 3600 / 60, out);
    out.push(b':');
    two(time % 60, out);
    out.push(b'.');
    let micros = since.subsec_micros();
    let digits = itoa::Buffer::new().format(micros).len();
    out.extend(std::iter::repeat_n(b'0', 6 - digits));
    out.extend_from_slice(itoa::Buffer::new().format(micros).as_bytes());
    out.push(b'Z');
}

/// Unix seconds as RFC 3339 (UTC, whole seconds): `2026-11-22T23:09:07Z`.
pub fn rfc3339(secs: i64) -> String {
    let ((y, m, d), t) = civil(secs);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// ((year, month, day), seconds into the day) for Unix seconds, by Howard
/// Hinnant's days-to-civil algorithm.
fn civil(secs: i64) -> ((i64, i64, i64), i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    ((year, month, day), rem)
}

/// `now` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn timestamp(now: SystemTime) -> String {
    let mut buf = Vec::with_capacity(32);
    write_timestamp(&mut buf, now);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_right() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn timestamps_have_microseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_042);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.000042Z");
    }
}
