//! Forward-confirmed reverse DNS (FCrDNS) for good-bot families that publish domains instead of
//! (or besides) address lists: the address's PTR name must end in one of the family's domains,
//! and that name must resolve back to the address. Anyone can set a PTR record for their own
//! addresses to `crawl.googlebot.com`; only Google can make `crawl.googlebot.com` resolve to
//! them.
//!
//! The request path never waits for DNS: [`Fcrdns::confirmed_name`] answers from a bounded,
//! time-limited cache and, for an address not seen yet, starts one lookup in the background and
//! answers "not known" (unverified) for now. Lookups in flight are capped, new lookups per
//! second are capped, and every lookup has a deadline; results (confirmed and failed alike) are
//! kept for a while so a flood of fake crawler user agents costs one lookup per address.

use std::io;
use std::net::{IpAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Addresses remembered at most (about 100 bytes each).
pub const CACHE_ENTRIES: u64 = 65_536;
/// Lookups running at once at most (each holds one blocking thread while it waits).
pub const MAX_IN_FLIGHT: usize = 16;
/// New lookups started per second at most; beyond it an address stays unverified until later.
pub const MAX_STARTS_PER_SECOND: u32 = 50;
/// How long one lookup (PTR, then forward) may take before it counts as failed.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// How long a confirmed name is trusted.
const CONFIRMED_TTL: Duration = Duration::from_secs(3600);
/// How long a failed lookup is remembered (a fake crawler is not looked up again meanwhile).
const FAILED_TTL: Duration = Duration::from_secs(600);
/// Longest DNS name accepted from a PTR answer.
const MAX_NAME: usize = 253;

/// Name lookups, behind a trait so that the logic can be tested without a network.
pub trait Resolver: Send + Sync + 'static {
    /// The PTR name of `ip`; `Ok(None)` when it has none.
    fn reverse(&self, ip: IpAddr) -> io::Result<Option<String>>;
    /// The addresses `name` resolves to (A and AAAA).
    fn forward(&self, name: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getnameinfo` and `getaddrinfo`, so `/etc/hosts`, `resolv.conf` and
/// nscd apply). Both calls block; they run on Tokio's blocking pool.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn reverse(&self, ip: IpAddr) -> io::Result<Option<String>> {
        reverse_lookup(ip)
    }

    fn forward(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        Ok((name, 0u16).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
}

/// `getnameinfo(NI_NAMEREQD)`: the PTR name, or `None` when the address has none.
fn reverse_lookup(ip: IpAddr) -> io::Result<Option<String>> {
    let mut host = [0 as libc::c_char; 1025];
    let rc = match ip {
        IpAddr::V4(v4) => {
            // SAFETY: a zeroed sockaddr_in is a valid value; we pass its exact size, and
            // `host` is a writable buffer of the length we pass.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr = libc::in_addr {
                s_addr: u32::from(v4).to_be(),
            };
            unsafe {
                libc::getnameinfo(
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    host.as_mut_ptr(),
                    (host.len() - 1) as libc::socklen_t,
                    std::ptr::null_mut(),
                    0,
                    libc::NI_NAMEREQD,
                )
            }
        }
        IpAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr = libc::in6_addr {
                s6_addr: v6.octets(),
            };
            unsafe {
                libc::getnameinfo(
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    host.as_mut_ptr(),
                    (host.len() - 1) as libc::socklen_t,
                    std::ptr::null_mut(),
                    0,
                    libc::NI_NAMEREQD,
                )
            }
        }
    };
    match rc {
        0 => {
            // SAFETY: getnameinfo was given one byte less than the buffer, so the last byte is
            // still 0 whatever it wrote and the scan for the terminating NUL stays inside it.
            let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
            Ok(Some(name.to_string_lossy().into_owned()))
        }
        libc::EAI_NONAME => Ok(None),
        other => Err(io::Error::other(format!("getnameinfo failed ({other})"))),
    }
}

/// Whether `name` (a PTR name, any case, maybe with a trailing dot) ends in one of `suffixes`
/// (lowercase, each starting with a dot, as the family files guarantee).
pub fn suffix_matches(name: &str, suffixes: &[String]) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > MAX_NAME {
        return false;
    }
    suffixes.iter().any(|s| {
        name.len() > s.len()
            && name
                .get(name.len() - s.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
    })
}

/// A plausible host name: ASCII letters, digits, `-` and `.`, not too long, no empty label.
fn plausible_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// One full FCrDNS check, blocking: the PTR name of `ip` if it resolves back to `ip`.
pub fn confirm(resolver: &dyn Resolver, ip: IpAddr) -> Option<String> {
    let name = resolver.reverse(ip).ok()??;
    if !plausible_name(&name) {
        return None;
    }
    let addrs = resolver.forward(&name).ok()?;
    let want = qalqan_net::cidr::canonical_ip(ip);
    addrs
        .into_iter()
        .any(|a| qalqan_net::cidr::canonical_ip(a) == want)
        .then(|| name.to_ascii_lowercase())
}

/// What is known about an address.
#[derive(Clone, Debug)]
enum Known {
    /// A lookup is running.
    Pending,
    /// Its PTR name, forward-confirmed.
    Confirmed(Arc<str>),
    /// No name, a name that does not resolve back, or a failed lookup.
    Failed,
}

/// Per-entry lifetimes: a pending entry lives as long as a lookup may take, so a lookup whose
/// task was lost cannot pin an address as "pending" forever.
struct Lifetimes;

impl moka::Expiry<IpAddr, Known> for Lifetimes {
    fn expire_after_create(&self, _: &IpAddr, v: &Known, _: Instant) -> Option<Duration> {
        Some(lifetime(v))
    }

    fn expire_after_update(
        &self,
        _: &IpAddr,
        v: &Known,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(lifetime(v))
    }
}

fn lifetime(v: &Known) -> Duration {
    match v {
        Known::Pending => LOOKUP_DEADLINE + Duration::from_secs(1),
        Known::Confirmed(_) => CONFIRMED_TTL,
        Known::Failed => FAILED_TTL,
    }
}

/// Lookup outcomes, for the metrics.
#[derive(Default)]
struct Counters {
    started: AtomicU64,
    confirmed: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

/// The FCrDNS cache and the bounded background lookups behind it.
pub struct Fcrdns {
    cache: moka::sync::Cache<IpAddr, Known>,
    permits: Arc<Semaphore>,
    /// `second << 32 | starts in that second`.
    starts: AtomicU64,
    resolver: Arc<dyn Resolver>,
    deadline: Duration,
    counters: Arc<Counters>,
    enabled: bool,
}

impl Fcrdns {
    /// FCrDNS through `resolver`.
    pub fn new(resolver: Arc<dyn Resolver>) -> Self {
        Self::with_deadline(resolver, LOOKUP_DEADLINE)
    }

    /// FCrDNS through `resolver` with a deadline per lookup (tests use a short one).
    pub fn with_deadline(resolver: Arc<dyn Resolver>, deadline: Duration) -> Self {
        Fcrdns {
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(Lifetimes)
                .build(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            starts: AtomicU64::new(0),
            resolver,
            deadline,
            counters: Arc::default(),
            enabled: true,
        }
    }

    /// One that never looks anything up (the answer is always "not known").
    pub fn disabled() -> Self {
        let mut f = Self::new(Arc::new(SystemResolver));
        f.enabled = false;
        f
    }

    /// The forward-confirmed PTR name of `ip` if one is known now. When nothing is known yet,
    /// starts a background lookup (within the caps) and returns `None`: never waits.
    pub fn confirmed_name(&self, ip: IpAddr) -> Option<Arc<str>> {
        if !self.enabled {
            return None;
        }
        let ip = qalqan_net::cidr::canonical_ip(ip);
        match self.cache.get(&ip) {
            Some(Known::Confirmed(name)) => return Some(name),
            Some(Known::Pending | Known::Failed) => return None,
            None => {}
        }
        self.start(ip);
        None
    }

    /// Starts a lookup of `ip` if the caps allow it.
    fn start(&self, ip: IpAddr) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.start_allowed() {
            self.counters.skipped.fetch_add(1, Relaxed);
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.counters.skipped.fetch_add(1, Relaxed);
            return;
        };
        // Two requests may race past the cache check; the second start is harmless (one more
        // lookup of the same address within the caps).
        self.cache.insert(ip, Known::Pending);
        self.counters.started.fetch_add(1, Relaxed);
        let (cache, resolver, counters, deadline) = (
            self.cache.clone(),
            self.resolver.clone(),
            self.counters.clone(),
            self.deadline,
        );
        handle.spawn(async move {
            // The permit travels into the blocking call and is released only when the call
            // returns, so even lookups that outlive their deadline stay within the cap.
            let job = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                confirm(&*resolver, ip)
            });
            let known = match tokio::time::timeout(deadline, job).await {
                Ok(Ok(Some(name))) => Known::Confirmed(name.into()),
                _ => Known::Failed,
            };
            match known {
                Known::Confirmed(_) => counters.confirmed.fetch_add(1, Relaxed),
                _ => counters.failed.fetch_add(1, Relaxed),
            };
            cache.insert(ip, known);
        });
    }

    /// Takes one of this second's lookup starts, if any is left.
    fn start_allowed(&self) -> bool {
        let sec = qalqan_limits::now_ms() / 1000;
        loop {
            let cur = self.starts.load(Relaxed);
            let (s, n) = (cur >> 32, cur & 0xffff_ffff);
            let next = if s == sec & 0xffff_ffff {
                if n >= u64::from(MAX_STARTS_PER_SECOND) {
                    return false;
                }
                cur + 1
            } else {
                ((sec & 0xffff_ffff) << 32) | 1
            };
            if self
                .starts
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Appends the lookup counters in the Prometheus text format.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write as _;
        o.push_str("# HELP qalqan_shield_goodbot_fcrdns_total Forward-confirmed reverse DNS lookups of claimed good bots: started, confirmed, failed, and skipped over the caps.\n# TYPE qalqan_shield_goodbot_fcrdns_total counter\n");
        let c = &self.counters;
        for (k, v) in [
            ("started", &c.started),
            ("confirmed", &c.confirmed),
            ("failed", &c.failed),
            ("skipped", &c.skipped),
        ] {
            let _ = writeln!(
                o,
                "qalqan_shield_goodbot_fcrdns_total{{result=\"{k}\"}} {}",
                v.load(Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The real resolver cannot be reached from the machine these tests run on (no network),
    //! so they drive the logic through a fake [`Resolver`] with fixed answers.

    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    /// Addresses from the documentation ranges.
    const DOC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const DOC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

    #[derive(Default)]
    struct FakeDns {
        ptr: HashMap<IpAddr, String>,
        a: HashMap<String, Vec<IpAddr>>,
        calls: AtomicUsize,
        delay: Option<Duration>,
        seen: Mutex<Vec<IpAddr>>,
    }

    impl Resolver for FakeDns {
        fn reverse(&self, ip: IpAddr) -> io::Result<Option<String>> {
            self.calls.fetch_add(1, Relaxed);
            self.seen.lock().unwrap().push(ip);
            if let Some(d) = self.delay {
                std::thread::sleep(d);
            }
            Ok(self.ptr.get(&ip).cloned())
        }
        fn forward(&self, name: &str) -> io::Result<Vec<IpAddr>> {
            Ok(self
                .a
                .get(&name.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default())
        }
    }

    fn suffixes(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn suffixes_match_whole_labels_only() {
        let g = suffixes(&[".googlebot.com", ".google.com"]);
        assert!(suffix_matches("crawl-66-249-66-1.googlebot.com", &g));
        assert!(suffix_matches("CRAWL-66-249-66-1.GoogleBot.com.", &g));
        assert!(suffix_matches("rate-limited-proxy-1.google.com", &g));
        assert!(!suffix_matches("evilgooglebot.com", &g));
        assert!(!suffix_matches("googlebot.com.evil.net", &g));
        assert!(
            !suffix_matches("googlebot.com", &g),
            "the bare domain is no crawler"
        );
        assert!(!suffix_matches("", &g));
        assert!(!suffix_matches(&"a".repeat(300), &g));
        assert!(!suffix_matches("x.googlebot.com", &[]));
    }

    #[test]
    fn forward_confirmation_is_required() {
        let ip = IpAddr::V4(DOC4);
        let mut dns = FakeDns::default();
        dns.ptr.insert(ip, "crawl-1.googlebot.com.".into());
        // The PTR says Google, but the name does not resolve back to the address: a lie.
        dns.a.insert(
            "crawl-1.googlebot.com.".into(),
            vec!["66.249.66.1".parse().unwrap()],
        );
        assert_eq!(confirm(&dns, ip), None);
        dns.a.insert("crawl-1.googlebot.com.".into(), vec![ip]);
        assert_eq!(confirm(&dns, ip).as_deref(), Some("crawl-1.googlebot.com."));
        // An IPv4 client seen as IPv4-mapped IPv6 is the same address.
        let mapped = IpAddr::V6(DOC4.to_ipv6_mapped());
        assert!(
            confirm(&dns, mapped).is_none(),
            "PTR is asked for the address as given"
        );
        let v6 = IpAddr::V6(DOC6);
        dns.ptr.insert(v6, "x.search.msn.com".into());
        dns.a.insert("x.search.msn.com".into(), vec![v6]);
        assert!(confirm(&dns, v6).is_some());
    }

    #[test]
    fn implausible_ptr_names_are_refused_before_any_forward_lookup() {
        let ip = IpAddr::V4(DOC4);
        for bad in [
            "",
            "a..googlebot.com",
            "crawl googlebot.com",
            "crawl/x.googlebot.com",
        ] {
            let mut dns = FakeDns::default();
            dns.ptr.insert(ip, bad.into());
            dns.a.insert(bad.to_string(), vec![ip]);
            assert_eq!(confirm(&dns, ip), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_first_request_is_unverified_and_a_later_one_verified() {
        let ip = IpAddr::V4(DOC4);
        let mut dns = FakeDns::default();
        dns.ptr.insert(ip, "crawl-1.googlebot.com".into());
        dns.a.insert("crawl-1.googlebot.com".into(), vec![ip]);
        let dns = Arc::new(dns);
        let f = Fcrdns::new(dns.clone());
        assert!(f.confirmed_name(ip).is_none(), "never waits for DNS");
        let mut name = None;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            name = f.confirmed_name(ip);
            if name.is_some() {
                break;
            }
        }
        assert_eq!(name.as_deref(), Some("crawl-1.googlebot.com"));
        assert_eq!(dns.calls.load(Relaxed), 1, "one lookup, then the cache");
    }

    #[tokio::test]
    async fn failures_are_cached_and_lookups_are_capped() {
        let dns = Arc::new(FakeDns {
            delay: Some(Duration::from_millis(300)),
            ..FakeDns::default()
        });
        let f = Fcrdns::with_deadline(dns.clone(), Duration::from_millis(100));
        // Many distinct addresses at once: at most MAX_IN_FLIGHT lookups start.
        for i in 0..200u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0xC000_0200 + i));
            assert!(f.confirmed_name(ip).is_none());
        }
        let started = f.counters.started.load(Relaxed);
        assert_eq!(started, MAX_IN_FLIGHT as u64);
        assert_eq!(f.counters.skipped.load(Relaxed), 200 - started);
        // The deadline turns slow lookups into cached failures.
        let first = IpAddr::V4(Ipv4Addr::from(0xC000_0200));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(matches!(f.cache.get(&first), Some(Known::Failed)));
        assert!(f.confirmed_name(first).is_none());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let calls = dns.calls.load(Relaxed);
        assert_eq!(
            calls, MAX_IN_FLIGHT,
            "a failed address is not looked up again"
        );
    }

    /// The real resolver's FFI path, through the local hosts file only (no network): loopback
    /// is named `localhost` on every machine whose `/etc/hosts` says so; elsewhere it skips.
    #[test]
    fn the_system_resolver_confirms_loopback_through_the_hosts_file() {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let named = hosts.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("127.0.0.1") && w.next() == Some("localhost")
        });
        if !named {
            eprintln!("skipped: /etc/hosts does not name 127.0.0.1 `localhost` first");
            return;
        }
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(
            SystemResolver.reverse(lo).unwrap().as_deref(),
            Some("localhost")
        );
        assert_eq!(confirm(&SystemResolver, lo).as_deref(), Some("localhost"));
    }

    #[test]
    fn without_a_runtime_nothing_is_started_and_nothing_panics() {
        let dns = Arc::new(FakeDns::default());
        let f = Fcrdns::new(dns.clone());
        assert!(f.confirmed_name(IpAddr::V4(DOC4)).is_none());
        assert_eq!(dns.calls.load(Relaxed), 0);
    }

    #[test]
    fn starts_per_second_are_capped() {
        let f = Fcrdns::new(Arc::new(FakeDns::default()));
        let allowed = (0..1000).filter(|_| f.start_allowed()).count();
        // A second boundary may fall inside the loop: at most two seconds' worth.
        assert!(
            (MAX_STARTS_PER_SECOND as usize..=2 * MAX_STARTS_PER_SECOND as usize)
                .contains(&allowed),
            "{allowed}"
        );
    }
}
