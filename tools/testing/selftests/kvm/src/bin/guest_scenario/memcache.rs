// SPDX-License-Identifier: GPL-2.0
//! A memcached client for the text protocol, enough for a load generator:
//! `set`, `get` and `version`, one request in flight.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One connection to memcached. `S` is the stream (a `TcpStream`; tests
/// use an in-memory one).
pub struct Client<S: Read + Write> {
    io: BufReader<S>,
    line: String,
}

impl Client<TcpStream> {
    /// Connects to `addr` with `timeout` for the connection and for every
    /// read and write after it.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Self> {
        let sa = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to nothing"))?;
        let s = TcpStream::connect_timeout(&sa, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Self::new(s))
    }

    /// Sets the read and write timeout of every later request.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        let s = self.io.get_ref();
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(())
    }
}

impl<S: Read + Write> Client<S> {
    /// A client on an established stream.
    pub fn new(stream: S) -> Self {
        Self {
            io: BufReader::with_capacity(64 << 10, stream),
            line: String::new(),
        }
    }

    fn read_line(&mut self) -> Result<&str> {
        self.line.clear();
        let n = self
            .io
            .read_line(&mut self.line)
            .context("reading memcached's reply")?;
        if n == 0 {
            bail!("memcached closed the connection");
        }
        if !self.line.ends_with("\r\n") {
            bail!("reply line not terminated by CRLF: {:?}", self.line);
        }
        Ok(self.line.trim_end_matches("\r\n"))
    }

    /// `version`: the server's version string.
    pub fn version(&mut self) -> Result<String> {
        self.io.get_mut().write_all(b"version\r\n")?;
        let l = self.read_line()?;
        match l.strip_prefix("VERSION ") {
            Some(v) => Ok(v.to_owned()),
            None => bail!("unexpected reply to version: {l:?}"),
        }
    }

    /// `set KEY 0 0 LEN`: stores `value`; an error unless `STORED`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        let mut req = Vec::with_capacity(value.len() + key.len() + 32);
        write!(req, "set {key} 0 0 {}\r\n", value.len())?;
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        self.io.get_mut().write_all(&req)?;
        let l = self.read_line()?;
        if l != "STORED" {
            bail!("set {key}: {l:?}");
        }
        Ok(())
    }

    /// Stores many values with `noreply`, pipelined in large writes (no
    /// round trip per value), then waits for memcached to have processed
    /// them all (a `version` round trip on the same connection). memcached
    /// reports no errors for `noreply`: check the result (e.g. with
    /// [`Client::stat`]).
    pub fn set_many_noreply<'a>(
        &mut self,
        items: impl Iterator<Item = (String, &'a [u8])>,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(256 << 10);
        for (key, value) in items {
            check_key(&key)?;
            write!(buf, "set {key} 0 0 {} noreply\r\n", value.len())?;
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
            if buf.len() >= 256 << 10 {
                self.io.get_mut().write_all(&buf)?;
                buf.clear();
            }
        }
        self.io.get_mut().write_all(&buf)?;
        self.version().map(drop)
    }

    /// `get KEY...`: the values of `keys` that memcached holds, in the
    /// order it returns them (a miss is left out).
    pub fn get_multi(&mut self, keys: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut req = String::from("get");
        for k in keys {
            check_key(k)?;
            req.push(' ');
            req.push_str(k);
        }
        req.push_str("\r\n");
        self.io.get_mut().write_all(req.as_bytes())?;
        let mut out = Vec::with_capacity(keys.len());
        loop {
            let l = self.read_line()?.to_owned();
            if l == "END" {
                return Ok(out);
            }
            let key = l.split(' ').nth(1).unwrap_or_default().to_owned();
            if !keys.contains(&key) {
                bail!("get: unexpected reply line {l:?}");
            }
            let len = parse_value_line(&l, &key)?;
            let mut data = vec![0u8; len + 2];
            self.io.read_exact(&mut data).context("reading a value")?;
            if &data[len..] != b"\r\n" {
                bail!("get {key}: value of {len} bytes not followed by CRLF");
            }
            data.truncate(len);
            out.push((key, data));
        }
    }

    /// `stats`: the general statistic `name`, `None` if not listed.
    pub fn stat(&mut self, name: &str) -> Result<Option<u64>> {
        self.io.get_mut().write_all(b"stats\r\n")?;
        let mut found = None;
        loop {
            let l = self.read_line()?;
            if l == "END" {
                return Ok(found);
            }
            let mut t = l.split(' ');
            match (t.next(), t.next(), t.next()) {
                (Some("STAT"), Some(k), Some(v)) if k == name => {
                    found = Some(v.parse().with_context(|| format!("bad value in {l:?}"))?)
                }
                (Some("STAT"), Some(_), Some(_)) => {}
                _ => bail!("unexpected line in stats: {l:?}"),
            }
        }
    }

    /// `get KEY`: the value, `None` on a miss.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        // One write, one segment: "get ", the key and CRLF written
        // separately would be three on a TCP_NODELAY socket.
        self.io
            .get_mut()
            .write_all(format!("get {key}\r\n").as_bytes())?;
        let l = self.read_line()?;
        if l == "END" {
            return Ok(None);
        }
        let len = parse_value_line(l, key)?;
        let mut data = vec![0u8; len + 2];
        self.io.read_exact(&mut data).context("reading a value")?;
        if &data[len..] != b"\r\n" {
            bail!("get {key}: value of {len} bytes not followed by CRLF");
        }
        data.truncate(len);
        let l = self.read_line()?;
        if l != "END" {
            bail!("get {key}: {l:?} after the value instead of END");
        }
        Ok(Some(data))
    }
}

/// Keys are printable ASCII without blanks, at most 250 bytes.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 250 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("invalid memcached key {key:?}");
    }
    Ok(())
}

/// Parses `VALUE <key> <flags> <bytes>` for `key`: the value's length.
pub fn parse_value_line(line: &str, key: &str) -> Result<usize> {
    let mut t = line.split(' ');
    let (Some("VALUE"), Some(k), Some(flags), Some(len), None) =
        (t.next(), t.next(), t.next(), t.next(), t.next())
    else {
        bail!("unexpected reply to get {key}: {line:?}");
    };
    if k != key {
        bail!("get {key} answered for key {k:?}");
    }
    flags
        .parse::<u32>()
        .with_context(|| format!("bad flags in {line:?}"))?;
    len.parse()
        .with_context(|| format!("bad length in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that replays a canned reply and records what was sent.
    struct Canned {
        reply: Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }
    impl Read for Canned {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reply.read(buf)
        }
    }
    impl Write for Canned {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn client(reply: &[u8]) -> Client<Canned> {
        Client::new(Canned {
            reply: Cursor::new(reply.to_vec()),
            sent: Vec::new(),
        })
    }

    #[test]
    fn value_line() {
        assert_eq!(parse_value_line("VALUE k1 0 5", "k1").unwrap(), 5);
        assert!(parse_value_line("VALUE k2 0 5", "k1").is_err());
        assert!(parse_value_line("VALUE k1 0", "k1").is_err());
        assert!(parse_value_line("VALUE k1 0 5 9", "k1").is_err());
        assert!(parse_value_line("VALUE k1 x 5", "k1").is_err());
        assert!(parse_value_line("SERVER_ERROR out of memory", "k1").is_err());
    }

    #[test]
    fn get_hit_miss_and_garbage() {
        let mut c = client(b"VALUE k 0 3\r\nabc\r\nEND\r\nEND\r\n");
        assert_eq!(c.get("k").unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(c.get("k").unwrap(), None);
        assert_eq!(c.io.get_ref().sent, b"get k\r\nget k\r\n");
        assert!(client(b"VALUE k 0 3\r\nabcd\r\nEND\r\n").get("k").is_err());
        assert!(client(b"VALUE k 0 3\r\nabc\r\n").get("k").is_err());
        assert!(client(b"").get("k").is_err());
    }

    #[test]
    fn pipelined_sets_and_stats() {
        let mut c = client(b"VERSION 1\r\nSTAT pid 7\r\nSTAT curr_items 2\r\nEND\r\n");
        let (a, b) = (b"x".to_vec(), b"yz".to_vec());
        c.set_many_noreply([("a".to_string(), &a[..]), ("b".to_string(), &b[..])].into_iter())
            .unwrap();
        assert_eq!(c.stat("curr_items").unwrap(), Some(2));
        assert_eq!(
            c.io.get_ref().sent,
            b"set a 0 0 1 noreply\r\nx\r\nset b 0 0 2 noreply\r\nyz\r\nversion\r\nstats\r\n"
        );
        assert_eq!(
            client(b"STAT pid 7\r\nEND\r\n").stat("curr_items").unwrap(),
            None
        );
        assert!(client(b"STAT pid\r\nEND\r\n").stat("pid").is_err());
        assert!(client(b"ERROR\r\n").stat("pid").is_err());
    }

    #[test]
    fn multi_get() {
        let keys = ["a".to_string(), "b".to_string(), "c".to_string()];
        let mut c = client(b"VALUE a 0 1\r\nx\r\nVALUE c 0 2\r\nyz\r\nEND\r\n");
        let got = c.get_multi(&keys).unwrap();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), b"x".to_vec()),
                ("c".to_string(), b"yz".to_vec())
            ]
        );
        assert_eq!(c.io.get_ref().sent, b"get a b c\r\n");
        assert!(client(b"VALUE d 0 1\r\nx\r\nEND\r\n")
            .get_multi(&keys)
            .is_err());
        assert!(client(b"VALUE a 0 1\r\nxy\r\nEND\r\n")
            .get_multi(&keys)
            .is_err());
    }

    #[test]
    fn set_and_version() {
        let mut c = client(b"STORED\r\nVERSION 1.6.18\r\n");
        c.set("k", b"xy").unwrap();
        assert_eq!(c.version().unwrap(), "1.6.18");
        assert_eq!(c.io.get_ref().sent, b"set k 0 0 2\r\nxy\r\nversion\r\n");
        assert!(client(b"SERVER_ERROR out of memory storing object\r\n")
            .set("k", b"x")
            .is_err());
        assert!(client(b"STORED\r\n").set("bad key", b"x").is_err());
    }
}
