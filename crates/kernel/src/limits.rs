//! Stateful limits, outside Cedar: token-bucket rates, windowed budgets, usage counters and the
//! single-use set of held calls. Time comes from the caller.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use crate::{Error, Timestamp};

/// `N` events per period, written `"120/min"` (units: `s`, `sec`, `second`, `min`, `minute`,
/// `h`, `hour`, `d`, `day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u64,
    period_ms: u64,
    unit: &'static str,
}

impl Rate {
    /// Parses `"<count>/<unit>"`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Manifest(format!(
                "invalid rate `{text}`: expected `<count>/<unit>` such as `120/min`"
            ))
        };
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let (period_ms, unit) = match unit.trim() {
            "s" | "sec" | "second" => (1_000, "s"),
            "min" | "minute" => (60_000, "min"),
            "h" | "hour" => (3_600_000, "hour"),
            "d" | "day" => (86_400_000, "day"),
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000_000 {
            return Err(bad());
        }
        Ok(Self {
            count,
            period_ms,
            unit,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit)
    }
}

/// Parses a duration such as `"60s"`, `"15min"`, `"2h"`.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let bad = || {
        Error::Manifest(format!(
            "invalid duration `{text}`: expected e.g. `60s`, `15min`, `1h`"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "min" | "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

/// The limits one allow rule carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RuleLimits {
    pub(crate) rate: Option<Rate>,
    pub(crate) budget_agent: Option<Rate>,
    pub(crate) budget_tool: Option<Rate>,
    pub(crate) budget_session: Option<Rate>,
}

impl RuleLimits {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What a call is charged to.
pub(crate) struct Charge<'a> {
    pub(crate) agent: &'a str,
    pub(crate) tool: &'a str,
    pub(crate) session: Option<&'a str>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    // Tokens scaled by the period so refill is exact integer arithmetic: a full bucket holds
    // `count * period_ms` units, a call costs `period_ms`, each millisecond refills `count`.
    units: u128,
    last_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    used: u64,
}

/// Mutable state behind the kernel's lock. Maps are keyed so that a call that finds its entries
/// looks them up by `&str`, without allocating keys.
#[derive(Debug, Default)]
pub(crate) struct LimitState {
    /// Rule id → agent → bucket.
    buckets: HashMap<String, HashMap<String, Bucket>>,
    windows: HashMap<(String, &'static str, String), Window>,
    agent_calls: HashMap<String, u64>,
    session_calls: HashMap<String, u64>,
    pub(crate) pending: HashMap<String, (String, Timestamp)>,
    pub(crate) settled: HashSet<String>,
}

/// Why a call was refused by a limit: the kernel rule id and a reason.
pub(crate) struct Exceeded {
    pub(crate) rule: &'static str,
    pub(crate) reason: String,
}

impl LimitState {
    pub(crate) fn usage(&self, agent: &str, session: Option<&str>) -> (u64, u64) {
        let a = self.agent_calls.get(agent).copied().unwrap_or(0);
        let s = session
            .and_then(|s| self.session_calls.get(s).copied())
            .unwrap_or(0);
        (a, s)
    }

    /// Checks every limit of `rules` for `charge` at `now`; if all pass (or `force`), consumes
    /// one unit from each. All or nothing.
    pub(crate) fn charge(
        &mut self,
        rules: &[(&str, &RuleLimits)],
        charge: &Charge<'_>,
        now: Timestamp,
        force: bool,
    ) -> Result<(), Exceeded> {
        let now_ms = now.unix_millis();
        if !force {
            for (rule, limits) in rules {
                if let Some(rate) = limits.rate {
                    let bucket = self.bucket_at(rule, charge.agent, rate, now_ms);
                    if bucket.units < u128::from(rate.period_ms) {
                        return Err(Exceeded {
                            rule: "rate-limit",
                            reason: format!(
                                "rate limit {rate} of rule `{rule}` exceeded for agent `{}`",
                                charge.agent
                            ),
                        });
                    }
                }
                for (scope, budget, key) in Self::budgets(limits, charge) {
                    let window = self.window_at(rule, scope, &key, budget, now_ms);
                    if window.used >= budget.count {
                        return Err(Exceeded {
                            rule: "budget",
                            reason: format!(
                                "{scope} budget {budget} of rule `{rule}` is spent for `{key}`"
                            ),
                        });
                    }
                }
            }
        }
        for (rule, limits) in rules {
            if let Some(rate) = limits.rate {
                let mut bucket = self.bucket_at(rule, charge.agent, rate, now_ms);
                bucket.units = bucket.units.saturating_sub(u128::from(rate.period_ms));
                let agents = match self.buckets.get_mut(*rule) {
                    Some(agents) => agents,
                    None => self.buckets.entry((*rule).to_owned()).or_default(),
                };
                match agents.get_mut(charge.agent) {
                    Some(b) => *b = bucket,
                    None => {
                        agents.insert(charge.agent.to_owned(), bucket);
                    }
                }
            }
            for (scope, budget, key) in Self::budgets(limits, charge) {
                let mut window = self.window_at(rule, scope, &key, budget, now_ms);
                window.used = window.used.saturating_add(1);
                self.windows
                    .insert(((*rule).to_owned(), scope, key), window);
            }
        }
        count(&mut self.agent_calls, charge.agent);
        if let Some(session) = charge.session {
            count(&mut self.session_calls, session);
        }
        Ok(())
    }

    /// The budgets of `limits` with the key each is counted under (keys are only built for the
    /// budgets a rule has).
    fn budgets<'a>(
        limits: &'a RuleLimits,
        charge: &'a Charge<'_>,
    ) -> impl Iterator<Item = (&'static str, Rate, String)> + 'a {
        [
            ("agent", limits.budget_agent),
            ("tool", limits.budget_tool),
            ("session", limits.budget_session),
        ]
        .into_iter()
        .filter_map(move |(scope, budget)| {
            let budget = budget?;
            let key = match scope {
                "agent" => charge.agent.to_owned(),
                "tool" => charge.tool.to_owned(),
                _ => charge
                    .session
                    .map_or_else(|| format!("(no session) {}", charge.agent), str::to_owned),
            };
            Some((scope, budget, key))
        })
    }

    fn bucket_at(&self, rule: &str, agent: &str, rate: Rate, now_ms: u64) -> Bucket {
        let full = u128::from(rate.count) * u128::from(rate.period_ms);
        match self.buckets.get(rule).and_then(|agents| agents.get(agent)) {
            None => Bucket {
                units: full,
                last_ms: now_ms,
            },
            Some(b) => {
                // A clock that goes backwards refills nothing.
                let elapsed = now_ms.saturating_sub(b.last_ms);
                let units = b
                    .units
                    .saturating_add(u128::from(elapsed) * u128::from(rate.count));
                Bucket {
                    units: units.min(full),
                    last_ms: now_ms.max(b.last_ms),
                }
            }
        }
    }

    fn window_at(
        &self,
        rule: &str,
        scope: &'static str,
        key: &str,
        budget: Rate,
        now_ms: u64,
    ) -> Window {
        let start_ms = now_ms - now_ms % budget.period_ms;
        match self.windows.get(&(rule.to_owned(), scope, key.to_owned())) {
            Some(w) if w.start_ms >= start_ms => *w,
            _ => Window { start_ms, used: 0 },
        }
    }
}

/// Adds one to `key`'s counter, allocating the key only the first time.
fn count(counters: &mut HashMap<String, u64>, key: &str) {
    match counters.get_mut(key) {
        Some(n) => *n = n.saturating_add(1),
        None => {
            counters.insert(key.to_owned(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: &str) -> RuleLimits {
        RuleLimits {
            rate: Some(Rate::parse(rate).unwrap()),
            ..RuleLimits::default()
        }
    }

    fn charge(state: &mut LimitState, l: &RuleLimits, at_ms: u64) -> bool {
        let c = Charge {
            agent: "a",
            tool: "s/t",
            session: Some("x"),
        };
        state
            .charge(&[("r", l)], &c, Timestamp::from_unix_millis(at_ms), false)
            .is_ok()
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = limits("2/s");
        let mut s = LimitState::default();
        assert!(charge(&mut s, &l, 1000));
        assert!(charge(&mut s, &l, 1000));
        assert!(!charge(&mut s, &l, 1000));
        assert!(!charge(&mut s, &l, 1400));
        assert!(charge(&mut s, &l, 1500));
        assert!(!charge(&mut s, &l, 1500));
        // A clock going backwards gives nothing back.
        assert!(!charge(&mut s, &l, 500));
    }

    #[test]
    fn budget_resets_per_window() {
        let l = RuleLimits {
            budget_session: Some(Rate::parse("2/min").unwrap()),
            ..RuleLimits::default()
        };
        let mut s = LimitState::default();
        assert!(charge(&mut s, &l, 60_000));
        assert!(charge(&mut s, &l, 61_000));
        assert!(!charge(&mut s, &l, 119_999));
        assert!(charge(&mut s, &l, 120_000));
    }

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(Rate::parse("120/min").unwrap().to_string(), "120/min");
        for bad in ["0/min", "x/min", "10/week", "10"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("15min").unwrap(), Duration::from_secs(900));
        assert!(parse_duration("s").is_err());
    }
}
