//! Rate and concurrency limits kept in Redis, so that every gateway with
//! the same `limits.redis_prefix` shares them.
//!
//! One admission is one round trip: a Lua script checks every limit that
//! applies — token rates, concurrency, request rates, the in-process
//! order — and, only if all pass, charges them all — atomically, on Redis's
//! own clock (`TIME`), so nodes with skewed clocks still agree. Request and
//! token rates are GCRA, exactly as in process: one theoretical arrival
//! time per limited thing, a key that expires once the limit is whole
//! again. Concurrency is a sorted set of leases per limited thing: a slot
//! is given back when the exchange ends, and a node that dies without
//! giving its slots back loses them when their lease runs out.
//!
//! Budgets are checked and charged by the same script, before the rates.
//! A budget period is a hash with one pair of fields per gateway —
//! `t:<origin>` (tokens) and `c:<origin>` (cost in billionths of the
//! currency unit, so that sums are exact) — where `<origin>` is the
//! gateway's ledger origin, stable across restarts. The budget's spending
//! is the sum over all gateways. At start-up each gateway sets its own
//! fields from its own ledger ([`RedisLimits::sync_budgets`]), so a
//! gateway that crashed with reservations in flight does not leave them
//! charged, and a gateway that restarts does not count twice.
//!
//! Each thread talks to Redis over a connection of its own, made the first
//! time the thread needs one: a connection thread's admission then never
//! wakes another thread to read Redis's answer. A connection that broke
//! while Redis was away is mended on its next use, and the command is sent
//! once more on the new connection (see [`RedisLimits::run`]), so threads
//! that come back to Redis one after another agree that it answers.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use palisade_config::LimitsConfig;
use redis::aio::ConnectionManager;

use crate::budgets::{BudgetKey, Exceeded, Period, Spent};
use crate::limits::{Applicable, Level, RateStatus, Refusal, Reservation};

/// How long a concurrency slot is held if the node holding it never gives
/// it back (it crashed); a stream longer than this loses its slot early.
pub const SLOT_LEASE: Duration = Duration::from_secs(15 * 60);

const ADMIT: &str = r"
local nr, nt, nc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, member, lease = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local MINUTE = 60000000
local INDEX_TTL = 3456000000
local function limit(i) return tonumber(ARGV[6 + i]) end
local b = 6 + nr + nt + nc
local nb, kb = tonumber(ARGV[b + 1]), nr + nt + nc
local node, btok, bcost = ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
local function blimit(i, j) return tonumber(ARGV[b + 4 + 3 * (i - 1) + j]) end
for i = 1, nb do
  local tl, cl = blimit(i, 1), blimit(i, 2)
  if tl >= 0 or cl >= 0 then
    local vals = redis.call('HGETALL', KEYS[kb + i])
    local t, c = 0, 0
    for j = 1, #vals, 2 do
      local v = tonumber(vals[j + 1]) or 0
      if string.byte(vals[j], 1) == 116 then t = t + v else c = c + v end
    end
    if tl >= 0 and t + tonumber(btok) > tl then return {4, i - 1, 0} end
    if cl >= 0 and c + tonumber(bcost) > cl then return {4, i - 1, 1} end
  end
end
local function gcra(k, per_minute, amount)
  local interval = math.floor(MINUTE / per_minute)
  local tat = tonumber(redis.call('GET', k) or '0')
  if tat < now then tat = now end
  return interval, interval * per_minute, tat, tat + interval * amount
end
local tok, tnew = {}, {}
for i = 1, nt do
  local tpm = limit(nr + i)
  local interval, burst, tat, new = gcra(KEYS[nr + i], tpm, math.min(cost, tpm + 1))
  local ahead = new - now
  if ahead > burst then
    local left = math.max(0, math.floor((burst - (tat - now)) / interval))
    local retry = -1
    if cost <= tpm then retry = ahead - burst end
    return {2, i - 1, tpm, left, tat - now, retry}
  end
  local left = math.floor((burst - ahead) / interval)
  if tok[1] == nil or left < tok[2] then tok = {tpm, left, ahead} end
  tnew[i] = {new, ahead}
end
for i = 1, nc do
  local k = KEYS[nr + nt + i]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if redis.call('ZCARD', k) >= limit(nr + nt + i) then
    return {3, i - 1, limit(nr + nt + i)}
  end
end
local req, rnew = {}, {}
for i = 1, nr do
  local rpm = limit(i)
  local interval, burst, tat, new = gcra(KEYS[i], rpm, 1)
  local ahead = new - now
  if ahead > burst then return {1, i - 1, rpm, 0, tat - now, ahead - burst} end
  local left = math.floor((burst - ahead) / interval)
  if req[1] == nil or left < req[2] then req = {rpm, left, ahead} end
  rnew[i] = {new, ahead}
end
for i = 1, nc do
  local k = KEYS[nr + nt + i]
  redis.call('ZADD', k, string.format('%.0f', now + lease), member)
  redis.call('PEXPIRE', k, math.floor(lease / 1000) + 1000)
end
for i = 1, nt do
  redis.call('SET', KEYS[nr + i], string.format('%.0f', tnew[i][1]), 'PX', math.floor(tnew[i][2] / 1000) + 1000)
end
for i = 1, nr do
  redis.call('SET', KEYS[i], string.format('%.0f', rnew[i][1]), 'PX', math.floor(rnew[i][2] / 1000) + 1000)
end
for i = 1, nb do
  local k = KEYS[kb + i]
  redis.call('HINCRBY', k, 't:' .. node, btok)
  redis.call('HINCRBY', k, 'c:' .. node, bcost)
  redis.call('PEXPIRE', k, blimit(i, 3))
  redis.call('SADD', KEYS[kb + nb + 1], k)
end
if nb > 0 then redis.call('PEXPIRE', KEYS[kb + nb + 1], INDEX_TTL) end
return {0, req[1] or -1, req[2] or -1, req[3] or -1, tok[1] or -1, tok[2] or -1, tok[3] or -1}
";

const SETTLE: &str = r"
local delta = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '')
  if tat then
    tat = tat + delta * math.floor(60000000 / tonumber(ARGV[i + 1]))
    local ttl = math.floor((tat - now) / 1000) + 1000
    if ttl > 0 then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return 0
";

/// Sets this gateway's share of every budget period it has charged: the
/// periods in the arguments to the values given, every other period in its
/// index to nothing (reservations that never completed).
const SYNC: &str = r"
local node = ARGV[1]
local given = {}
for i = 2, #KEYS do given[KEYS[i]] = true end
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not given[k] then
    redis.call('HDEL', k, 't:' .. node, 'c:' .. node)
    redis.call('SREM', KEYS[1], k)
  end
end
for i = 2, #KEYS do
  local a = 2 + 3 * (i - 2)
  redis.call('HSET', KEYS[i], 't:' .. node, ARGV[a], 'c:' .. node, ARGV[a + 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 2])
  redis.call('SADD', KEYS[1], KEYS[i])
end
redis.call('PEXPIRE', KEYS[1], 3456000000)
return 0
";

/// How long a day's budget outlives its last charge.
const DAY_TTL: Duration = Duration::from_secs(2 * 24 * 3600);
/// How long a month's budget outlives its last charge.
const MONTH_TTL: Duration = Duration::from_secs(35 * 24 * 3600);

/// A cost in billionths of the currency unit, as the shared budgets keep
/// it.
pub fn nanos(cost: f64) -> i64 {
    (cost * 1e9).round() as i64
}

fn ttl(period: &Period) -> u64 {
    match period {
        Period::Day(_) => DAY_TTL.as_millis() as u64,
        Period::Month(_) => MONTH_TTL.as_millis() as u64,
    }
}

/// Whether a command failed because its connection is gone (and the
/// connection manager is making a new one), rather than by Redis's answer
/// or a timeout.
fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Whether a command may be sent again when its connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    /// Running it twice changes nothing more, or only counts more.
    Safe,
    /// Running it twice would give back twice (a refund).
    Never,
}

impl Again {
    /// `Safe` unless some change gives back.
    fn unless_refund(deltas: impl IntoIterator<Item = i64>) -> Self {
        if deltas.into_iter().all(|d| d >= 0) {
            Self::Safe
        } else {
            Self::Never
        }
    }
}

/// Why Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something the admission script does not return: {0:?}")]
    Unexpected(Vec<i64>),
}

/// What Redis admitted: the tightest rates, for the headers, and what to
/// give back at the end.
pub struct SharedAdmission {
    pub requests: Option<RateStatus>,
    pub tokens: Option<RateStatus>,
    /// The concurrency sets holding this request's lease.
    pub slots: Vec<String>,
    /// The token keys charged, with their limits, for settling.
    pub token_keys: Vec<(String, u32)>,
}

pub struct RedisLimits {
    client: redis::Client,
    manager: redis::aio::ConnectionManagerConfig,
    /// Names this instance's connections among a thread's (by address, which
    /// the threads' weak references keep from being reused), and lets a
    /// thread forget the connections of instances that are gone.
    alive: Arc<()>,
    prefix: String,
    timeout: Duration,
    admit: redis::Script,
    settle: redis::Script,
    sync: redis::Script,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimits {
    /// Connects lazily: nothing is dialled until the first admission, and
    /// the connection is re-established by itself after a failure.
    pub fn new(config: &LimitsConfig, password: Option<&str>) -> Result<Arc<Self>, SharedError> {
        let mut info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(config.redis_url.as_str())?;
        if let Some(p) = password {
            let redis = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(redis);
        }
        let client = redis::Client::open(info)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis_timeout))
            .set_response_timeout(Some(config.redis_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        Ok(Arc::new(Self {
            client,
            manager,
            alive: Arc::new(()),
            prefix: config.redis_prefix.clone(),
            timeout: config.redis_timeout,
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            sync: redis::Script::new(SYNC),
        }))
    }

    fn key(&self, kind: &str, level: Level, who: &str) -> String {
        format!("{}:{kind}:{}:{who}", self.prefix, level.as_str())
    }

    /// `palisade:budget:tenant:acme:2026-11`.
    fn budget_key(&self, (level, who, period): &BudgetKey) -> String {
        format!(
            "{}:budget:{}:{who}:{}",
            self.prefix,
            level.as_str(),
            period.as_str()
        )
    }

    /// The set of budget periods a gateway has charged.
    fn budget_index(&self, node: &str) -> String {
        format!("{}:budget-index:{node}", self.prefix)
    }

    /// This thread's connection, made (lazily: dialled on first use, on
    /// this thread's runtime) the first time the thread asks.
    fn conn(&self) -> Result<ConnectionManager, SharedError> {
        type Held = Vec<(Weak<()>, ConnectionManager)>;
        thread_local! {
            static CONNS: RefCell<Held> = const { RefCell::new(Vec::new()) };
        }
        let me = Arc::as_ptr(&self.alive);
        CONNS.with_borrow_mut(|conns| {
            if let Some((_, c)) = conns.iter().find(|(alive, _)| alive.as_ptr() == me) {
                return Ok(c.clone());
            }
            conns.retain(|(alive, _)| alive.strong_count() > 0);
            let c =
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone())?;
            conns.push((Arc::downgrade(&self.alive), c.clone()));
            Ok(c)
        })
    }

    /// Runs `f` on this thread's connection within the timeout. If the
    /// connection had broken (Redis went away since this thread last used
    /// it) and `again` is [`Again::Safe`], `f` runs once more on the
    /// connection made in its place: one thread's stale connection must
    /// not say Redis is down while the others find it up. A command cut off
    /// as its connection dropped may have run before, so only commands
    /// that running twice leaves as they were, or makes tighter, are
    /// `Safe`; a refund is not.
    async fn run<T, F, Fut>(&self, again: Again, f: F) -> Result<T, SharedError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn()?;
        let attempts = async {
            match f(conn.clone()).await {
                Err(e) if again == Again::Safe && is_broken(&e) => f(conn).await,
                r => r,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SharedError::Timeout(self.timeout)),
        }
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), SharedError> {
        self.run(Again::Safe, |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// Checks every limit and budget in `limits` for a request reserving
    /// `ask`, in the `periods` (day, month) of now, and charges them all if
    /// all pass; `node` names this gateway's share of the budgets and
    /// `member` this request's concurrency leases.
    pub async fn admit(
        &self,
        limits: &Applicable,
        ask: Reservation,
        periods: (&crate::limits::Name, &crate::limits::Name),
        node: &str,
        member: &str,
    ) -> Result<Result<SharedAdmission, Refusal>, SharedError> {
        let cost = ask.tokens;
        let mut inv = self.admit.prepare_invoke();
        for (level, who, _) in &limits.rates {
            inv.key(self.key("rpm", *level, who));
        }
        let token_keys: Vec<(String, u32)> = limits
            .tokens
            .iter()
            .map(|(level, who, tpm)| (self.key("tpm", *level, who), (*tpm).max(1)))
            .collect();
        for (k, _) in &token_keys {
            inv.key(k);
        }
        let slots: Vec<String> = limits
            .concurrency
            .iter()
            .map(|(level, who, _)| self.key("slots", *level, who))
            .collect();
        for k in &slots {
            inv.key(k);
        }
        let budget_periods = crate::budgets::keys_for(limits.budgets.iter(), periods);
        let budget_keys: Vec<String> = budget_periods.iter().map(|k| self.budget_key(k)).collect();
        for k in &budget_keys {
            inv.key(k);
        }
        if !budget_keys.is_empty() {
            inv.key(self.budget_index(node));
        }
        inv.arg(limits.rates.len())
            .arg(limits.tokens.len())
            .arg(limits.concurrency.len())
            .arg(cost)
            .arg(member)
            .arg(SLOT_LEASE.as_micros() as u64);
        for (_, _, rpm) in &limits.rates {
            inv.arg((*rpm).max(1));
        }
        for (_, tpm) in &token_keys {
            inv.arg(*tpm);
        }
        for (_, _, n) in &limits.concurrency {
            inv.arg(*n);
        }
        inv.arg(budget_keys.len())
            .arg(node)
            .arg(ask.tokens)
            .arg(nanos(ask.cost));
        let or_none = |v: Option<i64>| v.unwrap_or(-1);
        for b in limits.budgets.iter().filter(|b| b.any()) {
            let l = &b.limits;
            let tokens = |t: Option<u64>| t.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
            inv.arg(or_none(tokens(l.daily_tokens)))
                .arg(or_none(l.daily_cost.map(nanos)))
                .arg(DAY_TTL.as_millis() as u64)
                .arg(or_none(tokens(l.monthly_tokens)))
                .arg(or_none(l.monthly_cost.map(nanos)))
                .arg(MONTH_TTL.as_millis() as u64);
        }
        let inv = &inv;
        let out: Vec<i64> = self
            .run(Again::Safe, |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let n = |v: i64| u32::try_from(v).unwrap_or(0);
        let status = |limit: i64, left: i64, reset: i64| {
            (limit >= 0).then(|| RateStatus {
                limit: n(limit),
                remaining: n(left),
                reset: us(reset),
            })
        };
        let level = |list: &[(Level, crate::limits::Name, u32)], i: i64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| list.get(i))
                .map(|l| l.0)
        };
        match out.as_slice() {
            [0, rl, rr, rs, tl, tr, ts] => Ok(Ok(SharedAdmission {
                requests: status(*rl, *rr, *rs),
                tokens: status(*tl, *tr, *ts),
                slots,
                token_keys,
            })),
            [4, i, kind] => {
                let Some((level, _, period)) =
                    usize::try_from(*i).ok().and_then(|i| budget_periods.get(i))
                else {
                    return Err(SharedError::Unexpected(out));
                };
                let which = match (period, kind) {
                    (Period::Day(_), 0) => "daily_tokens",
                    (Period::Month(_), 0) => "monthly_tokens",
                    (Period::Day(_), _) => "daily_cost",
                    (Period::Month(_), _) => "monthly_cost",
                };
                Ok(Err(Refusal::Budget(Exceeded {
                    level: *level,
                    which,
                })))
            }
            [1, i, limit, left, reset, retry] => match level(&limits.rates, *i) {
                Some(level) => Ok(Err(Refusal::Rate {
                    level,
                    retry_after: us(*retry),
                    status: RateStatus {
                        limit: n(*limit),
                        remaining: n(*left),
                        reset: us(*reset),
                    },
                })),
                None => Err(SharedError::Unexpected(out)),
            },
            [2, i, limit, left, reset, retry] => match level(&limits.tokens, *i) {
                Some(level) => Ok(Err(Refusal::Tokens {
                    level,
                    retry_after: (*retry >= 0).then(|| us(*retry)),
                    status: RateStatus {
                        limit: n(*limit),
                        remaining: n(*left),
                        reset: us(*reset),
                    },
                })),
                None => Err(SharedError::Unexpected(out)),
            },
            [3, i, limit] => match level(&limits.concurrency, *i) {
                Some(level) => Ok(Err(Refusal::Concurrency {
                    level,
                    limit: n(*limit),
                })),
                None => Err(SharedError::Unexpected(out)),
            },
            _ => Err(SharedError::Unexpected(out)),
        }
    }

    /// Gives back (or takes) the difference between what a request
    /// reserved and what it used.
    pub async fn settle(&self, keys: &[(String, u32)], delta: i64) -> Result<(), SharedError> {
        if keys.is_empty() || delta == 0 {
            return Ok(());
        }
        let mut inv = self.settle.prepare_invoke();
        inv.arg(delta);
        for (k, tpm) in keys {
            inv.key(k).arg(*tpm);
        }
        let inv = &inv;
        self.run(Again::unless_refund([delta]), |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// Gives a request's concurrency slots back.
    pub async fn release(&self, slots: &[String], member: &str) -> Result<(), SharedError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for k in slots {
            pipe.zrem(k, member).ignore();
        }
        let pipe = &pipe;
        self.run(Again::Safe, |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Adds `delta` to this gateway's share of the budget periods `keys`
    /// (a settlement, or spending counted while Redis was unreachable).
    pub async fn add_budgets(
        &self,
        node: &str,
        changes: &[(String, Spent, u64)],
    ) -> Result<(), SharedError> {
        if changes.is_empty() {
            return Ok(());
        }
        let (t, c) = (format!("t:{node}"), format!("c:{node}"));
        let index = self.budget_index(node);
        let mut pipe = redis::pipe();
        for (k, delta, ttl) in changes {
            pipe.hincr(k, &t, delta.tokens).ignore();
            pipe.hincr(k, &c, nanos(delta.cost)).ignore();
            pipe.pexpire(k, *ttl as i64).ignore();
            pipe.sadd(&index, k).ignore();
        }
        let pipe = &pipe;
        self.run(
            Again::unless_refund(
                changes
                    .iter()
                    .flat_map(|(_, d, _)| [d.tokens, nanos(d.cost)]),
            ),
            |mut c| async move { pipe.query_async::<()>(&mut c).await },
        )
        .await
    }

    /// The Redis key of each budget period, with how long it is kept.
    pub fn budget_changes(&self, changes: &[(BudgetKey, Spent)]) -> Vec<(String, Spent, u64)> {
        changes
            .iter()
            .map(|(k, d)| (self.budget_key(k), *d, ttl(&k.2)))
            .collect()
    }

    /// Sets this gateway's share of the shared budgets to `spent` (its
    /// own spending this day and month, from its ledger) and clears its
    /// share of every other period it charged before.
    pub async fn sync_budgets(
        &self,
        node: &str,
        spent: &[(BudgetKey, Spent)],
    ) -> Result<(), SharedError> {
        let mut inv = self.sync.prepare_invoke();
        inv.key(self.budget_index(node)).arg(node);
        for (k, s) in spent {
            inv.key(self.budget_key(k))
                .arg(s.tokens.max(0))
                .arg(nanos(s.cost).max(0))
                .arg(ttl(&k.2));
        }
        let inv = &inv;
        self.run(Again::Safe, |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// This gateway's and every gateway's spending in the budget period
    /// `key`, as Redis has it: (tokens, cost).
    pub async fn budget_spent(&self, key: &BudgetKey) -> Result<(i64, f64), SharedError> {
        let cmd = redis::cmd("HGETALL").arg(self.budget_key(key)).to_owned();
        let cmd = &cmd;
        let fields: Vec<(String, i64)> = self
            .run(
                Again::Safe,
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await?;
        let (mut t, mut c) = (0i64, 0i64);
        for (f, v) in fields {
            if f.starts_with("t:") {
                t += v;
            } else {
                c += v;
            }
        }
        Ok((t, c as f64 / 1e9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commands_that_give_nothing_back_are_sent_again() {
        assert_eq!(Again::unless_refund([]), Again::Safe);
        assert_eq!(Again::unless_refund([0, 250]), Again::Safe);
        assert_eq!(Again::unless_refund([250, -1]), Again::Never);
    }
}
