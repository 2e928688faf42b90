//! The one TCP accept loop of every listener (steward, key custodian, metrics), and admission of connections that have not authenticated yet.
//!
//! # Why admission is separate from the connection limit
//!
//! A TCP connection costs an attacker nothing and needs no certificate. If
//! it took one of the slots that authenticated peers use, 256 idle
//! connections would lock every source and evaluator out for the whole
//! handshake timeout. So a connection is first only *pending*: it is
//! accepted at once (never left in the kernel's backlog) and admitted
//! under two caps of its own, in all ([`Limits::pending`]) and per remote
//! address ([`Limits::per_address`]). A real client sends its TLS
//! ClientHello at once and completes in milliseconds; a connection that has
//! sent nothing for [`IDLE_GRACE`] is taken for a squatter. So:
//!
//! - past the per-address cap, the oldest *squatter* of that address is
//!   closed to make room (none: the newcomer is admitted all the same — a
//!   burst of real clients behind one address is not refused; the total cap
//!   still holds);
//! - at the total cap, the oldest squatter of all is closed; failing that the
//!   oldest connection that has sent nothing, then the oldest of all (only a
//!   flood of a thousand connections within one handshake's time gets there).
//!
//! Only after the handshake (and identity check) does a connection leave
//! admission and queue for an authenticated slot.
//!
//! Refusals of unauthenticated peers are logged through a [`LogLimiter`]:
//! a flood writes a few lines and a count, not a line per connection.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Caps on connections that have not authenticated yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pending connections in all.
    pub pending: usize,
    /// Pending connections from one remote address.
    pub per_address: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { pending: DEFAULT_PENDING, per_address: DEFAULT_PER_ADDRESS }
    }
}

/// Default cap on pending (unauthenticated) connections in all.
pub const DEFAULT_PENDING: usize = 1024;
/// Default cap on pending connections from one address.
pub const DEFAULT_PER_ADDRESS: usize = 16;
/// A pending connection that has sent nothing for this long is a squatter:
/// the first to be closed when a cap is reached.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

struct Entry {
    ip: IpAddr,
    since: Instant,
    active: bool,
    evict: CancellationToken,
}

#[derive(Default)]
struct State {
    next: u64,
    /// By admission order: the first entry is the oldest.
    pending: BTreeMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.pending.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&e.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
        Some(e)
    }

    /// The oldest entry matching `scope` that has sent nothing since before `squat`.
    fn squatter(&self, squat: Instant, scope: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.pending.iter().find(|(_, e)| !e.active && e.since <= squat && scope(e)).map(|(&id, _)| id)
    }

    /// At the total cap: the oldest squatter, else the oldest that has sent nothing, else the oldest.
    fn any_victim(&self, squat: Instant) -> Option<u64> {
        self.squatter(squat, |_| true)
            .or_else(|| self.pending.iter().find(|(_, e)| !e.active).map(|(&id, _)| id))
            .or_else(|| self.pending.keys().next().copied())
    }
}

/// Admission of pending connections (see the module docs).
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
    evicted: AtomicU64,
}

/// One admitted, still unauthenticated connection. Dropping it (the
/// handshake finished or failed) leaves admission.
pub struct Pending {
    id: u64,
    evict: CancellationToken,
    admission: Arc<Admission>,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        let limits = Limits { pending: limits.pending.max(1), per_address: limits.per_address.max(1) };
        Arc::new(Admission { limits, state: Mutex::new(State::default()), evicted: AtomicU64::new(0) })
    }

    /// Admit a connection from `peer`, evicting the oldest pending one of
    /// its address, or in all, when a cap is reached. Returns how many were
    /// evicted to make room (0 or 1, or 2 when both caps were full).
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> (Pending, u64) {
        self.admit_at(peer, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, peer: SocketAddr, now: Instant) -> (Pending, u64) {
        let ip = canonical(peer.ip());
        let squat = now.checked_sub(IDLE_GRACE).unwrap_or(now);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = 0;
        let mut evict = |st: &mut State, id: Option<u64>| {
            if let Some(e) = id.and_then(|id| st.remove(id)) {
                e.evict.cancel();
                evicted += 1;
            }
        };
        if st.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_address {
            let id = st.squatter(squat, |e| e.ip == ip);
            evict(&mut st, id);
        }
        if st.pending.len() >= self.limits.pending {
            let id = st.any_victim(squat);
            evict(&mut st, id);
        }
        let id = st.next;
        st.next += 1;
        let evict = CancellationToken::new();
        st.pending.insert(id, Entry { ip, since: now, active: false, evict: evict.clone() });
        *st.per_ip.entry(ip).or_insert(0) += 1;
        drop(st);
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        (Pending { id, evict, admission: self.clone() }, evicted)
    }

    /// Pending connections now.
    pub fn pending(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).pending.len()
    }

    /// Pending connections evicted since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

impl Pending {
    /// Resolves when this connection was evicted to make room: close it.
    pub async fn evicted(&self) {
        self.evict.cancelled().await
    }

    /// The peer has sent its first bytes: evict idle connections before this one.
    pub fn mark_active(&self) {
        let mut st = self.admission.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = st.pending.get_mut(&self.id) {
            e.active = true;
        }
    }

    /// Wait until the peer has sent something (then [`Self::mark_active`]), for
    /// at most `within`. (`peek`, not `readable()`: readiness alone can be
    /// reported for a socket with nothing to read.)
    pub async fn first_bytes(&self, tcp: &TcpStream, within: Duration) -> FirstBytes {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(within, tcp.peek(&mut byte)).await {
            Ok(Ok(n)) if n > 0 => {
                self.mark_active();
                FirstBytes::Sent
            }
            Ok(_) => FirstBytes::Closed,
            Err(_) => FirstBytes::TimedOut,
        }
    }
}

/// What a new connection did first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// It sent something: go on with the handshake (or request).
    Sent,
    /// It closed (or failed) without sending anything: nothing to answer or count.
    Closed,
    /// Nothing within the time allowed.
    TimedOut,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut st = self.admission.state.lock().unwrap_or_else(|p| p.into_inner());
        st.remove(self.id);
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they map.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Accept connections on `listener` until `shutdown`, handing each to
/// `on_conn` (which spawns its task). Accept errors (out of file
/// descriptors, say) back off 100 ms instead of spinning, and are logged
/// at most a few times per ten seconds. `what` names the listener in logs.
pub async fn serve(
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    let errors = LogLimiter::new(5, Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(peer = %peer, error = %e, "cannot set TCP_NODELAY");
                }
                on_conn(tcp, peer);
            }
            Err(e) => {
                if let Some(suppressed) = errors.allow() {
                    tracing::warn!(listener = what, error = %e, suppressed, "accepting a connection failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    tracing::debug!(listener = what, "stopped accepting connections");
}

/// Lets at most `burst` log lines through per `window`; says how many were
/// held back since the last line that got through.
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> LogLimiter {
        LogLimiter { burst, window, state: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// `Some(suppressed)` when this line may be written (with the count of
    /// lines held back before it), `None` when it is held back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(st.0) >= self.window {
            st.0 = now;
            st.1 = 0;
        }
        if st.1 < self.burst {
            st.1 += 1;
            Some(std::mem::take(&mut st.2))
        } else {
            st.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    #[test]
    fn per_address_cap_closes_the_oldest_squatter_of_that_address_only() {
        let adm = Admission::new(Limits { pending: 100, per_address: 3 });
        let t0 = Instant::now();
        let later = t0 + IDLE_GRACE * 2;
        let (a1, _) = adm.admit_at(addr(2, 1), t0);
        let (a2, _) = adm.admit_at(addr(2, 2), t0);
        a1.mark_active(); // a1 has sent its hello: a2 is the oldest squatter
        let (a3, _) = adm.admit_at(addr(2, 3), t0);
        let (other, _) = adm.admit_at(addr(3, 1), t0);
        let (a4, evicted) = adm.admit_at(addr(2, 4), later);
        assert_eq!(evicted, 1);
        assert!(a2.evict.is_cancelled(), "the oldest squatter of the address makes room");
        assert!(!a1.evict.is_cancelled() && !a3.evict.is_cancelled() && !other.evict.is_cancelled());
        assert_eq!(adm.pending(), 4);
        drop((a1, a2, a3, a4, other));
        assert_eq!(adm.pending(), 0);
        assert!(adm.state.lock().unwrap().per_ip.is_empty());
    }

    #[test]
    fn a_burst_from_one_address_within_the_grace_is_admitted_whole() {
        let adm = Admission::new(Limits { pending: 100, per_address: 3 });
        let t0 = Instant::now();
        let burst: Vec<_> = (0..50).map(|i| adm.admit_at(addr(2, i), t0)).collect();
        assert!(burst.iter().all(|(p, evicted)| *evicted == 0 && !p.evict.is_cancelled()));
        assert_eq!(adm.pending(), 50, "a burst of real clients behind one address is not refused");
    }

    #[test]
    fn total_cap_closes_squatters_first_and_ipv4_mapped_counts_as_ipv4() {
        let adm = Admission::new(Limits { pending: 2, per_address: 2 });
        let t0 = Instant::now();
        let later = t0 + IDLE_GRACE * 2;
        let (a, _) = adm.admit_at(addr(2, 1), t0);
        a.mark_active();
        let (b, _) = adm.admit_at(SocketAddr::new("::ffff:127.0.0.2".parse().unwrap(), 9), t0);
        assert_eq!(adm.state.lock().unwrap().per_ip.len(), 1, "mapped address counted as its IPv4");
        let (c, evicted) = adm.admit_at(addr(4, 1), later);
        assert_eq!(evicted, 1);
        assert!(b.evict.is_cancelled() && !a.evict.is_cancelled() && !c.evict.is_cancelled());
        // All have sent something: the oldest goes.
        c.mark_active();
        let (_d, _) = adm.admit_at(addr(5, 1), later);
        assert!(a.evict.is_cancelled());
        assert_eq!(adm.evicted(), 2);
    }

    #[test]
    fn log_limiter_counts_what_it_holds_back() {
        let window = Duration::from_secs(3600);
        let l = LogLimiter::new(2, window);
        let t0 = l.state.lock().unwrap().0;
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0), None);
        assert_eq!(l.allow_at(t0 + window / 2), None);
        assert_eq!(l.allow_at(t0 + window), Some(2));
        assert_eq!(l.allow_at(t0 + window), Some(0));
    }
}
