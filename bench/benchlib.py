"""What the benchmarks share: free ports, polling, and a PostgreSQL server of their own (Debian's,
`initdb` into a given folder, a free port; as the `postgres` user when run as root)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# The benchmarks' meetings, receivers and stores are on loopback or a Docker network's gateway,
# which a controller refuses unless told (`--allow-networks`).
os.environ.setdefault("RECFLEET_ALLOW_NETWORKS", "loopback,private")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_server_user(cmd):
    return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", "--", *cmd] if os.geteuid() == 0 else cmd


def status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def wait(what, check, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.02)
    sys.exit(f"bench: {what} not reached within {limit} s")


def start_postgres(folder):
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = Path(folder) / "data"
    subprocess.run(as_server_user([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "recfleet", "--no-sync"]),
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    server = subprocess.Popen(
        as_server_user([str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", folder, "-c", "listen_addresses=127.0.0.1",
                        "-c", "fsync=off"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait("postgres", lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode == 0)
    subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "recfleet", "recfleet"], check=True)
    return server, f"postgres://recfleet@127.0.0.1:{port}/recfleet"
