//! A decky that plays the attacker: deployed by the containment tests, it
//! tries everything a compromised workload would try against the agent, its
//! host and the other deckies, prints one line per attempt and stays
//! running (so the tests can check the agent still serves and can stop it).
//!
//! ```text
//! decnet-hostile-decky attack [--read PATH]... [--write PATH]...
//!     [--create-in DIR]... [--signal PID]... [--trace PID]...
//!     [--suid PATH] [--fork-bomb] [--eat-memory] [--spam BYTES]
//!     [--print-env NAME] [--print-arg VALUE]
//! decnet-hostile-decky whoami        (used as the setuid binary)
//! decnet-hostile-decky vanish        (main thread ends, another runs on)
//! decnet-hostile-decky net [--connect ADDR:PORT]... [--bind PORT]...
//!     [--write PATH]... [--stat PATH]... [--nest --user|--mount|--net]...
//! ```
//!
//! `net` plays the attacker at the network edge: it lists its open
//! descriptors (`FDS 0,1,2,3`) and the processes it sees (`PROCS 1,2`),
//! tries to connect out, to bind ports and to
//! write files (`STAT <path> <uid> <mode>` says who owns a path), then serves every TCP socket handed in (`LISTEN_FDS`, from fd 3) with
//! `hello from uid N`, as an `sd_listen_fds` honeypot would.
//!
//! Output lines: `ATTEMPT <what>: blocked (<why>)` or `ATTEMPT <what>:
//! SUCCEEDED`, `FORKS <n> (<why it stopped>)`, `MEMORY <mib> MiB`, `EUID <n>`
//! and finally `DONE`.

use std::io::Write;
use std::time::Duration;

fn attempt(what: &str, r: std::io::Result<()>) {
    match r {
        Ok(()) => println!("ATTEMPT {what}: SUCCEEDED"),
        Err(e) => println!("ATTEMPT {what}: blocked ({e})"),
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let p = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::other("bad pid"))?;
    rustix::process::kill_process(p, sig).map_err(std::io::Error::from)
}

/// Open `/proc/PID/mem`: the kernel grants it only to a tracer-capable
/// caller (the same `ptrace_may_access` check as `PTRACE_ATTACH`).
fn trace(pid: u32) -> std::io::Result<()> {
    std::fs::File::open(format!("/proc/{pid}/mem")).map(|_| ())
}

fn fork_bomb() {
    let mut children = Vec::new();
    let why = loop {
        match std::process::Command::new("/proc/self/exe")
            .arg("idle")
            .stdout(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => children.push(c),
            Err(e) => break e.to_string(),
        }
        // A bound of its own, so a broken limit fails the test instead of
        // the machine.
        if children.len() >= 2000 {
            break "no limit".into();
        }
    };
    println!("FORKS {} ({why})", children.len());
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Eat memory in a child process (under a cgroup limit the kernel kills
/// the eater instead of failing its allocation), reporting how far it got.
fn eat_memory() {
    let child = std::process::Command::new("/proc/self/exe")
        .arg("eat")
        .stdout(std::process::Stdio::piped())
        .output();
    match child {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mib = text
                .lines()
                .filter_map(|l| l.strip_prefix("ATE ")?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            println!("MEMORY {mib} MiB ({})", out.status);
        }
        Err(e) => println!("MEMORY 0 MiB (cannot start the eater: {e})"),
    }
}

fn eat() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let chunk = 8 << 20;
    let mut out = std::io::stdout().lock();
    loop {
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(chunk).is_err() {
            break;
        }
        v.resize(chunk, 1); // touch every page
        hoard.push(v);
        let _ = writeln!(out, "ATE {}", hoard.len() * 8);
        let _ = out.flush();
        // A bound of its own (1 GiB), so a broken limit fails the test
        // instead of the machine.
        if hoard.len() * 8 >= 1024 {
            break;
        }
    }
}

/// The descriptors open in this process (not the one listing them).
fn open_fds() -> Vec<u32> {
    let mut fds: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    // The directory being listed is open too: skip it.
                    std::fs::read_link(e.path())
                        .map(|t| !t.to_string_lossy().ends_with("/fd"))
                        .unwrap_or(false)
                })
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// The socket handed in at `fd` (systemd's socket activation protocol).
#[allow(unsafe_code)]
fn handed_in(fd: i32) -> std::net::TcpListener {
    use std::os::fd::FromRawFd;
    // SAFETY: LISTEN_FDS says descriptors 3.. were passed to this process
    // for it to own; nothing else in it has touched them.
    unsafe { std::net::TcpListener::from_raw_fd(fd) }
}

fn net(args: &[String]) {
    let listen: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pid_ok = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    println!(
        "LISTEN_FDS {listen} pid_ok={pid_ok} names={}",
        std::env::var("LISTEN_FDNAMES").unwrap_or_default()
    );
    let fds = open_fds();
    println!(
        "FDS {}",
        fds.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    );
    // The processes it can see (a honeypot fleet shows itself in `ps`).
    let mut procs: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    procs.sort();
    println!(
        "PROCS {}",
        procs
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--connect" => {
                let r = value
                    .parse::<std::net::SocketAddr>()
                    .map_err(std::io::Error::other)
                    .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)))
                    .map(|_| ());
                attempt(&format!("connect {value}"), r);
            }
            "--bind" => {
                let r = std::net::TcpListener::bind(("0.0.0.0", value.parse::<u16>().unwrap_or(0)));
                match r {
                    Ok(l) => {
                        println!("BOUND {value}");
                        // Held while the decky runs.
                        std::mem::forget(l);
                    }
                    Err(e) => println!("ATTEMPT bind {value}: blocked ({e})"),
                }
            }
            "--write" => {
                attempt(
                    &format!("write {value}"),
                    std::fs::write(&value, b"planted by a decky"),
                );
            }
            "--nest" => {
                // A namespace of its own inside its own: `value` is the
                // unshare(1) flag (`--user`, `--mount`, `--net`).
                let r = std::process::Command::new("/usr/bin/unshare")
                    .args([value.as_str(), "/bin/true"])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .map_err(std::io::Error::other)
                    .and_then(|s| {
                        if s.success() {
                            Ok(())
                        } else {
                            Err(std::io::Error::other(format!("unshare {s}")))
                        }
                    });
                attempt(&format!("nest {value}"), r);
            }
            "--stat" => {
                use std::os::unix::fs::MetadataExt;
                match std::fs::metadata(&value) {
                    Ok(m) => println!("STAT {value} {} {:o}", m.uid(), m.mode() & 0o7777),
                    Err(e) => println!("STAT {value} failed ({e})"),
                }
            }
            other => println!("UNKNOWN {other}"),
        }
    }
    let uid = rustix::process::getuid().as_raw();
    for fd in 3..3 + listen {
        let l = handed_in(fd);
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut c = c;
                let _ = writeln!(c, "hello from uid {uid}");
            }
        });
    }
    println!("DONE");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// End the main thread while another runs on: `/proc` then shows the
/// process as a zombie leader (`Zl`), which a careless scan takes for dead
/// and never kills.
#[allow(unsafe_code)]
fn vanish() -> ! {
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    });
    println!("VANISHING");
    let _ = std::io::stdout().flush();
    // SAFETY: the raw exit(2) system call ends the calling (main) thread
    // only, without unwinding anything; the process lives on in the other
    // thread, which touches nothing of the main thread's stack.
    unsafe {
        libc::syscall(libc::SYS_exit, 0);
    }
    unreachable!("exit(2) returned")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("whoami") => {
            println!("EUID {}", rustix::process::geteuid().as_raw());
            return;
        }
        Some("eat") => {
            eat();
            return;
        }
        Some("idle") => {
            std::thread::sleep(Duration::from_secs(600));
            return;
        }
        Some("vanish") => vanish(),
        Some("attack") => {}
        Some("net") => {
            net(&args[1..]);
            return;
        }
        _ => {
            eprintln!("usage: decnet-hostile-decky attack|net|whoami|idle ...");
            std::process::exit(2);
        }
    }
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--read" => {
                let p = value();
                attempt(&format!("read {p}"), std::fs::read(&p).map(|_| ()));
            }
            "--write" => {
                let p = value();
                attempt(
                    &format!("write {p}"),
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&p)
                        .and_then(|mut f| f.write_all(b"owned\n")),
                );
            }
            "--create-in" => {
                let d = value();
                attempt(
                    &format!("create in {d}"),
                    std::fs::write(format!("{d}/planted"), b"owned"),
                );
            }
            "--signal" => {
                let pid: u32 = value().parse().unwrap_or(0);
                attempt(
                    &format!("signal {pid}"),
                    signal(pid, rustix::process::Signal::TERM),
                );
            }
            "--trace" => {
                let pid: u32 = value().parse().unwrap_or(0);
                attempt(&format!("trace {pid}"), trace(pid));
            }
            "--suid" => {
                let p = value();
                match std::process::Command::new(&p).arg("whoami").output() {
                    Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
                    Err(e) => println!("EUID unknown ({e})"),
                }
            }
            "--print-env" => {
                let k = value();
                println!("ENV {k}={}", std::env::var(&k).unwrap_or_default());
            }
            "--print-arg" => println!("ARG {}", value()),
            "--fork-bomb" => fork_bomb(),
            "--eat-memory" => eat_memory(),
            "--spam" => {
                let n: usize = value().parse().unwrap_or(0);
                let line = "x".repeat(1023) + "\n";
                let mut out = std::io::stdout().lock();
                for _ in 0..n / 1024 {
                    let _ = out.write_all(line.as_bytes());
                }
                let _ = out.flush();
            }
            other => println!("UNKNOWN {other}"),
        }
    }
    println!(
        "IDS uid={} euid={} gid={}",
        rustix::process::getuid().as_raw(),
        rustix::process::geteuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    println!("DONE");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
