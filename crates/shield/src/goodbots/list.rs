//! The text format of one good-bot family file (`crates/shield/data/goodbots/*.txt`, or a file
//! in `goodbots.ranges_dir`).
//!
//! One item per line; blank lines and lines starting with `#` are comments (the header of each
//! shipped file says where its ranges were published and when they were copied):
//!
//! ```text
//! family googlebot          # exactly once: the name used in metrics ([a-z0-9_-], ≤ 32)
//! ua Googlebot              # a user-agent substring that claims the family (≥ 1, ≤ 16)
//! rdns .googlebot.com       # a PTR-name suffix for forward-confirmed reverse DNS (≤ 8)
//! 66.249.64.0/27            # a published network (or a bare address)
//! ```
//!
//! The parser never panics, whatever the bytes, and reports every bad line with its number,
//! so a fresher list dropped into `ranges_dir` with one typo is refused with a useful message
//! instead of silently verifying nothing.

use std::net::IpAddr;

use ipnet::IpNet;

/// Largest file read (the largest published list, DuckDuckBot's, is under 10 KB).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// User-agent substrings per family.
pub const MAX_USER_AGENTS: usize = 16;
/// Reverse-DNS suffixes per family.
pub const MAX_RDNS: usize = 8;
/// Networks per family.
pub const MAX_RANGES: usize = 65_536;
/// Longest family name (it becomes a metric label).
pub const MAX_NAME: usize = 32;
/// Bad lines reported at most per file; the rest are counted.
const MAX_REPORTED: usize = 20;

/// One family as written in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyList {
    /// The family's name.
    pub name: String,
    /// Substrings of the User-Agent that claim the family (matched ignoring ASCII case).
    pub user_agents: Vec<String>,
    /// PTR-name suffixes, lowercase, each starting with a dot.
    pub rdns: Vec<String>,
    /// Published networks, host bits clear.
    pub ranges: Vec<IpNet>,
}

/// A problem in a family file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number; 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// Parses one family file. On failure returns every problem (the first [`MAX_REPORTED`] bad
/// lines, then a count of the rest).
pub fn parse(text: &str) -> Result<FamilyList, Vec<LineError>> {
    let mut errors = Vec::new();
    let mut more = 0usize;
    let mut err = |line: usize, message: String| {
        if errors.len() < MAX_REPORTED {
            errors.push(LineError { line, message });
        } else {
            more += 1;
        }
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![LineError {
            line: 0,
            message: format!("larger than {MAX_FILE_BYTES} bytes"),
        }]);
    }
    let mut name: Option<String> = None;
    let mut user_agents: Vec<String> = Vec::new();
    let mut rdns: Vec<String> = Vec::new();
    let mut ranges: Vec<IpNet> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((w, r)) => (w, r.trim()),
            None => (line, ""),
        };
        match word {
            "family" => match check_name(rest) {
                Ok(()) if name.is_none() => name = Some(rest.to_string()),
                Ok(()) => err(n, "`family` is given twice".into()),
                Err(m) => err(n, m),
            },
            "ua" => match check_user_agent(rest) {
                Ok(()) if user_agents.len() >= MAX_USER_AGENTS => {
                    err(n, format!("more than {MAX_USER_AGENTS} `ua` lines"))
                }
                Ok(()) => user_agents.push(rest.to_string()),
                Err(m) => err(n, m),
            },
            "rdns" => match check_suffix(rest) {
                Ok(_) if rdns.len() >= MAX_RDNS => {
                    err(n, format!("more than {MAX_RDNS} `rdns` lines"))
                }
                Ok(s) => rdns.push(s),
                Err(m) => err(n, m),
            },
            _ if !rest.is_empty() => err(
                n,
                format!(
                    "`{}` is neither `family`, `ua`, `rdns` nor a network",
                    shorten(word)
                ),
            ),
            _ => match parse_net(line) {
                Ok(_) if ranges.len() >= MAX_RANGES => {
                    err(n, format!("more than {MAX_RANGES} networks"))
                }
                Ok(net) => ranges.push(net),
                Err(m) => err(n, m),
            },
        }
    }
    if name.is_none() {
        err(0, "no `family NAME` line".into());
    }
    if user_agents.is_empty() {
        err(
            0,
            "no `ua` line: nothing could ever claim this family".into(),
        );
    }
    if more > 0 {
        errors.push(LineError {
            line: 0,
            message: format!("{more} more bad line(s) not shown"),
        });
    }
    match name {
        Some(name) if errors.is_empty() => Ok(FamilyList {
            name,
            user_agents,
            rdns,
            ranges,
        }),
        _ => Err(errors),
    }
}

fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(format!("a family name has 1 to {MAX_NAME} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "family name `{}`: use a-z, 0-9, `-` and `_` only",
            shorten(s)
        ));
    }
    Ok(())
}

fn check_user_agent(s: &str) -> Result<(), String> {
    // Shorter substrings would claim half the web ("bot"); longer ones are not names.
    if !(3..=64).contains(&s.len()) {
        return Err("a `ua` substring has 3 to 64 characters".into());
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("a `ua` substring is printable ASCII".into());
    }
    Ok(())
}

/// Checks and lowercases a PTR-name suffix such as `.googlebot.com`.
fn check_suffix(s: &str) -> Result<String, String> {
    let s = s.to_ascii_lowercase();
    let Some(domain) = s.strip_prefix('.') else {
        return Err(
            "an `rdns` suffix starts with a dot (`.googlebot.com`), so `evilgooglebot.com` does not match"
                .into(),
        );
    };
    if domain.len() > 253 || !domain.contains('.') {
        return Err("an `rdns` suffix names a domain with at least two labels".into());
    }
    let labels_ok = domain.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if !labels_ok {
        return Err(format!("`{}` is not a domain suffix", shorten(&s)));
    }
    Ok(s)
}

/// A network (`192.0.2.0/24`) or a bare address; host bits must be clear.
fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "`{}` has host bits set (did you mean {}?)",
                shorten(s),
                net.trunc()
            ));
        }
        return Ok(net);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err(format!("`{}` is not a network or an address", shorten(s))),
    }
}

/// At most 40 characters of untrusted text in a message.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().nth(40).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "# comment\n\nfamily examplebot\nua ExampleBot\nrdns .Example.COM\n192.0.2.0/24\n2001:db8::/32\n198.51.100.7\n";

    #[test]
    fn a_good_file_parses() {
        let f = parse(GOOD).expect("valid");
        assert_eq!(f.name, "examplebot");
        assert_eq!(f.user_agents, vec!["ExampleBot".to_string()]);
        assert_eq!(f.rdns, vec![".example.com".to_string()]);
        assert_eq!(f.ranges.len(), 3);
        assert_eq!(f.ranges[2].to_string(), "198.51.100.7/32");
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "family x\nua ExampleBot\n10.0.0.1/8\nrdns example.com\nua ab\nnonsense here\n300.1.1.1\nfamily y\n";
        let errs = parse(text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8], "{errs:?}");
        assert!(errs[0].message.contains("10.0.0.0/8"), "{}", errs[0]);
    }

    #[test]
    fn a_file_without_name_or_user_agent_is_refused() {
        let errs = parse("192.0.2.0/24\n").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().all(|e| e.line == 0));
    }

    #[test]
    fn suffixes_must_start_with_a_dot_and_be_domains() {
        assert!(check_suffix("googlebot.com").is_err());
        assert!(check_suffix(".com").is_err());
        assert!(check_suffix(".goo gle.com").is_err());
        assert!(check_suffix(".a..b").is_err());
        assert_eq!(check_suffix(".Search.MSN.com").unwrap(), ".search.msn.com");
    }

    #[test]
    fn huge_files_and_many_errors_are_bounded() {
        let big = "x".repeat(MAX_FILE_BYTES + 1);
        assert_eq!(parse(&big).unwrap_err().len(), 1);
        let many = "family f\nua SomeBot\n".to_string() + &"bad-line x\n".repeat(1000);
        let errs = parse(&many).unwrap_err();
        assert_eq!(errs.len(), MAX_REPORTED + 1);
        assert!(errs[MAX_REPORTED].message.contains("980 more"));
    }

    #[test]
    fn every_shipped_file_parses() {
        for (file, text) in super::super::BUILTIN {
            let f = parse(text).unwrap_or_else(|e| panic!("{file}: {e:?}"));
            assert_eq!(format!("{}.txt", f.name), *file, "file name matches family");
            assert!(
                text.lines().take(3).all(|l| l.starts_with('#')),
                "{file} starts with a header saying where its data came from"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC{0,400}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&String::from_utf8_lossy(&b));
        }

        #[test]
        fn a_malformed_line_is_reported_at_its_line(
            nets in proptest::collection::vec((any::<u32>(), 8u8..=32), 0..20),
            at in 0usize..25,
            junk in "[g-z]{1,12}",
        ) {
            let mut lines = vec!["family testbot".to_string(), "ua TestBot".to_string()];
            for (a, len) in nets {
                let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap().trunc();
                lines.push(net.to_string());
            }
            let at = at.min(lines.len());
            lines.insert(at, junk);
            let errs = parse(&lines.join("\n")).unwrap_err();
            prop_assert_eq!(errs.len(), 1, "{:?}", errs);
            prop_assert_eq!(errs[0].line, at + 1);
        }
    }
}
