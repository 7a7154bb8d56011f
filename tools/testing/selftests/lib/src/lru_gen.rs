// SPDX-License-Identifier: GPL-2.0
//! `/sys/kernel/debug/lru_gen`: parsing and forced aging.
//!
//! The file lists, per memcg and node, each generation as
//! `seq age_ms nr_anon nr_file`:
//!
//! ```text
//! memcg     1 /
//!  node     0
//!           0       1234          10        200
//!           1        567           0         30
//! ```
//!
//! `lru_gen_full` adds tier and mm-walk statistics lines, which the parser
//! skips; page counts there may carry an `x` suffix for generations below
//! `min_seq`.

use crate::sys;
use anyhow::{bail, Context, Result};

/// Path of the MGLRU debugfs interface.
pub const LRU_GEN_DEBUGFS: &str = "/sys/kernel/debug/lru_gen";

/// One generation of one lruvec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Sequence number (`max_seq` is the youngest).
    pub seq: u64,
    /// Age in milliseconds.
    pub age_ms: u64,
    /// Anonymous pages in this generation.
    pub anon: u64,
    /// File pages in this generation.
    pub file: u64,
}

/// The generations of one memcg on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// NUMA node id.
    pub nid: u32,
    /// Generations, oldest first.
    pub gens: Vec<Generation>,
}

impl Node {
    /// The youngest generation (`max_seq`).
    pub fn youngest(&self) -> Option<&Generation> {
        self.gens.iter().max_by_key(|g| g.seq)
    }

    /// `max_seq` of this lruvec.
    pub fn max_seq(&self) -> Option<u64> {
        self.youngest().map(|g| g.seq)
    }

    /// Total anonymous pages over all generations.
    pub fn total_anon(&self) -> u64 {
        self.gens.iter().map(|g| g.anon).sum()
    }
}

/// One memcg's lruvecs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memcg {
    /// `mem_cgroup_id()`: the id the debugfs write interface takes.
    pub id: u32,
    /// cgroup path (`/` for the root, empty without memcg).
    pub path: String,
    /// Per-node generations.
    pub nodes: Vec<Node>,
}

fn num(tok: &str, what: &str, lineno: usize) -> Result<u64> {
    tok.trim_end_matches('x')
        .parse()
        .with_context(|| format!("line {lineno}: bad {what} {tok:?}"))
}

/// Parses the text of `lru_gen` or `lru_gen_full`.
pub fn parse(text: &str) -> Result<Vec<Memcg>> {
    let mut memcgs: Vec<Memcg> = Vec::new();
    let complete = text.is_empty() || text.ends_with('\n');
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let toks: Vec<&str> = line.split_whitespace().collect();
        match toks.first().copied() {
            None => continue,
            Some("memcg") => {
                if toks.len() > 3 || toks.len() < 2 {
                    bail!("line {lineno}: malformed memcg line {line:?}");
                }
                memcgs.push(Memcg {
                    id: num(toks[1], "memcg id", lineno)? as u32,
                    path: toks.get(2).unwrap_or(&"").to_string(),
                    nodes: Vec::new(),
                });
            }
            Some("node") => {
                if toks.len() != 2 {
                    bail!("line {lineno}: malformed node line {line:?}");
                }
                let nid = num(toks[1], "node id", lineno)? as u32;
                let m = memcgs
                    .last_mut()
                    .with_context(|| format!("line {lineno}: node before any memcg"))?;
                m.nodes.push(Node {
                    nid,
                    gens: Vec::new(),
                });
            }
            Some(first) => {
                let is_gen = toks.len() == 4
                    && first.bytes().all(|b| b.is_ascii_digit())
                    && toks[1].bytes().all(|b| b.is_ascii_digit());
                let is_full_stats = toks
                    .iter()
                    .skip(1)
                    .any(|t| t.ends_with(|c: char| "RTrepxYFA".contains(c)))
                    && (toks.len() == 7 || toks.len() == 4);
                if is_gen {
                    let g = Generation {
                        seq: num(toks[0], "seq", lineno)?,
                        age_ms: num(toks[1], "age", lineno)?,
                        anon: num(toks[2], "anon count", lineno)?,
                        file: num(toks[3], "file count", lineno)?,
                    };
                    let node = memcgs
                        .last_mut()
                        .and_then(|m| m.nodes.last_mut())
                        .with_context(|| format!("line {lineno}: generation before any node"))?;
                    node.gens.push(g);
                } else if is_full_stats {
                    continue;
                } else {
                    bail!("line {lineno}: unexpected {line:?}");
                }
            }
        }
    }
    if !complete {
        bail!("truncated: last line has no newline");
    }
    for m in &memcgs {
        for n in &m.nodes {
            if n.gens.is_empty() {
                bail!("memcg {} node {} lists no generation", m.id, n.nid);
            }
        }
    }
    Ok(memcgs)
}

/// Reads and parses `/sys/kernel/debug/lru_gen`.
pub fn read() -> Result<Vec<Memcg>> {
    parse(&sys::read(LRU_GEN_DEBUGFS)?)
}

/// Finds the memcg with cgroup path `path` (e.g. `/mglru-test`).
pub fn find<'a>(memcgs: &'a [Memcg], path: &str) -> Option<&'a Memcg> {
    memcgs.iter().find(|m| m.path == path)
}

/// Forces an aging pass: creates generation `max_seq + 1` for the memcg's
/// lruvec on `nid`, walking page tables (`force_scan`) and, with `can_swap`,
/// aging anon pages too.
pub fn age(memcg_id: u32, nid: u32, max_seq: u64, can_swap: bool, force_scan: bool) -> Result<()> {
    let cmd = format!(
        "+ {memcg_id} {nid} {max_seq} {} {}",
        can_swap as u8, force_scan as u8
    );
    sys::write(LRU_GEN_DEBUGFS, &cmd)
}

/// Runs eviction of up to `nr_to_reclaim` pages from generations up to
/// `min_seq` (`- memcg_id nid seq swappiness nr_to_reclaim`).
pub fn evict(memcg_id: u32, nid: u32, seq: u64, swappiness: u32, nr_to_reclaim: u64) -> Result<()> {
    let cmd = format!("- {memcg_id} {nid} {seq} {swappiness} {nr_to_reclaim}");
    sys::write(LRU_GEN_DEBUGFS, &cmd)
}

/// Looks the memcg at `path` up and ages its lruvec on `nid` once.
/// Returns the lruvec as it was before and after.
pub fn age_memcg(path: &str, nid: u32) -> Result<(Node, Node)> {
    let before = node_of(path, nid)?;
    let id = find(&read()?, path).context("memcg vanished")?.id;
    let max = before.max_seq().context("no generations")?;
    age(id, nid, max, true, true)?;
    let after = node_of(path, nid)?;
    if after.max_seq() != Some(max + 1) {
        bail!(
            "aging did not create generation {} (max_seq now {:?})",
            max + 1,
            after.max_seq()
        );
    }
    Ok((before, after))
}

/// The lruvec of memcg `path` on node `nid`.
pub fn node_of(path: &str, nid: u32) -> Result<Node> {
    let all = read()?;
    let m = find(&all, path).with_context(|| format!("memcg {path} not in lru_gen"))?;
    m.nodes
        .iter()
        .find(|n| n.nid == nid)
        .cloned()
        .with_context(|| format!("memcg {path} has no node {nid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "\
memcg     1 /
 node     0
          0      12345          10       2000 
          1       6789           0        300 
          2        100         512          0 
          3         10           1          1 
memcg     2 /test
 node     0
          5        200        1024          3 
          6         20           0          0 
";

    #[test]
    fn parses_memcgs_and_gens() {
        let m = parse(ONE).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].id, 1);
        assert_eq!(m[0].path, "/");
        assert_eq!(m[0].nodes[0].gens.len(), 4);
        assert_eq!(m[0].nodes[0].max_seq(), Some(3));
        assert_eq!(m[0].nodes[0].total_anon(), 523);
        let t = find(&m, "/test").unwrap();
        assert_eq!(t.id, 2);
        assert_eq!(t.nodes[0].youngest().unwrap().anon, 0);
        assert_eq!(t.nodes[0].gens[0].anon, 1024);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(parse("hello world\n").is_err());
        assert!(parse(" node 0\n 0 1 2 3\n").is_err());
        assert!(parse("memcg 1 /\n node 0\n").is_err());
        let cut = &ONE[..ONE.len() - 20];
        assert!(parse(cut).is_err());
        assert!(parse("").unwrap().is_empty());
    }
}
