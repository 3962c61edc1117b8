//! User and group names as the served filesystem defines them (its `/etc/passwd` and
//! `/etc/group`): the app container's names, which is what `ls -l`, FileZilla's owner column
//! and `users-groups-by-id@openssh.com` should show. Parsing is pure; the server reads the
//! files through the confined root.
//!
//! The SFTP user can often write these files, so what is taken from them is bounded: a name
//! longer than [`MAX_NAME`] is not a name (its id shows as a number) and at most
//! [`MAX_ENTRIES`] ids are read from each file.

use std::collections::HashMap;

/// Longest name taken (useradd's limit): a planted long name must not bloat every listing.
pub const MAX_NAME: usize = 32;
/// Ids read from each file; containers' files hold a few dozen.
pub const MAX_ENTRIES: usize = 10_000;

/// Names by numeric id; ids without a name are shown as numbers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accounts {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

impl Accounts {
    /// From the contents of `/etc/passwd` and `/etc/group` (either may be empty).
    pub fn parse(passwd: &[u8], group: &[u8]) -> Accounts {
        Accounts { users: names_by_id(passwd), groups: names_by_id(group) }
    }

    pub fn user(&self, uid: u32) -> Option<&[u8]> {
        self.users.get(&uid).map(Vec::as_slice)
    }

    pub fn group(&self, gid: u32) -> Option<&[u8]> {
        self.groups.get(&gid).map(Vec::as_slice)
    }

    /// One name per uid, empty where there is none (the `users-groups-by-id` reply).
    pub fn user_names(&self, uids: &[u32]) -> Vec<Vec<u8>> {
        names_in_order(&self.users, uids)
    }

    pub fn group_names(&self, gids: &[u32]) -> Vec<Vec<u8>> {
        names_in_order(&self.groups, gids)
    }
}

fn names_in_order(names: &HashMap<u32, Vec<u8>>, ids: &[u32]) -> Vec<Vec<u8>> {
    ids.iter().map(|id| names.get(id).cloned().unwrap_or_default()).collect()
}

/// `name:password:id:...` lines, the shape both files share. Like getpwuid(3), the first
/// line with an id wins; comments, blank and malformed lines (names over [`MAX_NAME`] bytes
/// too) are skipped; reading stops at [`MAX_ENTRIES`] ids.
fn names_by_id(content: &[u8]) -> HashMap<u32, Vec<u8>> {
    let mut names = HashMap::new();
    for line in content.split(|&b| b == b'\n') {
        if names.len() >= MAX_ENTRIES {
            break;
        }
        let mut fields = line.split(|&b| b == b':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if name.is_empty() || name.starts_with(b"#") || name.len() > MAX_NAME {
            continue;
        }
        let Some(id) = std::str::from_utf8(id).ok().and_then(|s| s.trim().parse::<u32>().ok()) else { continue };
        names.entry(id).or_insert_with(|| name.to_vec());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passwd_and_group_lines() {
        let passwd = b"root:x:0:0:root:/root:/bin/sh\n# comment\n\nbroken line\napp:x:1000:1000::/app:/sbin/nologin\ntwin:x:1000:1000::/:/bin/sh\nbad:x:notanumber:0::/:\n";
        let group = b"root:x:0:\nstaff:x:50:app,other\n";
        let accounts = Accounts::parse(passwd, group);
        assert_eq!(accounts.user(0), Some(&b"root"[..]));
        assert_eq!(accounts.user(1000), Some(&b"app"[..]), "first line wins");
        assert_eq!(accounts.user(4242), None);
        assert_eq!(accounts.group(50), Some(&b"staff"[..]));
        assert_eq!(accounts.group(1000), None);
        assert_eq!(accounts.user_names(&[1000, 7, 0]), [&b"app"[..], b"", b"root"]);
    }

    #[test]
    fn overlong_names_are_numbers_and_entries_are_capped() {
        let huge = vec![b'A'; 1024 * 1024];
        let passwd = [&huge[..], b":x:0:0::/:\n", &[b'n'; MAX_NAME], b":x:1:1::/:\n"].concat();
        let accounts = Accounts::parse(&passwd, b"");
        assert_eq!(accounts.user(0), None, "a 1 MiB name was taken");
        assert_eq!(accounts.user(1), Some(&[b'n'; MAX_NAME][..]));

        let many: Vec<u8> = (0..MAX_ENTRIES as u32 + 10).flat_map(|id| format!("g{id}:x:{id}:\n").into_bytes()).collect();
        let accounts = Accounts::parse(b"", &many);
        assert_eq!(accounts.groups.len(), MAX_ENTRIES);
        assert_eq!(accounts.group(MAX_ENTRIES as u32), None);
    }

    #[test]
    fn empty_files_mean_numbers() {
        assert_eq!(Accounts::parse(b"", b""), Accounts::default());
    }
}
