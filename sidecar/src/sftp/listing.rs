//! Attributes and `ls -l` long names for NAME responses (FileZilla and WinSCP parse `longname`).

use rustix::fs::Stat;

use super::accounts::Accounts;
use super::codec::Attrs;

pub fn attrs(st: &Stat) -> Attrs {
    Attrs {
        size: Some(st.st_size as u64),
        uid_gid: Some((st.st_uid, st.st_gid)),
        permissions: Some(st.st_mode),
        times: Some((st.st_atime as u32, st.st_mtime as u32)),
    }
}

fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    let special = [(libc::S_ISUID, 's'), (libc::S_ISGID, 's'), (libc::S_ISVTX, 't')];
    for (i, (bit, letter)) in special.iter().enumerate() {
        let shift = 6 - 3 * i as u32;
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        s.push(match (mode & bit != 0, exec) {
            (true, true) => *letter,
            (true, false) => letter.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// (year, month 1-12, day) of a day count since 1970-01-01 (proleptic Gregorian, UTC).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Like `ls -l` (and OpenSSH's `ls_file`): recent files show the time, older ones the year.
fn date_string(mtime: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (year, month, day) = civil_from_days(mtime.div_euclid(86_400));
    let month = MONTHS[(month - 1) as usize];
    const SIX_MONTHS: i64 = 182 * 86_400;
    if mtime > now - SIX_MONTHS && mtime <= now + 3600 {
        let secs = mtime.rem_euclid(86_400);
        format!("{month} {day:>2} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{month} {day:>2}  {year}")
    }
}

/// An `ls -l` line; owner and group by name where the served filesystem names them.
pub fn longname(name: &[u8], st: &Stat, now: i64, accounts: &Accounts) -> Vec<u8> {
    let mut out = format!("{} {:>3} ", mode_string(st.st_mode), st.st_nlink).into_bytes();
    let uid = st.st_uid.to_string();
    let gid = st.st_gid.to_string();
    push_padded(&mut out, accounts.user(st.st_uid).unwrap_or(uid.as_bytes()), 8);
    push_padded(&mut out, accounts.group(st.st_gid).unwrap_or(gid.as_bytes()), 8);
    out.extend_from_slice(format!("{:>8} {} ", st.st_size, date_string(st.st_mtime, now)).as_bytes());
    out.extend_from_slice(name);
    out
}

/// A field left-aligned to `width` and a separating space, like `%-8s ` (names are bytes).
fn push_padded(out: &mut Vec<u8>, field: &[u8], width: usize) {
    out.extend_from_slice(field);
    out.resize(out.len() + width.saturating_sub(field.len()) + 1, b' ');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_match_ls() {
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o40755), "drwxr-xr-x");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o41777), "drwxrwxrwt");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
    }

    #[test]
    fn longname_shows_names_or_numbers() {
        // SAFETY: Stat is plain old data; all-zero is a valid value.
        let mut st: Stat = unsafe { std::mem::zeroed() };
        st.st_mode = 0o100644;
        st.st_nlink = 1;
        st.st_uid = 1000;
        st.st_gid = 4242;
        st.st_size = 123;
        st.st_mtime = 1_614_834_360;
        let accounts = Accounts::parse(b"app:x:1000:1000::/:\n", b"");
        let line = longname(b"f.txt", &st, 1_614_834_370, &accounts);
        assert_eq!(String::from_utf8(line).unwrap(), "-rw-r--r--   1 app      4242          123 Mar  4 05:06 f.txt");
    }

    #[test]
    fn dates_match_ls() {
        // 2021-03-04 05:06:00 UTC
        let t = 1_614_834_360;
        assert_eq!(date_string(t, t + 10), "Mar  4 05:06");
        assert_eq!(date_string(t, t + 400 * 86_400), "Mar  4  2021");
    }
}
