//! A network namespace of the test's own (iproute2), for what needs addresses a test must not
//! take on the host: a stand-in cloud metadata server on 169.254.169.254 and 169.254.170.2, and
//! host names of its own. Only `lo` is up inside, with those addresses on it: nothing leaves.
//! `ip netns exec` bind-mounts `/etc/netns/<name>/hosts` over `/etc/hosts` for what runs
//! inside, so the test changes DNS by rewriting that file (in place: the bind mount holds the
//! inode).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The page the stand-in metadata servers answer everything with: cyan (`SECRET_RGB`, a colour
/// the test meeting never shows), so a frame that shows it is found by colour, and a text that
/// is found in any body or log.
pub const SECRET: &str = "RECFLEET-TEST-SECRET-AKIAIOSFODNN7EXAMPLE";
pub const SECRET_RGB: [u8; 3] = [0, 255, 255];
/// The addresses the stand-ins listen on (port 80).
pub const METADATA_ADDRS: [&str; 2] = ["169.254.169.254", "169.254.170.2"];

const SERVER: &str = r#"
import http.server, sys
class Secret(http.server.BaseHTTPRequestHandler):
    def answer(self):
        print(self.command, self.path, flush=True)
        body = ('<html><body style="margin:0;background:#00ffff;height:100vh">%s</body></html>' % sys.argv[3]).encode()
        self.send_response(200)
        self.send_header('content-type', 'text/html')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Secret).serve_forever()
"#;

/// One namespace; removed, with its hosts file and everything started in it, when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    etc: PathBuf,
    children: Vec<Child>,
}

impl Netns {
    /// `recfleet-<what>-<pid>`, with `lo` up and the metadata addresses on it.
    pub fn new(what: &str) -> Self {
        let name = format!("recfleet-{what}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let etc = Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).expect("/etc/netns/<name> is created (as root)");
        let ns = Netns { name, etc, children: Vec::new() };
        ns.set_hosts(&[]);
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        for addr in METADATA_ADDRS {
            run(Command::new("ip").args(["-n", &ns.name, "addr", "add", &format!("{addr}/32"), "dev", "lo"]));
        }
        ns
    }

    /// A command that runs inside.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The hosts file inside: `localhost` and these (name, address) pairs. Written in place.
    pub fn set_hosts(&self, entries: &[(&str, &str)]) {
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, addr) in entries {
            text.push_str(&format!("{addr} {name}\n"));
        }
        std::fs::write(self.etc.join("hosts"), text).expect("the namespace's hosts file is written");
    }

    /// Starts the stand-in metadata servers (the secret page on port 80 of each address); each
    /// request they get is a line in `<log_dir>/<address>.log`.
    pub fn start_metadata_servers(&mut self, log_dir: &Path) {
        for addr in METADATA_ADDRS {
            self.start_server(addr, 80, &log_dir.join(format!("{addr}.log")));
        }
    }

    /// A server inside on `addr:port` that answers every request 200 with the secret page and
    /// writes a line per request (`GET /path`) to `log`; started and listening.
    pub fn start_server(&mut self, addr: &str, port: u16, log: &Path) {
        let out = std::fs::File::create(log).unwrap();
        let child = self
            .command("python3")
            .args(["-c", SERVER, addr, &port.to_string(), SECRET])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts in the namespace");
        self.children.push(child);
        self.wait_listening(addr, port);
    }

    /// Keeps `child` (started with `command`) to be killed on drop.
    pub fn keep(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Waits (at most 30 s) until something listens on `addr:port` inside.
    pub fn wait_listening(&self, addr: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = self.command("bash").args(["-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")]).stderr(Stdio::null()).status();
            if probe.is_ok_and(|s| s.success()) {
                return;
            }
            assert!(Instant::now() < deadline, "nothing listens on {addr}:{port} in {} within 30 s", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An HTTP request from inside (curl): (status, body).
    pub fn http(&self, method: &str, url: &str, key: Option<&str>, body: Option<&serde_json::Value>) -> (u16, String) {
        let mut cmd = self.command("curl");
        cmd.args(["-s", "-S", "--max-time", "30", "-X", method, "-w", "\n%{http_code}", url]);
        if let Some(key) = key {
            cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
        }
        if let Some(body) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()]);
        }
        let out = cmd.output().expect("curl runs in the namespace");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

/// The requests a stand-in metadata server got (one line each).
pub fn metadata_hits(log_dir: &Path) -> Vec<String> {
    METADATA_ADDRS
        .iter()
        .flat_map(|addr| {
            std::fs::read_to_string(log_dir.join(format!("{addr}.log")))
                .unwrap_or_default()
                .lines()
                .map(|l| format!("{addr}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever else runs inside (a controller's bots) goes with the namespace's processes.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: SIGKILL to a process inside the test's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (iproute2 is installed by scripts/setup.sh)"));
    assert!(out.status.success(), "{cmd:?} failed (the tests run as root): {}", String::from_utf8_lossy(&out.stderr));
}
