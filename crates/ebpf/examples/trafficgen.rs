//! The traffic generator of `bench/real-traffic.sh`: both ends of two measurements, each run as
//! its own process inside a network namespace (`ip netns exec NS trafficgen MODE ...`). Every
//! measuring mode runs for a fixed time and prints exactly one number on stdout (details go to
//! stderr).
//!
//! - `serve --port P [--threads N] [--request B] [--reply B] [--ready FILE]`: TCP server. Each
//!   thread owns a `SO_REUSEPORT` listener and an epoll loop; a connection is read until `request`
//!   bytes (or EOF) arrived, answered with `reply` bytes and closed by the server (so TIME_WAIT
//!   stays on the server, and the client's ports come free at once). Runs until killed.
//! - `connrate [--duration S] [--warmup S] [--concurrency C] [--threads N] [--request B]
//!   [--reply B] [--timeout-ms MS] [--source-base IP --sources N] ADDR:PORT...`: new TCP connections per second. Each thread keeps
//!   its share of `C` non-blocking connections in flight (connect, send `request` bytes, read the
//!   reply to EOF, close, start the next), round-robin over the targets; with `--source-base IP
//!   --sources N`, also round-robin over N source addresses from IP upward (the client's port
//!   range then lasts N times longer before a 4-tuple repeats). Prints the completed
//!   connections per second of the measuring window (after the warmup); stderr has failures,
//!   timeouts and latency percentiles.
//! - `sink --port P [--warmup S] [--duration S] [--timeout S] [--cpu N] [--ready FILE]`: UDP
//!   receiver (`recvmmsg`). The window starts `warmup` after the first packet and lasts
//!   `duration`; prints packets per second received in it (0 if nothing came within `timeout`);
//!   stderr has the namespace's UDP receive-buffer drops during the run.
//! - `udpflood [--duration S] [--size B] [--batch N] [--cpu N] ADDR:PORT`: one UDP flow (one
//!   connected socket, so every packet after the first belongs to an established flow), sent with
//!   `sendmmsg` in batches; prints the packets per second it sent.
//! - `newflows [--duration S] [--rate PPS] [--batch N] [--cpu N] --source-base IP [--sources N] ADDR:PORT`: a new
//!   flow per datagram (raw socket, each UDP packet with a 5-tuple no earlier one had), sent with
//!   `sendmmsg`; prints the packets (= new flows) per second it sent. What a data plane does per
//!   new connection, without a TCP stack limiting the rate.
//!
//! - `synflood [--duration S] [--rate PPS] [--batch N] [--cpu N] --source-base IP [--sources N]
//!   ADDR:PORT`: half-open connections: TCP SYNs built on a raw socket from forged sources (the
//!   source port runs through 1024-65535 for each of the N sources in turn), never followed by an
//!   ACK; prints the SYNs per second it sent. `--rate` (also for `newflows`) paces the sender
//!   (0, the default: as fast as it can).
//! - `probe [--duration S] [--rate R] [--timeout-ms MS] [--request B] [--reply B] ADDR:PORT...`:
//!   a legitimate client under test: starts R new TCP connections a second for S seconds, on a
//!   fixed schedule whatever happens to earlier ones (open loop), each given `timeout-ms` (default
//!   4000: the SYN and its retransmissions at 1 s and 3 s) to connect, send `request` bytes and
//!   read the reply to EOF. Prints one line of `key=value`: attempts, ok, failed, timed_out,
//!   connect_p50_us, connect_p99_us, connect_max_us (connect latency of the successful ones),
//!   done_p50_us (whole exchange).
//!
//! Linux only; uses libc directly for epoll, sendmmsg/recvmmsg and CPU affinity.

#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// `--key value` options and positional arguments.
struct Args {
    options: HashMap<String, String>,
    positional: Vec<String>,
}

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Args {
        let mut options = HashMap::new();
        let mut positional = Vec::new();
        let mut raw = raw.peekable();
        while let Some(a) = raw.next() {
            if let Some(key) = a.strip_prefix("--") {
                let value = raw.next().unwrap_or_else(|| die(&format!("--{key} needs a value")));
                options.insert(key.to_owned(), value);
            } else {
                positional.push(a);
            }
        }
        Args { options, positional }
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.options.get(key) {
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{key}: cannot read {v:?}"))),
            None => default,
        }
    }

    fn seconds(&self, key: &str, default: f64) -> Duration {
        Duration::from_secs_f64(self.get(key, default))
    }
}

fn die(msg: &str) -> ! {
    eprintln!("trafficgen: {msg}");
    std::process::exit(2)
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, value: i32, what: &str) -> io::Result<()> {
    // SAFETY: a valid pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    check(rc, what).map(|_| ())
}

fn bind(fd: i32, addr: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: `sa` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(fd, &sa as *const libc::sockaddr_in as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
    };
    check(rc, "bind").map(|_| ())
}

fn close(fd: i32) {
    // SAFETY: closing an fd this program owns.
    unsafe { libc::close(fd) };
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("trafficgen: cannot pin to CPU {cpu}: {}", io::Error::last_os_error());
        }
    }
}

fn maybe_pin(args: &Args) {
    if let Some(cpu) = args.options.get("cpu") {
        pin_to(cpu.parse().unwrap_or_else(|_| die("--cpu: not a number")));
    }
}

fn ready(args: &Args) {
    if let Some(path) = args.options.get("ready") {
        std::fs::write(path, b"ready\n").unwrap_or_else(|e| die(&format!("writing {path}: {e}")));
    }
}

struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll_create1").map(Epoll)
    }

    fn ctl(&self, op: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a valid epoll_event.
        check(unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) }, "epoll_ctl").map(|_| ())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.0);
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// serve

fn serve(args: &Args) {
    let port: u16 = args.get("port", 8080);
    let threads: usize = args.get("threads", 1);
    let request: usize = args.get("request", 16);
    let reply = vec![b'r'; args.get("reply", 16usize)];
    maybe_pin(args);
    let mut listeners = Vec::new();
    for _ in 0..threads {
        // SAFETY: plain syscall.
        let fd = check(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) },
            "socket",
        )
        .unwrap_or_else(|e| die(&e.to_string()));
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR").unwrap();
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT").unwrap();
        bind(fd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap_or_else(|e| die(&e.to_string()));
        // SAFETY: plain syscall.
        check(unsafe { libc::listen(fd, 4096) }, "listen").unwrap_or_else(|e| die(&e.to_string()));
        listeners.push(fd);
    }
    ready(args);
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|lfd| {
            let reply = reply.clone();
            std::thread::spawn(move || serve_loop(lfd, request, &reply))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn serve_loop(lfd: i32, request: usize, reply: &[u8]) {
    const LISTENER: u64 = u64::MAX;
    let ep = Epoll::new().unwrap();
    ep.ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32, LISTENER).unwrap();
    // fd -> bytes of the request read so far
    let mut conns: HashMap<i32, usize> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 4096];
    // Reads what is there; answers and closes when the request is complete. Returns whether the
    // connection is finished (closed).
    let service = |fd: i32, got: &mut usize, buf: &mut [u8]| -> bool {
        loop {
            // SAFETY: reading into a buffer of the length passed.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n > 0 {
                *got += n as usize;
                if *got >= request {
                    break;
                }
                continue;
            }
            if n == 0 {
                break; // EOF: answer what came
            }
            let e = errno();
            if e == libc::EAGAIN {
                return false;
            }
            close(fd);
            return true;
        }
        // SAFETY: writing from a buffer of the length passed; a short write of 16 bytes to a fresh
        // socket does not happen, and the bench does not care if it did.
        unsafe { libc::write(fd, reply.as_ptr() as *const libc::c_void, reply.len()) };
        close(fd);
        true
    };
    loop {
        let n = ep.wait(&mut events, 1000);
        for ev in &events[..n] {
            let data = ev.u64;
            if data == LISTENER {
                loop {
                    // SAFETY: accept4 with null address pointers is allowed.
                    let fd = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        break;
                    }
                    let mut got = 0;
                    if !service(fd, &mut got, &mut buf) {
                        conns.insert(fd, got);
                        if ep.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64).is_err() {
                            conns.remove(&fd);
                            close(fd);
                        }
                    }
                }
            } else {
                let fd = data as i32;
                let Some(mut got) = conns.get(&fd).copied() else { continue };
                if service(fd, &mut got, &mut buf) {
                    conns.remove(&fd); // closing removed it from the epoll set
                } else {
                    conns.insert(fd, got);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// connrate

#[derive(Default)]
struct ConnStats {
    done: u64,
    failed: u64,
    timed_out: u64,
    no_port: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Idle,
    Connecting,
    Reading,
}

struct Conn {
    fd: i32,
    state: State,
    started: Instant,
    got: usize,
}

fn connrate(args: &Args) {
    let duration = args.seconds("duration", 5.0);
    let warmup = args.seconds("warmup", 1.0);
    let concurrency: usize = args.get("concurrency", 16);
    let threads: usize = args.get("threads", 2).max(1);
    let request: usize = args.get("request", 16);
    let reply: usize = args.get("reply", 16);
    let timeout = Duration::from_millis(args.get("timeout-ms", 3000));
    let sources: Vec<Ipv4Addr> = match args.options.get("source-base") {
        Some(base) => {
            let base: Ipv4Addr = base.parse().unwrap_or_else(|_| die("--source-base: not an IPv4 address"));
            (0..args.get::<u32>("sources", 1)).map(|i| Ipv4Addr::from(u32::from(base) + i)).collect()
        }
        None => Vec::new(),
    };
    let targets: Vec<SocketAddrV4> = args
        .positional
        .iter()
        .map(|t| t.parse().unwrap_or_else(|_| die(&format!("not an IPv4 ADDR:PORT: {t}"))))
        .collect();
    if targets.is_empty() {
        die("connrate needs at least one ADDR:PORT");
    }
    maybe_pin(args);
    let syn_retrans0 = proc_net_counter("netstat", "TcpExt:", "TCPSynRetrans");
    let start = Instant::now();
    let window = (start + warmup, start + warmup + duration);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let per = concurrency / threads + usize::from(t < concurrency % threads);
            let targets = targets.clone();
            let sources = sources.clone();
            std::thread::spawn(move || connrate_thread(per, t, &targets, &sources, request, reply, timeout, window))
        })
        .collect();
    let mut all = ConnStats::default();
    for h in handles {
        let s = h.join().unwrap();
        all.done += s.done;
        all.failed += s.failed;
        all.timed_out += s.timed_out;
        all.no_port += s.no_port;
        all.latencies_us.extend(s.latencies_us);
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.latencies_us.is_empty() {
            return 0;
        }
        all.latencies_us[((all.latencies_us.len() - 1) as f64 * p) as usize]
    };
    let rate = all.done as f64 / duration.as_secs_f64();
    let syn_retrans = proc_net_counter("netstat", "TcpExt:", "TCPSynRetrans") - syn_retrans0;
    eprintln!(
        "connrate: {} connections in {:.1} s ({rate:.0}/s), {} failed, {} timed out, {} without a free port; \
         latency p50 {} us, p99 {} us, max {} us; {syn_retrans} SYNs retransmitted (whole run){}",
        all.done,
        duration.as_secs_f64(),
        all.failed,
        all.timed_out,
        all.no_port,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        all.first_error.map(|e| format!("; first error: {e}")).unwrap_or_default()
    );
    println!("{rate:.0}");
}

#[allow(clippy::too_many_arguments)]
fn connrate_thread(
    slots: usize,
    thread: usize,
    targets: &[SocketAddrV4],
    sources: &[Ipv4Addr],
    request: usize,
    reply: usize,
    timeout: Duration,
    (from, until): (Instant, Instant),
) -> ConnStats {
    let ep = Epoll::new().unwrap();
    let mut stats = ConnStats::default();
    let mut conns: Vec<Conn> =
        (0..slots).map(|_| Conn { fd: -1, state: State::Idle, started: Instant::now(), got: 0 }).collect();
    let payload = vec![b'q'; request];
    let mut buf = [0u8; 4096];
    let mut next_target = thread;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];

    let fail = |stats: &mut ConnStats, c: &mut Conn, what: String, now: Instant| {
        close(c.fd);
        c.fd = -1;
        c.state = State::Idle;
        if now >= from && now < until {
            stats.failed += 1;
            if stats.first_error.is_none() {
                stats.first_error = Some(what);
            }
        }
    };
    // Starts a connection in slot `c`: returns false when no port was free (try again later).
    let mut open = |stats: &mut ConnStats, c: &mut Conn, slot: usize| -> bool {
        let target = targets[next_target % targets.len()];
        // SAFETY: plain syscall.
        let fd =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            stats.failed += 1;
            return false;
        }
        if !sources.is_empty() {
            // The port is chosen at connect time (unique per 4-tuple), not at bind time.
            let src = sources[(next_target / targets.len()) % sources.len()];
            let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1, "IP_BIND_ADDRESS_NO_PORT");
            if bind(fd, SocketAddrV4::new(src, 0)).is_err() {
                close(fd);
                stats.failed += 1;
                stats.first_error.get_or_insert_with(|| format!("bind {src}: {}", io::Error::last_os_error()));
                return false;
            }
        }
        next_target += 1;
        let sa = sockaddr(target);
        c.fd = fd;
        c.started = Instant::now();
        c.got = 0;
        // SAFETY: `sa` is a valid sockaddr_in.
        let rc = unsafe {
            libc::connect(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of_val(&sa) as u32,
            )
        };
        let e = if rc < 0 { errno() } else { 0 };
        if rc < 0 && e != libc::EINPROGRESS {
            close(fd);
            c.fd = -1;
            c.state = State::Idle;
            if e == libc::EADDRNOTAVAIL {
                stats.no_port += 1;
            } else {
                stats.failed += 1;
                stats.first_error.get_or_insert_with(|| format!("connect: {}", io::Error::from_raw_os_error(e)));
            }
            return false;
        }
        c.state = State::Connecting;
        if ep.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLOUT as u32, slot as u64).is_err() {
            close(fd);
            c.fd = -1;
            c.state = State::Idle;
            stats.failed += 1;
            return false;
        }
        true
    };

    for (slot, c) in conns.iter_mut().enumerate() {
        open(&mut stats, c, slot);
    }
    let mut last_sweep = Instant::now();
    loop {
        let n = ep.wait(&mut events, 20);
        let now = Instant::now();
        if now >= until {
            break;
        }
        for ev in &events[..n] {
            let slot = ev.u64 as usize;
            let c = &mut conns[slot];
            match c.state {
                State::Idle => {}
                State::Connecting => {
                    let mut err: i32 = 0;
                    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
                    // SAFETY: valid pointers to an int and its length.
                    unsafe {
                        libc::getsockopt(
                            c.fd,
                            libc::SOL_SOCKET,
                            libc::SO_ERROR,
                            &mut err as *mut i32 as *mut libc::c_void,
                            &mut len,
                        )
                    };
                    if err != 0 {
                        fail(&mut stats, c, format!("connect: {}", io::Error::from_raw_os_error(err)), now);
                        open(&mut stats, c, slot);
                        continue;
                    }
                    // SAFETY: writing from a buffer of the length passed.
                    let w = unsafe { libc::write(c.fd, payload.as_ptr() as *const libc::c_void, payload.len()) };
                    if w != payload.len() as isize {
                        fail(&mut stats, c, format!("write: {}", io::Error::last_os_error()), now);
                        open(&mut stats, c, slot);
                        continue;
                    }
                    c.state = State::Reading;
                    if ep.ctl(libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLIN as u32, slot as u64).is_err() {
                        fail(&mut stats, c, "epoll_ctl".into(), now);
                        open(&mut stats, c, slot);
                    }
                }
                State::Reading => loop {
                    // SAFETY: reading into a buffer of the length passed.
                    let r = unsafe { libc::read(c.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
                    if r > 0 {
                        c.got += r as usize;
                        continue;
                    }
                    if r < 0 && errno() == libc::EAGAIN {
                        break;
                    }
                    if r == 0 && c.got >= reply {
                        close(c.fd);
                        c.fd = -1;
                        c.state = State::Idle;
                        if now >= from && now < until {
                            stats.done += 1;
                            stats.latencies_us.push(now.duration_since(c.started).as_micros() as u32);
                        }
                    } else {
                        let what = if r == 0 {
                            format!("short reply: {} bytes", c.got)
                        } else {
                            format!("read: {}", io::Error::last_os_error())
                        };
                        fail(&mut stats, c, what, now);
                    }
                    open(&mut stats, c, slot);
                    break;
                },
            }
        }
        // Every 20 ms: time out stuck connections, retry slots that found no free port.
        if now.duration_since(last_sweep) >= Duration::from_millis(20) {
            last_sweep = now;
            for (slot, c) in conns.iter_mut().enumerate() {
                if c.state != State::Idle && now.duration_since(c.started) > timeout {
                    close(c.fd);
                    c.fd = -1;
                    c.state = State::Idle;
                    if now >= from && now < until {
                        stats.timed_out += 1;
                    }
                }
                if c.state == State::Idle {
                    open(&mut stats, c, slot);
                }
            }
        }
    }
    for c in &conns {
        if c.fd >= 0 {
            close(c.fd);
        }
    }
    stats
}

// ---------------------------------------------------------------------------------------------
// sink / udpflood

/// Counter `name` of line kind `prefix` ("Udp:", "TcpExt:") in this namespace's /proc/net/`file`.
fn proc_net_counter(file: &str, prefix: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/self/net/{file}")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    if lines.len() < 2 {
        return 0;
    }
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    names.iter().position(|n| *n == name).and_then(|i| values.get(i)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// (received datagrams, receive-buffer drops) of this namespace's UDP counters.
fn udp_counters() -> (u64, u64) {
    (proc_net_counter("snmp", "Udp:", "InDatagrams"), proc_net_counter("snmp", "Udp:", "RcvbufErrors"))
}

const BATCH_MAX: usize = 1024;
const DGRAM_MAX: usize = 2048;

fn sink(args: &Args) {
    let port: u16 = args.get("port", 8080);
    let warmup = args.seconds("warmup", 1.0);
    let duration = args.seconds("duration", 5.0);
    let timeout = args.seconds("timeout", 30.0);
    maybe_pin(args);
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }, "socket")
        .unwrap_or_else(|e| die(&e.to_string()));
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20, "SO_RCVBUFFORCE")
        .unwrap_or_else(|e| die(&e.to_string()));
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: a valid timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    bind(fd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap_or_else(|e| die(&e.to_string()));
    let (in0, drops0) = udp_counters();
    ready(args);

    let batch = 256;
    let mut bufs = vec![[0u8; DGRAM_MAX]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: DGRAM_MAX })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid initial value.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut counted = 0u64;
    let mut total = 0u64;
    loop {
        // SAFETY: `msgs` holds `batch` headers, each pointing at its own live buffer.
        let n =
            unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), batch as u32, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        let now = Instant::now();
        if n > 0 {
            total += n as u64;
            let t0 = *first.get_or_insert(now);
            if now >= t0 + warmup && now < t0 + warmup + duration {
                counted += n as u64;
            }
        }
        match first {
            Some(t0) if now >= t0 + warmup + duration => break,
            None if now.duration_since(started) > timeout => break,
            _ => {}
        }
    }
    let (in1, drops1) = udp_counters();
    let rate = counted as f64 / duration.as_secs_f64();
    eprintln!(
        "sink: {counted} datagrams in the {:.1} s window ({rate:.0}/s), {total} in all; namespace: {} received, \
         {} dropped for a full receive buffer",
        duration.as_secs_f64(),
        in1 - in0,
        drops1 - drops0
    );
    println!("{rate:.0}");
}

fn udpflood(args: &Args) {
    let duration = args.seconds("duration", 7.0);
    let size: usize = args.get("size", 18);
    let batch: usize = args.get::<usize>("batch", 256).clamp(1, BATCH_MAX);
    let target: SocketAddrV4 = args
        .positional
        .first()
        .unwrap_or_else(|| die("udpflood needs ADDR:PORT"))
        .parse()
        .unwrap_or_else(|_| die("not an IPv4 ADDR:PORT"));
    maybe_pin(args);
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }, "socket")
        .unwrap_or_else(|e| die(&e.to_string()));
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20, "SO_SNDBUFFORCE");
    let sa = sockaddr(target);
    // SAFETY: `sa` is a valid sockaddr_in.
    let rc = unsafe {
        libc::connect(fd, &sa as *const libc::sockaddr_in as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
    };
    check(rc, "connect").unwrap_or_else(|e| die(&e.to_string()));
    let mut payload = vec![0u8; size];
    for (i, b) in payload.iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut iovs: Vec<libc::iovec> = (0..batch)
        .map(|_| libc::iovec { iov_base: payload.as_mut_ptr() as *mut libc::c_void, iov_len: size })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid initial value.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = 0u64;
    let mut errors = 0u64;
    let mut first_error = None;
    while start.elapsed() < duration {
        // SAFETY: `msgs` holds `batch` headers pointing at the live payload.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), batch as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            // ECONNREFUSED (an ICMP error for an earlier packet) or ENOBUFS: go on.
            errors += 1;
            first_error.get_or_insert_with(io::Error::last_os_error);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = sent as f64 / secs;
    eprintln!(
        "udpflood: {sent} datagrams of {size} bytes in {secs:.2} s ({rate:.0}/s), batches of {batch}, {errors} failed \
         sendmmsg calls{}",
        first_error.map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    close(fd);
    println!("{rate:.0}");
}

/// A new flow per datagram: UDP packets built whole on a raw socket, each with a 5-tuple no earlier
/// one had (the source port runs through 1024-65535 for each of the N source addresses in turn), so
/// every packet is a connection's first packet for a stateful data plane (conntrack, a flow table)
/// and no TCP stack on either side limits the rate.
fn newflows(args: &Args) {
    let duration = args.seconds("duration", 7.0);
    let batch: usize = args.get::<usize>("batch", 256).clamp(1, BATCH_MAX);
    let target: SocketAddrV4 = args
        .positional
        .first()
        .unwrap_or_else(|| die("newflows needs ADDR:PORT"))
        .parse()
        .unwrap_or_else(|_| die("not an IPv4 ADDR:PORT"));
    let base: Ipv4Addr = args
        .options
        .get("source-base")
        .unwrap_or_else(|| die("newflows needs --source-base IP"))
        .parse()
        .unwrap_or_else(|_| die("--source-base: not an IPv4 address"));
    let sources: u32 = args.get("sources", 1u32).max(1);
    maybe_pin(args);
    // SAFETY: plain syscall.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) }, "socket")
            .unwrap_or_else(|e| die(&e.to_string()));
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20, "SO_SNDBUFFORCE");
    const LEN: usize = 20 + 8 + 18;
    let mut packets = vec![[0u8; LEN]; batch];
    for p in packets.iter_mut() {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[16..20].copy_from_slice(&target.ip().octets());
        p[22..24].copy_from_slice(&target.port().to_be_bytes());
        p[24..26].copy_from_slice(&((LEN - 20) as u16).to_be_bytes());
    }
    let mut sa = sockaddr(target);
    let mut iovs: Vec<libc::iovec> = packets
        .iter_mut()
        .map(|p| libc::iovec { iov_base: p.as_mut_ptr() as *mut libc::c_void, iov_len: LEN })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid initial value.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_name = &mut sa as *mut libc::sockaddr_in as *mut libc::c_void;
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    }
    let (mut n, mut sent, mut errors) = (0u64, 0u64, 0u64);
    let pace = Pace::new(args);
    let start = Instant::now();
    while start.elapsed() < duration {
        pace.wait(start, n);
        for p in packets.iter_mut() {
            let port = 1024 + (n % 64512) as u16;
            let src = u32::from(base) + ((n / 64512) % u64::from(sources)) as u32;
            p[12..16].copy_from_slice(&src.to_be_bytes());
            p[20..22].copy_from_slice(&port.to_be_bytes());
            n += 1;
        }
        // SAFETY: `msgs` holds `batch` headers pointing at the live packets and `sa`.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), batch as u32, 0) };
        if r > 0 {
            sent += r as u64;
        } else {
            errors += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = sent as f64 / secs;
    eprintln!(
        "newflows: {sent} new flows (datagrams, each its own 5-tuple) in {secs:.2} s ({rate:.0}/s) from {sources} \
         sources, {errors} failed sendmmsg calls"
    );
    close(fd);
    println!("{rate:.0}");
}

/// `--rate PPS`: a sender that has sent `n` packets since `start` waits until they are due.
struct Pace(f64);

impl Pace {
    fn new(args: &Args) -> Pace {
        Pace(args.get("rate", 0.0f64))
    }

    fn wait(&self, start: Instant, n: u64) {
        if self.0 > 0.0 {
            let due = Duration::from_secs_f64(n as f64 / self.0);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
}

/// The ones' complement sum of `data` (16-bit big-endian words) added to `sum`.
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Half-open connections: a SYN from a forged source per packet (raw socket), never followed by
/// an ACK: the source port runs through 1024-65535 for each of the N source addresses in turn.
/// Whatever answers them (SYN-ACKs to the forged sources) is the network's business: the bench
/// routes those sources into a blackhole.
fn synflood(args: &Args) {
    let duration = args.seconds("duration", 5.0);
    let batch: usize = args.get::<usize>("batch", 64).clamp(1, BATCH_MAX);
    let target: SocketAddrV4 = args
        .positional
        .first()
        .unwrap_or_else(|| die("synflood needs ADDR:PORT"))
        .parse()
        .unwrap_or_else(|_| die("not an IPv4 ADDR:PORT"));
    let base: Ipv4Addr = args
        .options
        .get("source-base")
        .unwrap_or_else(|| die("synflood needs --source-base IP"))
        .parse()
        .unwrap_or_else(|_| die("--source-base: not an IPv4 address"));
    let sources: u32 = args.get("sources", 1u32).max(1);
    maybe_pin(args);
    // SAFETY: plain syscall.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) }, "socket")
            .unwrap_or_else(|e| die(&e.to_string()));
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20, "SO_SNDBUFFORCE");
    // IPv4 header, then a TCP header with the MSS option (a SYN as a client sends it).
    const LEN: usize = 20 + 24;
    let mut packets = vec![[0u8; LEN]; batch];
    for p in packets.iter_mut() {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[16..20].copy_from_slice(&target.ip().octets());
        p[22..24].copy_from_slice(&target.port().to_be_bytes());
        p[32] = 6 << 4; // data offset: 24 bytes
        p[33] = 0x02; // SYN
        p[34..36].copy_from_slice(&64240u16.to_be_bytes()); // window
        p[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    }
    let mut sa = sockaddr(target);
    let mut iovs: Vec<libc::iovec> = packets
        .iter_mut()
        .map(|p| libc::iovec { iov_base: p.as_mut_ptr() as *mut libc::c_void, iov_len: LEN })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid initial value.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_name = &mut sa as *mut libc::sockaddr_in as *mut libc::c_void;
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    }
    let (mut n, mut sent, mut errors) = (0u64, 0u64, 0u64);
    let pace = Pace::new(args);
    let start = Instant::now();
    while start.elapsed() < duration {
        pace.wait(start, n);
        for p in packets.iter_mut() {
            let port = 1024 + (n % 64512) as u16;
            let src = u32::from(base) + ((n / 64512) % u64::from(sources)) as u32;
            p[12..16].copy_from_slice(&src.to_be_bytes());
            p[20..22].copy_from_slice(&port.to_be_bytes());
            p[24..28].copy_from_slice(&((n as u32).wrapping_mul(2_654_435_761)).to_be_bytes()); // ISN
            p[36..38].copy_from_slice(&[0, 0]);
            // Pseudo-header (addresses, protocol, TCP length), then the segment.
            let sum = csum_add(u32::from(6u16) + (LEN as u32 - 20), &p[12..20]);
            let sum = csum_add(sum, &p[20..LEN]);
            p[36..38].copy_from_slice(&csum_fold(sum).to_be_bytes());
            n += 1;
        }
        // SAFETY: `msgs` holds `batch` headers pointing at the live packets and `sa`.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), batch as u32, 0) };
        if r > 0 {
            sent += r as u64;
        } else {
            errors += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = sent as f64 / secs;
    eprintln!(
        "synflood: {sent} SYNs from forged sources (each its own 4-tuple) in {secs:.2} s ({rate:.0}/s) from \
         {sources} sources, {errors} failed sendmmsg calls"
    );
    close(fd);
    println!("{rate:.0}");
}

/// One connection of `probe`.
struct ProbeConn {
    fd: i32,
    started: Instant,
    connected: Option<Instant>,
    got: usize,
}

/// A legitimate client, open loop: `rate` new connections a second on a fixed schedule for
/// `duration`, each with `timeout` to connect, send the request and read the reply to EOF.
fn probe(args: &Args) {
    let duration = args.seconds("duration", 5.0);
    let rate: f64 = args.get("rate", 100.0);
    let timeout = Duration::from_millis(args.get("timeout-ms", 4000));
    let request = vec![b'q'; args.get("request", 16usize)];
    let reply: usize = args.get("reply", 16);
    let targets: Vec<SocketAddrV4> = args
        .positional
        .iter()
        .map(|t| t.parse().unwrap_or_else(|_| die(&format!("not an IPv4 ADDR:PORT: {t}"))))
        .collect();
    if targets.is_empty() || rate <= 0.0 {
        die("probe needs --rate > 0 and at least one ADDR:PORT");
    }
    maybe_pin(args);
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let ep = Epoll::new().unwrap();
    let mut conns: HashMap<u64, ProbeConn> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 4096];
    let (mut started, mut ok, mut failed, mut timed_out) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut connect_us: Vec<u64> = Vec::new();
    let mut done_us: Vec<u64> = Vec::new();
    let start = Instant::now();
    let finish = |conns: &mut HashMap<u64, ProbeConn>, id: u64| {
        if let Some(c) = conns.remove(&id) {
            close(c.fd);
        }
    };
    while started < total || !conns.is_empty() {
        let now = Instant::now();
        // Start every connection that is due.
        while started < total && now >= start + Duration::from_secs_f64(started as f64 / rate) {
            let id = started;
            started += 1;
            let target = targets[(id % targets.len() as u64) as usize];
            // SAFETY: plain syscall.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                failed += 1;
                first_error.get_or_insert_with(|| format!("socket: {}", io::Error::last_os_error()));
                continue;
            }
            let sa = sockaddr(target);
            // SAFETY: `sa` is a valid sockaddr_in.
            let rc = unsafe {
                libc::connect(
                    fd,
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of_val(&sa) as u32,
                )
            };
            if rc < 0 && errno() != libc::EINPROGRESS {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connect: {}", io::Error::last_os_error()));
                close(fd);
                continue;
            }
            conns.insert(id, ProbeConn { fd, started: Instant::now(), connected: None, got: 0 });
            if ep.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLOUT as u32, id).is_err() {
                failed += 1;
                finish(&mut conns, id);
            }
        }
        let wait_ms = if started < total {
            let next = start + Duration::from_secs_f64(started as f64 / rate);
            next.saturating_duration_since(Instant::now()).as_millis().min(20) as i32
        } else {
            20
        };
        let n = ep.wait(&mut events, wait_ms);
        let now = Instant::now();
        for ev in &events[..n] {
            let id = ev.u64;
            let Some(c) = conns.get_mut(&id) else { continue };
            if c.connected.is_none() {
                let mut err: i32 = 0;
                let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
                // SAFETY: valid pointers to an int and its length.
                unsafe {
                    libc::getsockopt(
                        c.fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        &mut err as *mut i32 as *mut libc::c_void,
                        &mut len,
                    )
                };
                // SAFETY: writing from a buffer of the length passed.
                let w = if err == 0 {
                    unsafe { libc::write(c.fd, request.as_ptr() as *const libc::c_void, request.len()) }
                } else {
                    -1
                };
                if err != 0 || w != request.len() as isize {
                    failed += 1;
                    let e = if err != 0 { io::Error::from_raw_os_error(err) } else { io::Error::last_os_error() };
                    first_error.get_or_insert_with(|| format!("connect/write: {e}"));
                    finish(&mut conns, id);
                    continue;
                }
                c.connected = Some(now);
                connect_us.push(now.duration_since(c.started).as_micros() as u64);
                if ep.ctl(libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLIN as u32, id).is_err() {
                    failed += 1;
                    finish(&mut conns, id);
                }
                continue;
            }
            loop {
                // SAFETY: reading into a buffer of the length passed.
                let r = unsafe { libc::read(c.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
                if r > 0 {
                    c.got += r as usize;
                    continue;
                }
                if r < 0 && errno() == libc::EAGAIN {
                    break;
                }
                if r == 0 && c.got >= reply {
                    ok += 1;
                    done_us.push(now.duration_since(c.started).as_micros() as u64);
                } else {
                    failed += 1;
                    let what = if r == 0 {
                        format!("short reply: {} bytes", c.got)
                    } else {
                        format!("read: {}", io::Error::last_os_error())
                    };
                    first_error.get_or_insert(what);
                }
                finish(&mut conns, id);
                break;
            }
        }
        let late: Vec<u64> =
            conns.iter().filter(|(_, c)| now.duration_since(c.started) > timeout).map(|(id, _)| *id).collect();
        for id in late {
            timed_out += 1;
            finish(&mut conns, id);
        }
    }
    let pct = |v: &mut Vec<u64>, p: f64| -> u64 {
        v.sort_unstable();
        if v.is_empty() {
            0
        } else {
            v[((v.len() - 1) as f64 * p) as usize]
        }
    };
    let (c50, c99, cmax, d50) =
        (pct(&mut connect_us, 0.5), pct(&mut connect_us, 0.99), pct(&mut connect_us, 1.0), pct(&mut done_us, 0.5));
    eprintln!(
        "probe: {started} connections in {:.1} s: {ok} ok, {failed} failed, {timed_out} timed out ({} ms); connect \
         p50 {c50} us, p99 {c99} us, max {cmax} us{}",
        duration.as_secs_f64(),
        timeout.as_millis(),
        first_error.map(|e| format!("; first error: {e}")).unwrap_or_default()
    );
    println!(
        "attempts={started} ok={ok} failed={failed} timed_out={timed_out} connect_p50_us={c50} connect_p99_us={c99} \
         connect_max_us={cmax} done_p50_us={d50}"
    );
}

fn main() {
    let mut raw = std::env::args().skip(1);
    let mode = raw.next().unwrap_or_default();
    let args = Args::parse(raw);
    match mode.as_str() {
        "serve" => serve(&args),
        "connrate" => connrate(&args),
        "sink" => sink(&args),
        "udpflood" => udpflood(&args),
        "newflows" => newflows(&args),
        "synflood" => synflood(&args),
        "probe" => probe(&args),
        _ => die(
            "usage: trafficgen serve|connrate|sink|udpflood|newflows|synflood|probe [--option value]... [ADDR:PORT]...",
        ),
    }
}
