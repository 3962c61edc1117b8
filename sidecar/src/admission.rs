//! Who may hold a connection and try to log in, for a port that faces the internet: separate
//! caps on unauthenticated connections (in total and per source address) and on authenticated
//! sessions, per-source penalties after failed or abandoned logins (OpenSSH 9.8's
//! `PerSourcePenalties`), and a global cap on password checks. Pure bookkeeping: the caller
//! passes the time, so every rule is unit-tested without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Authenticated sessions at once.
pub const MAX_SESSIONS: usize = 64;
/// Connections still logging in at once, from everywhere (like OpenSSH's `MaxStartups`, which
/// starts dropping at 10 and refuses all at 100; here a hard cap).
pub const MAX_STARTUPS: usize = 32;
/// Connections still logging in at once from one source (`PerSourceMaxStartups`).
pub const MAX_STARTUPS_PER_SOURCE: usize = 8;
/// Penalty per failed password or key check (OpenSSH: `authfail:5s`).
pub const PENALTY_AUTH_FAIL: Duration = Duration::from_secs(5);
/// Penalty for a connection that ended without logging in (`noauth:1s`), and for one refused
/// because its source is penalized (OpenSSH's optional `refuseconnection`).
pub const PENALTY_NO_AUTH: Duration = Duration::from_secs(1);
/// Penalty for a connection closed by the login deadline or the pre-login byte budget
/// (`grace-exceeded:10s`).
pub const PENALTY_LOGIN_TOO_LONG: Duration = Duration::from_secs(10);
/// A source is refused while its penalty exceeds this (`min:15s`): a user who mistypes a
/// password twice is not locked out.
pub const PENALTY_MIN: Duration = Duration::from_secs(15);
/// Penalties never accumulate beyond this (`max:600s`).
pub const PENALTY_MAX: Duration = Duration::from_secs(600);
/// Sources remembered with a penalty; beyond that new sources go unpenalized, like OpenSSH's
/// `overflow:permissive`, so the table stays small under a spoofed-source flood.
const MAX_PENALIZED_SOURCES: usize = 65_536;
/// Password checks per second from all sources together (a distributed guesser's ceiling:
/// 36,000 an hour), and the burst allowed: every session slot can fill at once.
pub const PASSWORD_CHECKS_PER_SECOND: f64 = 10.0;
const PASSWORD_CHECK_BURST: f64 = MAX_SESSIONS as f64;

/// Why a connection or a login attempt is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("source penalized for {seconds} s more after failed logins")]
    Penalized { seconds: u64 },
    #[error("{MAX_STARTUPS} connections are already logging in")]
    TooManyStartups,
    #[error("{MAX_STARTUPS_PER_SOURCE} connections from this source are already logging in")]
    TooManyStartupsFromSource,
    #[error("{MAX_SESSIONS} sessions are already open")]
    TooManySessions,
    #[error("more than {PASSWORD_CHECKS_PER_SECOND} password checks per second from all sources")]
    PasswordRateExceeded,
}

/// What a source did to earn a penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    AuthFail,
    NoAuth,
    LoginTooLong,
}

impl Penalty {
    fn duration(self) -> Duration {
        match self {
            Penalty::AuthFail => PENALTY_AUTH_FAIL,
            Penalty::NoAuth => PENALTY_NO_AUTH,
            Penalty::LoginTooLong => PENALTY_LOGIN_TOO_LONG,
        }
    }
}

/// Penalties and startup counts are kept per IPv4 address and per IPv6 /64 (one customer's
/// allocation: a /128 costs an attacker nothing).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

struct State {
    startups: HashMap<IpAddr, usize>,
    startups_total: usize,
    penalties: HashMap<IpAddr, SourcePenalty>,
    password_tokens: f64,
    tokens_at: Instant,
}

pub struct Admission {
    state: Mutex<State>,
    sessions: Arc<Semaphore>,
}

impl Admission {
    pub fn new(now: Instant) -> Arc<Admission> {
        Arc::new(Admission {
            state: Mutex::new(State {
                startups: HashMap::new(),
                startups_total: 0,
                penalties: HashMap::new(),
                password_tokens: PASSWORD_CHECK_BURST,
                tokens_at: now,
            }),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// A new connection from `ip`: refused while the source is penalized or over a cap, else
    /// the startup slot it holds until it logs in or ends.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Startup, Refusal> {
        let source = source_of(ip);
        let mut state = self.lock();
        if let Err(refusal) = check_penalty(&state, source, now) {
            // Connecting while penalized counts as a connection without login: a source that
            // keeps hammering stays refused instead of getting a few guesses whenever its
            // penalty dips below the minimum.
            state.add_penalty(source, Penalty::NoAuth, now);
            return Err(refusal);
        }
        if self.sessions.available_permits() == 0 {
            return Err(Refusal::TooManySessions);
        }
        if state.startups_total >= MAX_STARTUPS {
            return Err(Refusal::TooManyStartups);
        }
        let count = state.startups.entry(source).or_insert(0);
        if *count >= MAX_STARTUPS_PER_SOURCE {
            return Err(Refusal::TooManyStartupsFromSource);
        }
        *count += 1;
        state.startups_total += 1;
        Ok(Startup { admission: self.clone(), source })
    }

    /// Whether `ip` may try to log in now (its penalty may have started after it connected).
    pub fn may_try(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        check_penalty(&self.lock(), source_of(ip), now)
    }

    /// Whether a password may be checked now: the source may try, and the global rate allows.
    pub fn may_check_password(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut state = self.lock();
        check_penalty(&state, source_of(ip), now)?;
        let elapsed = now.saturating_duration_since(state.tokens_at).as_secs_f64();
        state.password_tokens = (state.password_tokens + elapsed * PASSWORD_CHECKS_PER_SECOND).min(PASSWORD_CHECK_BURST);
        state.tokens_at = now;
        if state.password_tokens < 1.0 {
            return Err(Refusal::PasswordRateExceeded);
        }
        state.password_tokens -= 1.0;
        Ok(())
    }

    /// Adds `penalty` to the source's running penalty (capped at `PENALTY_MAX`).
    pub fn penalize(&self, ip: IpAddr, penalty: Penalty, now: Instant) {
        self.lock().add_penalty(source_of(ip), penalty, now);
    }

    /// Waits until every authenticated session has ended.
    pub async fn sessions_ended(&self) {
        let _ = self.sessions.acquire_many(MAX_SESSIONS as u32).await;
    }
}

/// One source's running penalty.
struct SourcePenalty {
    until: Instant,
    /// Once the penalty exceeded `PENALTY_MIN` the source is refused until it has run out
    /// (OpenSSH's model), not merely while it stays above the minimum.
    enforced: bool,
}

impl State {
    fn add_penalty(&mut self, source: IpAddr, penalty: Penalty, now: Instant) {
        if self.penalties.len() >= MAX_PENALIZED_SOURCES && !self.penalties.contains_key(&source) {
            self.penalties.retain(|_, p| p.until > now);
            if self.penalties.len() >= MAX_PENALIZED_SOURCES {
                return;
            }
        }
        let entry = self.penalties.entry(source).or_insert(SourcePenalty { until: now, enforced: false });
        if entry.until <= now {
            *entry = SourcePenalty { until: now, enforced: false };
        }
        entry.until = (entry.until + penalty.duration()).min(now + PENALTY_MAX);
        entry.enforced |= entry.until.saturating_duration_since(now) > PENALTY_MIN;
    }
}

fn check_penalty(state: &State, source: IpAddr, now: Instant) -> Result<(), Refusal> {
    match state.penalties.get(&source) {
        Some(p) if p.enforced && p.until > now => Err(Refusal::Penalized { seconds: p.until.saturating_duration_since(now).as_secs() }),
        _ => Ok(()),
    }
}

/// A connection that has not logged in yet; its slot is freed when it is dropped.
pub struct Startup {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Startup {
    /// The login succeeded: a session slot, if one is free (the caller then drops the startup).
    pub fn session_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.admission.sessions.clone().try_acquire_owned().map_err(|_| Refusal::TooManySessions)
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.startups_total -= 1;
        if let Some(count) = state.startups.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                state.startups.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn startups_are_capped_per_source_and_in_total_and_freed_on_drop() {
        let now = Instant::now();
        let admission = Admission::new(now);
        let from_one: Vec<Startup> = (0..MAX_STARTUPS_PER_SOURCE).map(|_| admission.admit(ip("10.0.0.1"), now).unwrap()).collect();
        assert_eq!(admission.admit(ip("10.0.0.1"), now).err(), Some(Refusal::TooManyStartupsFromSource));
        // Another address is not affected; an IPv4-mapped address is the same source.
        assert_eq!(admission.admit(ip("::ffff:10.0.0.1"), now).err(), Some(Refusal::TooManyStartupsFromSource));
        let mut others: Vec<Startup> = (2..)
            .map(|i| format!("10.0.1.{i}"))
            .take(MAX_STARTUPS - MAX_STARTUPS_PER_SOURCE)
            .map(|a| admission.admit(ip(&a), now).unwrap())
            .collect();
        assert_eq!(admission.admit(ip("10.0.2.1"), now).err(), Some(Refusal::TooManyStartups));
        drop(from_one);
        assert!(admission.admit(ip("10.0.0.1"), now).is_ok());
        // Logging in frees the startup slot.
        let startup = others.pop().unwrap();
        let session = startup.session_slot().unwrap();
        drop(startup);
        assert!(admission.admit(ip("10.0.2.1"), now).is_ok());
        drop(session);
    }

    #[test]
    fn a_login_without_a_free_session_slot_stays_a_startup() {
        let now = Instant::now();
        let admission = Admission::new(now);
        let late = admission.admit(ip("10.9.0.1"), now).unwrap();
        let sessions: Vec<_> = (0..MAX_SESSIONS)
            .map(|i| {
                let startup = admission.admit(ip(&format!("10.8.{}.{}", i / 200, i % 200)), now).unwrap();
                startup.session_slot().unwrap()
            })
            .collect();
        assert_eq!(late.session_slot().err(), Some(Refusal::TooManySessions));
        assert_eq!(admission.lock().startups_total, 1, "the refused login still holds its startup slot");
        drop(sessions);
        assert!(late.session_slot().is_ok());
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let now = Instant::now();
        let admission = Admission::new(now);
        let _held: Vec<Startup> =
            (0..MAX_STARTUPS_PER_SOURCE).map(|i| admission.admit(ip(&format!("2001:db8::{i:x}")), now).unwrap()).collect();
        assert_eq!(admission.admit(ip("2001:db8::ffff"), now).err(), Some(Refusal::TooManyStartupsFromSource));
        assert!(admission.admit(ip("2001:db8:0:1::1"), now).is_ok());
    }

    #[test]
    fn penalties_accumulate_are_enforced_above_the_minimum_until_they_run_out_and_are_capped() {
        let now = Instant::now();
        let admission = Admission::new(now);
        let attacker = ip("192.0.2.7");
        for _ in 0..3 {
            assert!(admission.admit(attacker, now).is_ok(), "two failures do not lock a user out");
            admission.penalize(attacker, Penalty::AuthFail, now);
        }
        admission.penalize(attacker, Penalty::AuthFail, now);
        assert!(matches!(admission.may_try(attacker, now), Err(Refusal::Penalized { seconds: 20 })));
        assert!(admission.admit(ip("192.0.2.8"), now).is_ok(), "other sources are not penalized");
        // Once enforced, the source stays refused until the whole penalty has run out.
        assert!(admission.may_try(attacker, now + Duration::from_secs(19)).is_err(), "enforced until it runs out");
        let later = now + Duration::from_secs(21);
        assert!(admission.admit(attacker, later).is_ok(), "20 s have run out");
        admission.penalize(attacker, Penalty::AuthFail, later);
        assert!(admission.may_try(attacker, later).is_ok(), "a fresh start after the penalty ran out");
        // Connecting while penalized keeps the penalty up (1 s per refused connection).
        for _ in 0..4 {
            admission.penalize(attacker, Penalty::AuthFail, now);
        }
        for second in 0..30 {
            let at = now + Duration::from_secs(second);
            assert!(matches!(admission.admit(attacker, at).err(), Some(Refusal::Penalized { .. })), "refused at {second} s");
        }
        for _ in 0..1000 {
            admission.penalize(attacker, Penalty::AuthFail, now);
        }
        let Err(Refusal::Penalized { seconds }) = admission.may_try(attacker, now) else { panic!("not penalized") };
        assert_eq!(seconds, PENALTY_MAX.as_secs());
    }

    #[test]
    fn password_checks_are_rate_limited_globally() {
        let now = Instant::now();
        let admission = Admission::new(now);
        let allowed = (0..200).filter(|i| admission.may_check_password(ip(&format!("198.51.100.{i}")), now).is_ok()).count();
        assert_eq!(allowed, PASSWORD_CHECK_BURST as usize);
        assert_eq!(admission.may_check_password(ip("203.0.113.1"), now), Err(Refusal::PasswordRateExceeded));
        assert!(admission.may_check_password(ip("203.0.113.1"), now + Duration::from_millis(100)).is_ok());
    }
}
