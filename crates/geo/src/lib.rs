//! IP address to country and to autonomous system (ASN), so that an attack episode can say
//! where a flood came from ("80% from AS9198 JSC Kazakhtelecom, KZ") and not only which
//! addresses sent it.
//!
//! The data are two sorted range tables per address family, loaded once at start from compact
//! gzip text files ([`format`]): the country table (ISO 3166-1 alpha-2 codes) and the ASN table
//! (numbers with interned organisation names). The files built from the free
//! `@ip-location-db` packages are embedded in the binary ([`Geo::embedded`]), so the one binary
//! works from any directory; fresher files built by `qalqan geo build` can be loaded from a
//! directory instead ([`Geo::load_dir`]).
//!
//! A lookup is a binary search over a sorted vector: no IO, no allocation, no lock. IPv6 is
//! kept per /64 (one subscriber's network), which halves the memory of the IPv6 tables.
//!
//! What this crate must never do: panic on a malformed file (every problem is an [`Error`]
//! naming the file and line), read a file after loading, or grow after loading.
//!
//! **API boundary:** [`Geo`] answers questions; the shield decides when to ask them (only while
//! an attack episode is open). The converter from the upstream MMDB and CSV files is behind the
//! `build` feature, used by the `qalqan` binary only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Loaded files are input like any other: outside tests, indexing, unwrap, expect and explicit
// panics are compile errors.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

#[cfg(feature = "build")]
pub mod build;
pub mod format;

use std::fmt;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use format::{AsnData, CountryData};

/// The country file's name inside a data directory.
pub const COUNTRY_FILE: &str = "country.txt.gz";
/// The ASN file's name inside a data directory.
pub const ASN_FILE: &str = "asn.txt.gz";

/// The most bytes a data file may hold once decompressed. The shipped files are about 15 MB
/// together; this bound only stops a corrupt or hostile file from exhausting memory.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// The data built into the binary (see `data/geo/README.md` for sources and licences).
static EMBEDDED_COUNTRY: &[u8] = include_bytes!("../../../data/geo/country.txt.gz");
static EMBEDDED_ASN: &[u8] = include_bytes!("../../../data/geo/asn.txt.gz");

/// A problem with a data file: which file, which line (when the problem is in its content),
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The file could not be read or decompressed.
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A line of the file is malformed.
    #[error("{file}:{line}: {message}")]
    Data {
        /// The file.
        file: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong, and what was expected.
        message: String,
    },
}

/// An autonomous system: its number and the organisation that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asn<'a> {
    /// The AS number, e.g. 9198.
    pub number: u32,
    /// The organisation, e.g. `JSC Kazakhtelecom` (interned: borrowed from the [`Geo`]).
    pub org: &'a str,
}

/// Country and ASN tables, loaded once, looked up without IO.
pub struct Geo {
    country: CountryData,
    asn: AsnData,
}

impl fmt::Debug for Geo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Geo")
            .field("country_ranges", &self.country.ranges())
            .field("asn_ranges", &self.asn.ranges())
            .field("systems", &self.asn.systems())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

impl Geo {
    /// The data built into the binary, decompressed and parsed on first use and shared by every
    /// caller afterwards (figures in `data/geo/README.md`).
    pub fn embedded() -> Result<Arc<Geo>, Error> {
        static ONCE: OnceLock<Result<Arc<Geo>, Error>> = OnceLock::new();
        ONCE.get_or_init(|| {
            Geo::from_gz(
                EMBEDDED_COUNTRY,
                "(embedded) data/geo/country.txt.gz",
                EMBEDDED_ASN,
                "(embedded) data/geo/asn.txt.gz",
            )
            .map(Arc::new)
        })
        .clone()
    }

    /// Loads `country.txt.gz` and `asn.txt.gz` from `dir` (as written by `qalqan geo build`).
    pub fn load_dir(dir: &Path) -> Result<Geo, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| Error::Read {
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
            Ok::<_, Error>((bytes, path.display().to_string()))
        };
        let (country, country_name) = read(COUNTRY_FILE)?;
        let (asn, asn_name) = read(ASN_FILE)?;
        Geo::from_gz(&country, &country_name, &asn, &asn_name)
    }

    /// Parses gzip-compressed country and ASN files; the names are used in errors only.
    pub fn from_gz(
        country: &[u8],
        country_name: &str,
        asn: &[u8],
        asn_name: &str,
    ) -> Result<Geo, Error> {
        // Decompressed as it is parsed: the text (three times the size of the tables) never
        // sits in memory whole.
        let country = format::parse_country(gunzip(country), country_name)?;
        let asn = format::parse_asn(gunzip(asn), asn_name)?;
        Ok(Geo { country, asn })
    }

    /// Parses uncompressed country and ASN text (the format of [`format`]).
    pub fn from_text(
        country: &[u8],
        country_name: &str,
        asn: &[u8],
        asn_name: &str,
    ) -> Result<Geo, Error> {
        Ok(Geo {
            country: format::parse_country(country, country_name)?,
            asn: format::parse_asn(asn, asn_name)?,
        })
    }

    /// The country of `ip` (ISO 3166-1 alpha-2, upper case), if the data knows it. Private,
    /// reserved and unassigned addresses have none.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        if is_special(ip) {
            return None;
        }
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.country.v4(v4.to_bits()),
            IpAddr::V6(v6) => self.country.v6((v6.to_bits() >> 64) as u64),
        }
    }

    /// The autonomous system announcing `ip`, if the data knows it. Private and reserved
    /// addresses have none.
    pub fn asn(&self, ip: IpAddr) -> Option<Asn<'_>> {
        if is_special(ip) {
            return None;
        }
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.asn.v4(v4.to_bits()),
            IpAddr::V6(v6) => self.asn.v6((v6.to_bits() >> 64) as u64),
        }
    }

    /// The organisation of AS `number`, if the data names it.
    pub fn org(&self, number: u32) -> Option<&str> {
        self.asn.org(number)
    }

    /// Heap and inline bytes held by the tables (the figure that stays after loading).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.country.heap_bytes() + self.asn.heap_bytes()
    }

    /// The `#` comment lines of the country and ASN files: where the data came from and when.
    pub fn provenance(&self) -> (&[String], &[String]) {
        (self.country.comments(), self.asn.comments())
    }
}

/// Private, shared, loopback, link-local, documentation, benchmarking, multicast and reserved
/// addresses, and IPv6 outside global unicast (2000::/3). They never get a country or an AS,
/// whatever a data file says: the shipped upstream country data names 172.16.0.0/12 and
/// 192.168.0.0/16 as Australia, and a shield behind a NAT or in a container sees such addresses.
pub fn is_special(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let [b0, b1, ..] = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || b0 == 0
                || b0 >= 240
                || (b0 == 100 && (64..128).contains(&b1))
                || (b0 == 198 && (b1 == 18 || b1 == 19))
                || (b0 == 192 && b1 == 0 && a.octets().get(2) == Some(&0))
        }
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            bits >> 125 != 1 || bits >> 96 == 0x2001_0db8
        }
    }
}

/// A reader of a gzip file's text, of at most [`MAX_TEXT_BYTES`] (a longer one reads as cut
/// short, which the format detects).
fn gunzip(bytes: &[u8]) -> impl std::io::BufRead + '_ {
    std::io::BufReader::with_capacity(64 << 10, flate2::read::GzDecoder::new(bytes))
        .take(MAX_TEXT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn geo() -> Arc<Geo> {
        Geo::embedded().expect("the embedded data loads")
    }

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    // Expected values were read from the upstream files with independent tools (python's
    // `maxminddb` on the MMDB and `grep` on the CSV), not from this crate; see the report in
    // data/geo/README.md.
    #[test]
    fn well_known_ipv4_addresses() {
        let g = geo();
        let cf = g.asn(v4("1.1.1.1")).unwrap();
        assert_eq!(cf.number, 13335);
        assert_eq!(cf.org, "Cloudflare, Inc.");
        let google = g.asn(v4("8.8.8.8")).unwrap();
        assert_eq!((google.number, google.org), (15169, "Google LLC"));
        assert_eq!(g.country(v4("8.8.8.8")), Some(*b"US"));
        assert_eq!(g.country(v4("1.1.1.1")), Some(*b"AU"));
        for kz in ["95.56.0.1", "2.132.0.1", "178.89.0.1"] {
            assert_eq!(g.country(v4(kz)), Some(*b"KZ"), "{kz}");
            let a = g.asn(v4(kz)).unwrap();
            assert_eq!((a.number, a.org), (9198, "JSC Kazakhtelecom"), "{kz}");
        }
        let beeline = g.asn(v4("5.34.0.1")).unwrap();
        assert_eq!((beeline.number, beeline.org), (21299, "Kar-Tel LLC"));
    }

    #[test]
    fn private_and_reserved_addresses_have_nothing() {
        let g = geo();
        // 172.16/12 and 192.168/16 are "AU" in the upstream country data.
        for ip in [
            "10.0.0.1",
            "127.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert_eq!(g.country(v4(ip)), None, "{ip}");
            assert_eq!(g.asn(v4(ip)), None, "{ip}");
        }
        for ip in ["::1", "fe80::1", "fd00::1", "::", "2001:db8::1", "ff02::1"] {
            assert_eq!(g.country(v6(ip)), None, "{ip}");
            assert_eq!(g.asn(v6(ip)), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_and_ipv4_mapped_addresses() {
        let g = geo();
        // Google Public DNS over IPv6, Cloudflare's resolver, Kazakhtelecom's IPv6 block.
        assert_eq!(g.asn(v6("2001:4860:4860::8888")).unwrap().number, 15169);
        assert_eq!(g.asn(v6("2606:4700:4700::1111")).unwrap().number, 13335);
        assert_eq!(g.country(v6("2a03:2880:f003::1")), Some(*b"IE"));
        // An IPv4-mapped address is the IPv4 address.
        assert_eq!(g.asn(v6("::ffff:95.56.0.1")).unwrap().number, 9198);
        assert_eq!(g.country(v6("::ffff:95.56.0.1")), Some(*b"KZ"));
    }

    #[test]
    fn org_names_by_number_and_memory_is_stated() {
        let g = geo();
        assert_eq!(g.org(9198), Some("JSC Kazakhtelecom"));
        assert_eq!(g.org(0), None);
        let mem = g.memory_bytes();
        assert!(mem > 1 << 20 && mem < 32 << 20, "{mem}");
        let (c, a) = g.provenance();
        assert!(
            c.iter().any(|l| l.contains("geo-whois-asn-country")),
            "{c:?}"
        );
        assert!(a.iter().any(|l| l.contains("@ip-location-db/asn")), "{a:?}");
    }

    #[test]
    fn special_addresses() {
        for ip in [
            "172.31.255.255",
            "192.0.0.8",
            "240.0.0.1",
            "::ffff:10.1.2.3",
        ] {
            assert!(is_special(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "172.32.0.1",
            "192.0.1.1",
            "8.8.8.8",
            "2a02::1",
            "100.128.0.1",
        ] {
            assert!(!is_special(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn bad_gzip_is_an_error_naming_the_file() {
        let e = Geo::from_gz(b"not gzip", "c.gz", b"", "a.gz").unwrap_err();
        assert!(e.to_string().starts_with("c.gz:1: cannot read"), "{e}");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let e = Geo::load_dir(Path::new("/nonexistent/qalqan-geo")).unwrap_err();
        assert!(e.to_string().contains("country.txt.gz"), "{e}");
    }
}
