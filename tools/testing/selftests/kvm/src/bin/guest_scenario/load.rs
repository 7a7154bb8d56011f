// SPDX-License-Identifier: GPL-2.0
//! The workload: a key space with a hot and a cold set, values that can be
//! verified, and the closed-loop load generator's latency record.
//!
//! Keys `0..hot` are the hot set, `hot..hot + cold` the cold set. A
//! request goes to a uniformly chosen hot key with probability
//! `hot_share`, otherwise to a uniformly chosen cold key; a fraction
//! `set_share` of requests overwrite the value (a new version), the rest
//! read it and check every byte.

use anyhow::{bail, Result};

/// xorshift64*: a small, fast generator; good enough to pick keys and
/// fill values, and reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is mapped to another).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is below 2^-40 for the
    /// sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The key space and value size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keyspace {
    /// Keys in the hot set.
    pub hot: u64,
    /// Keys in the cold set.
    pub cold: u64,
    /// Bytes per value (at least [`HEADER`]).
    pub value_len: usize,
}

/// A value starts with its key id and version (little endian), then
/// bytes generated from both.
pub const HEADER: usize = 16;

impl Keyspace {
    /// Checks the sizes.
    pub fn new(hot: u64, cold: u64, value_len: usize) -> Result<Self> {
        if hot == 0 || cold == 0 {
            bail!("the hot and the cold set need a key each at least");
        }
        if !(HEADER..=512 << 10).contains(&value_len) {
            bail!("value size {value_len} B is not in {HEADER} B ..= 512 KiB");
        }
        Ok(Self {
            hot,
            cold,
            value_len,
        })
    }

    /// Number of keys.
    pub fn keys(&self) -> u64 {
        self.hot + self.cold
    }

    /// Whether key `id` is in the hot set.
    pub fn is_hot(&self, id: u64) -> bool {
        id < self.hot
    }

    /// The key string of id `id`.
    pub fn key(id: u64) -> String {
        format!("k{id:08}")
    }

    /// Picks a key: hot with probability `hot_share`.
    pub fn pick(&self, rng: &mut Rng, hot_share: f64) -> u64 {
        if rng.unit() < hot_share {
            rng.below(self.hot)
        } else {
            self.hot + rng.below(self.cold)
        }
    }

    /// The value of key `id` at `version`.
    pub fn value(&self, id: u64, version: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.value_len);
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&version.to_le_bytes());
        let mut rng = Rng::new(id ^ version.rotate_left(32) ^ 0x5ca1_ab1e);
        while v.len() < self.value_len {
            let w = rng.next_u64().to_le_bytes();
            let n = (self.value_len - v.len()).min(8);
            v.extend_from_slice(&w[..n]);
        }
        v
    }

    /// Checks that `data` is the value of key `id` at `version`.
    pub fn verify(&self, id: u64, version: u64, data: &[u8]) -> Result<()> {
        if data.len() != self.value_len {
            bail!("key {id}: {} bytes, want {}", data.len(), self.value_len);
        }
        let got_id = u64::from_le_bytes(data[..8].try_into().unwrap());
        let got_ver = u64::from_le_bytes(data[8..16].try_into().unwrap());
        if got_id != id || got_ver != version {
            bail!("key {id}: holds key {got_id} version {got_ver}, want version {version}");
        }
        if data != self.value(id, version).as_slice() {
            bail!("key {id} version {version}: value corrupted");
        }
        Ok(())
    }
}

/// Request latencies in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    us: Vec<u32>,
    sorted: bool,
}

impl Latencies {
    /// Records one request.
    pub fn push(&mut self, us: u64) {
        self.us.push(us.min(u32::MAX as u64) as u32);
        self.sorted = false;
    }

    /// Number of requests recorded.
    pub fn len(&self) -> usize {
        self.us.len()
    }

    /// Whether none were recorded.
    pub fn is_empty(&self) -> bool {
        self.us.is_empty()
    }

    /// The `p`-th percentile (`0 < p <= 100`, nearest rank); `None` when
    /// empty.
    pub fn percentile(&mut self, p: f64) -> Option<u64> {
        if self.us.is_empty() || !(p > 0.0 && p <= 100.0) {
            return None;
        }
        if !self.sorted {
            self.us.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.us.len() as f64).ceil() as usize;
        Some(self.us[rank.clamp(1, self.us.len()) - 1] as u64)
    }

    /// The largest latency.
    pub fn max(&self) -> Option<u64> {
        self.us.iter().max().map(|&v| v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_verify_and_differ() {
        let ks = Keyspace::new(4, 8, 100).unwrap();
        let v = ks.value(3, 7);
        assert_eq!(v.len(), 100);
        ks.verify(3, 7, &v).unwrap();
        assert!(ks.verify(3, 8, &v).is_err());
        assert!(ks.verify(4, 7, &v).is_err());
        assert!(ks.verify(3, 7, &v[..99]).is_err());
        let mut bad = v.clone();
        bad[60] ^= 1;
        assert!(ks.verify(3, 7, &bad).is_err());
        assert_ne!(ks.value(3, 7)[HEADER..], ks.value(2, 7)[HEADER..]);
    }

    #[test]
    fn keyspace_checks_sizes() {
        assert!(Keyspace::new(0, 1, 100).is_err());
        assert!(Keyspace::new(1, 0, 100).is_err());
        assert!(Keyspace::new(1, 1, 15).is_err());
        assert!(Keyspace::new(1, 1, (512 << 10) + 1).is_err());
        assert_eq!(Keyspace::key(42), "k00000042");
    }

    #[test]
    fn hot_share_is_kept() {
        let ks = Keyspace::new(100, 900, 16).unwrap();
        let mut rng = Rng::new(1);
        let n = 100_000;
        let hot = (0..n).filter(|_| ks.is_hot(ks.pick(&mut rng, 0.9))).count();
        let share = hot as f64 / n as f64;
        assert!((share - 0.9).abs() < 0.01, "hot share {share}");
        assert!((0..1000).all(|_| ks.pick(&mut rng, 0.0) >= 100));
        assert!((0..1000).all(|_| ks.pick(&mut rng, 1.0) < 100));
    }

    #[test]
    fn percentiles_nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile(50.0), None);
        for v in [5, 1, 4, 2, 3, 10, 9, 8, 7, 6] {
            l.push(v);
        }
        assert_eq!(l.percentile(50.0), Some(5));
        assert_eq!(l.percentile(99.0), Some(10));
        assert_eq!(l.percentile(10.0), Some(1));
        assert_eq!(l.percentile(100.0), Some(10));
        assert_eq!(l.percentile(0.0), None);
        assert_eq!(l.max(), Some(10));
        assert_eq!(l.len(), 10);
    }
}
