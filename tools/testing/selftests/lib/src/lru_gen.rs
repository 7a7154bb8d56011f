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
    /// Page-table walk stats of the aging pass that created the next
    /// generation (`lru_gen_full` only; `None` in `lru_gen`).
    pub walk: Option<WalkStats>,
}

/// The mm-walk stats line of `lru_gen_full`: one counter per letter.
///
/// 6.12 prints `T`otal and `Y`oung leaf entries and non-leaf entries
/// `F`ound in and `A`dded to Bloom filters; the series adds fast-only
/// secondary MMU queries: `C`alls, `S`econdary-young answers and `E`rrors
/// (answers that failed). Upper case is the current generation, lower case
/// history; letters are stored in lower case. `x` marks "no data".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// `(letter, value)` in file order, `x` entries left out.
    pub counters: Vec<(char, u64)>,
}

impl WalkStats {
    /// The counter for `letter` (case-insensitive), if printed.
    pub fn get(&self, letter: char) -> Option<u64> {
        let l = letter.to_ascii_lowercase();
        self.counters.iter().find(|(c, _)| *c == l).map(|&(_, v)| v)
    }

    /// Parses a stats line: every token is digits followed by one letter.
    pub fn parse(toks: &[&str]) -> Option<WalkStats> {
        let mut counters = Vec::new();
        for t in toks {
            let letter = t.chars().last()?;
            let digits = &t[..t.len() - letter.len_utf8()];
            if !letter.is_ascii_alphabetic()
                || digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            if letter == 'x' {
                continue;
            }
            counters.push((letter.to_ascii_lowercase(), digits.parse().ok()?));
        }
        Some(WalkStats { counters })
    }
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
                // Tier lines start with a plain tier number; the mm-walk
                // line is letter-suffixed counters only.
                let is_tier = first.bytes().all(|b| b.is_ascii_digit())
                    && toks.len() == 7
                    && WalkStats::parse(&toks[1..]).is_some();
                let walk = if is_gen || is_tier {
                    None
                } else {
                    WalkStats::parse(&toks)
                };
                if is_gen {
                    let g = Generation {
                        seq: num(toks[0], "seq", lineno)?,
                        age_ms: num(toks[1], "age", lineno)?,
                        anon: num(toks[2], "anon count", lineno)?,
                        file: num(toks[3], "file count", lineno)?,
                        walk: None,
                    };
                    let node = memcgs
                        .last_mut()
                        .and_then(|m| m.nodes.last_mut())
                        .with_context(|| format!("line {lineno}: generation before any node"))?;
                    node.gens.push(g);
                } else if is_tier {
                    continue;
                } else if let Some(w) = walk {
                    let g = memcgs
                        .last_mut()
                        .and_then(|m| m.nodes.last_mut())
                        .and_then(|n| n.gens.last_mut())
                        .with_context(|| format!("line {lineno}: stats before any generation"))?;
                    g.walk = Some(w);
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
        if m.nodes.is_empty() {
            bail!("memcg {} lists no node", m.id);
        }
        for n in &m.nodes {
            if n.gens.is_empty() {
                bail!("memcg {} node {} lists no generation", m.id, n.nid);
            }
        }
    }
    Ok(memcgs)
}

/// Path of the MGLRU debugfs file with additional stats.
pub const LRU_GEN_FULL_DEBUGFS: &str = "/sys/kernel/debug/lru_gen_full";

/// Reads and parses `/sys/kernel/debug/lru_gen`.
pub fn read() -> Result<Vec<Memcg>> {
    parse(&sys::read(LRU_GEN_DEBUGFS)?)
}

/// Reads and parses `/sys/kernel/debug/lru_gen_full`.
pub fn read_full() -> Result<Vec<Memcg>> {
    parse(&sys::read(LRU_GEN_FULL_DEBUGFS)?)
}

/// The lruvec of memcg `path` on node `nid`, from `lru_gen_full`.
pub fn node_full_of(path: &str, nid: u32) -> Result<Node> {
    lruvec_in(&read_full()?, path, nid).map(|(_, n)| n.clone())
}

/// The id of memcg `path` and its lruvec on node `nid`, in parsed text.
pub fn lruvec_in<'a>(all: &'a [Memcg], path: &str, nid: u32) -> Result<(u32, &'a Node)> {
    let m = find(all, path).with_context(|| format!("memcg {path} not listed"))?;
    let n = m
        .nodes
        .iter()
        .find(|n| n.nid == nid)
        .with_context(|| format!("memcg {path} has no node {nid}"))?;
    Ok((m.id, n))
}

impl Node {
    /// The generation with sequence number `seq`.
    pub fn gen(&self, seq: u64) -> Option<&Generation> {
        self.gens.iter().find(|g| g.seq == seq)
    }
}

/// Finds the memcg with cgroup path `path` (e.g. `/mglru-test`). A removed
/// memcg stays listed, with id 0 (`mem_cgroup_id()` of an offline memcg),
/// while something still pins it (e.g. swap charged to it), next to a new
/// memcg of the same path: the live one is returned.
pub fn find<'a>(memcgs: &'a [Memcg], path: &str) -> Option<&'a Memcg> {
    let mut same = memcgs.iter().filter(|m| m.path == path);
    let first = same.clone().next();
    same.find(|m| m.id != 0).or(first)
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
    lruvec_in(&read()?, path, nid).map(|(_, n)| n.clone())
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
    fn find_prefers_the_live_memcg_of_a_path() {
        let text = "\
memcg     0 /test
 node     0
          4        200        1024          3 
memcg     7 /test
 node     0
          9         20           0          0 
memcg     0 /gone
 node     0
          1          1           1          1 
";
        let m = parse(text).unwrap();
        assert_eq!(find(&m, "/test").unwrap().id, 7);
        assert_eq!(find(&m, "/gone").unwrap().id, 0);
        assert!(find(&m, "/none").is_none());
    }

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

    const FULL: &str = "\
memcg     3 /aging
 node     0
          7        300        100          5 
                     0          0R          0T          0x          0R          0T          0x 
                     1          0r          0e          0p          0r          0e          0p 
                           16390t       8193y          0f          0a      16384c       8192s          0e 
          8         10          0          0 
                     0          0R          0T          0x          0R          0T          0x 
                                0x          0x          0x          0x          0x          0x          0x 
";

    #[test]
    fn parses_walk_stats_of_full() {
        let m = parse(FULL).unwrap();
        let n = &m[0].nodes[0];
        assert_eq!(n.gens.len(), 2);
        let w = n.gen(7).unwrap().walk.as_ref().unwrap();
        assert_eq!(w.get('T'), Some(16390));
        assert_eq!(w.get('y'), Some(8193));
        assert_eq!(w.get('C'), Some(16384));
        assert_eq!(w.get('s'), Some(8192));
        assert_eq!(w.get('e'), Some(0));
        assert_eq!(w.get('q'), None);
        // The youngest generation prints only "no data" markers.
        assert_eq!(n.gen(8).unwrap().walk.as_ref().unwrap().counters, vec![]);
        // 6.12's four-column line parses too.
        let old = WalkStats::parse(&["5T", "2Y", "0F", "0A"]).unwrap();
        assert_eq!(old.get('a'), Some(0));
        assert_eq!(old.get('c'), None);
        assert!(WalkStats::parse(&["12", "3y"]).is_none());
        assert!(WalkStats::parse(&["t"]).is_none());
    }

    // Captured from the test kernel by scripts/capture-lru-gen (two memcgs
    // with 8 and 16 MiB of shmem, each aged once; multinode: numa=fake=2).
    const SINGLE: &str = include_str!("../testdata/lru_gen_single.txt");
    const FULL_SINGLE: &str = include_str!("../testdata/lru_gen_full_single.txt");
    const MULTI: &str = include_str!("../testdata/lru_gen_multinode.txt");
    const FULL_MULTI: &str = include_str!("../testdata/lru_gen_full_multinode.txt");

    fn check_captured(text: &str, nodes: usize) -> Vec<Memcg> {
        let m = parse(text).unwrap();
        let paths: Vec<_> = m.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/", "/cap-a", "/cap-b"]);
        for c in &m {
            assert_eq!(c.nodes.len(), nodes, "memcg {}", c.path);
            for n in &c.nodes {
                assert!(n.gens.len() >= 2, "memcg {} node {}", c.path, n.nid);
                let seqs: Vec<_> = n.gens.iter().map(|g| g.seq).collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            }
        }
        // 8 and 16 MiB of shmem (anon LRU), on whichever node they landed.
        let anon = |p: &str| -> u64 {
            find(&m, p)
                .unwrap()
                .nodes
                .iter()
                .map(Node::total_anon)
                .sum()
        };
        assert!(anon("/cap-a") >= 2000, "cap-a anon {}", anon("/cap-a"));
        assert!(anon("/cap-b") >= 4000, "cap-b anon {}", anon("/cap-b"));
        m
    }

    #[test]
    fn parses_captured_single_node() {
        let plain = check_captured(SINGLE, 1);
        let full = check_captured(FULL_SINGLE, 1);
        // Same generations in both files, and the same page counts in the
        // idle test memcgs (the root's changed between the two reads).
        for (a, b) in plain.iter().zip(&full) {
            let idle = a.path != "/";
            let key = |g: &Generation| (g.seq, if idle { g.anon } else { 0 });
            let sa: Vec<_> = a.nodes[0].gens.iter().map(key).collect();
            let sb: Vec<_> = b.nodes[0].gens.iter().map(key).collect();
            assert_eq!(sa, sb, "memcg {}", a.path);
        }
        // lru_gen has no walk stats; lru_gen_full has them for every
        // generation, and the aged memcgs' walks visited leaf entries.
        assert!(plain
            .iter()
            .all(|c| c.nodes[0].gens.iter().all(|g| g.walk.is_none())));
        // The series' seven counters (t y f a c s e) on every generation but
        // the youngest, which has no history yet ("x").
        for c in &full {
            let n = &c.nodes[0];
            let max = n.max_seq().unwrap();
            for g in &n.gens {
                let w = g.walk.as_ref().unwrap();
                let want = if g.seq == max { 0 } else { 7 };
                assert_eq!(w.counters.len(), want, "memcg {} gen {}", c.path, g.seq);
            }
        }
    }

    #[test]
    fn parses_captured_multi_node() {
        check_captured(MULTI, 2);
        let full = check_captured(FULL_MULTI, 2);
        assert_eq!(full[0].nodes[1].nid, 1);
    }

    #[test]
    fn rejects_truncated_captures() {
        for text in [SINGLE, FULL_SINGLE, MULTI, FULL_MULTI] {
            // Cut inside every 7th line: never a complete file.
            for (i, _) in text.match_indices('\n').step_by(7) {
                if i > 3 {
                    assert!(parse(&text[..i - 2]).is_err(), "cut at {i} accepted");
                }
            }
            // Cut right after a memcg or node header: no generation follows.
            let hdr = text.find("\n node").unwrap();
            assert!(parse(&text[..hdr + 1]).is_err());
        }
    }

    #[test]
    fn rejects_garbage_in_captures() {
        for text in [SINGLE, FULL_MULTI] {
            let mid = text.len() / 2;
            let at = mid + text[mid..].find('\n').unwrap() + 1;
            for junk in [
                "oops\n",
                "memcg\n",
                " node x\n",
                "1 2 3\n",
                "       7 8 9 10 11\n",
            ] {
                let bad = format!("{}{junk}{}", &text[..at], &text[at..]);
                assert!(parse(&bad).is_err(), "{junk:?} accepted");
            }
        }
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
