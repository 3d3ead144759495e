//! The clock and the random source, injected so that tests are deterministic.

use std::fmt;
use std::time::SystemTime;

use crate::Error;

/// Wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that says what it was told; for tests and for minting at a chosen time.
#[derive(Debug)]
pub struct FixedClock(std::sync::Mutex<SystemTime>);

impl FixedClock {
    /// A clock stopped at `at`.
    pub fn new(at: SystemTime) -> Self {
        Self(std::sync::Mutex::new(at))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: SystemTime) {
        if let Ok(mut t) = self.0.lock() {
            *t = at;
        }
    }
}

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        // A poisoned lock still holds a valid time.
        match self.0.lock() {
            Ok(t) => *t,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// Randomness for serial numbers, key ids and token ids.
///
/// Key generation and ECDSA signing take their randomness from `ring`'s system source, which
/// does not accept a caller-supplied generator (deliberately: a weak one would leak keys).
pub trait Random: Send + Sync + fmt::Debug {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error>;
}

/// The operating system's CSPRNG.
#[derive(Debug)]
pub struct OsRandom(ring::rand::SystemRandom);

impl Default for OsRandom {
    fn default() -> Self {
        Self::new()
    }
}

impl OsRandom {
    /// The system source.
    pub fn new() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Random for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error> {
        use ring::rand::SecureRandom;
        self.0
            .fill(buf)
            .map_err(|_| Error::Crypto("system random source failed".into()))
    }
}
