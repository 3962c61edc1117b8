//! Client bytes made safe for a log line, like OpenSSH's strnvis(3): a path that holds a newline,
//! a carriage return or an ESC sequence cannot forge a line of its own or repaint a terminal,
//! in any log format, and names that are not UTF-8 are shown exactly instead of lossily.

use std::fmt::{self, Write};

/// Displays bytes with `\` as `\\`, newline, CR and tab as `\n`, `\r`, `\t`, other control
/// characters (C0, DEL, C1, line separators, bidi overrides) and bytes that are not UTF-8 as
/// `\xNN` per byte; everything else as it is.
pub struct Visible<'a>(pub &'a [u8]);

impl fmt::Display for Visible<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    c if is_unsafe(c) => {
                        for b in c.encode_utf8(&mut [0; 4]).bytes() {
                            write!(f, "\\x{b:02x}")?;
                        }
                    }
                    c => f.write_char(c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Characters that move the cursor, end a line in some viewers or reorder what is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_backslashes_and_invalid_utf8_are_escaped() {
        let shown = Visible(b"a\nb\r\tc\x1b[31m\x7f\\d\xe9t\xc3\xa9\xc2\x85\xe2\x80\xae").to_string();
        assert_eq!(shown, "a\\nb\\r\\tc\\x1b[31m\\x7f\\\\d\\xe9t\u{e9}\\xc2\\x85\\xe2\\x80\\xae");
        assert!(!shown.chars().any(is_unsafe));
    }

    #[test]
    fn ordinary_names_are_unchanged() {
        assert_eq!(Visible("/dir/Grüße 1.txt".as_bytes()).to_string(), "/dir/Grüße 1.txt");
    }
}
