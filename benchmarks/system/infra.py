"""Private PostgreSQL and Redis, OMS processes in their own process groups, /proc accounting.

Everything the system run starts is a `Service`: one command in a new session (so its whole
process tree is one process group that can be killed at once), a log file, and CPU/memory read
from /proc over the tree. The run owns a temporary directory holding the PostgreSQL cluster, the
Redis append-only file, the FIX stores and the logs; `Services.close()` stops every group and
removes it (also on Ctrl-C and on failure, see bench_system).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = 4


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The thing polled may be down: that is what we wait out.
        with contextlib.suppress(Exception):
            if predicate():
                return True
        time.sleep(interval)
    return False


def pg_bin_dir() -> Path:
    """Debian's PostgreSQL binaries (newest version), or PG_BIN_DIR, or whatever is on PATH."""
    explicit = os.environ.get("PG_BIN_DIR")
    if explicit:
        return Path(explicit)
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/", path)
        return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)

    if found:
        return Path(max(found, key=version)).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL server binaries not found (set PG_BIN_DIR)")


def as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a command as `user` (only meaningful when we are root)."""
    if not user or os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _libc_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux/glibc: close() still stops everything
        return None


_PRCTL = _libc_prctl()  # loaded here: the child between fork and exec must not import


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the run's process dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------------------------- /proc


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(root: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:  # the process is gone
        return None
    return None


def proc_sample(root: int, children: dict[int, list[int]] | None = None) -> tuple[float, int, int]:
    """(CPU seconds, memory kB, peak kB) of a process tree from /proc/<pid>/stat and status.

    CPU counts utime+stime of every live process plus cutime+cstime (its waited-for dead
    children, e.g. PostgreSQL backends that ended). Memory is the PSS (smaps_rollup) summed,
    so memory shared between the processes of a tree (PostgreSQL's shared buffers, a prefork
    pool's copy-on-write pages) counts once; VmRSS where PSS is not readable. Peak is the sum
    of each process's VmHWM (an upper bound: shared pages count in every process).
    """
    children = children if children is not None else _children()
    cpu = 0.0
    rss = hwm = 0
    for pid in _tree(root, children):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read()
            parts = fields[fields.rfind(")") + 2 :].split()
            cpu += sum(int(x) for x in parts[11:15]) / CLK_TCK
            pss = _pss_kb(pid)
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:") and pss is None:
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
            rss += pss or 0
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return cpu, rss, hwm


# ---------------------------------------------------------------------------------- services


@dataclass
class Service:
    """One long-lived command of the run, restartable; CPU/memory accounted across restarts."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path | None = None
    user: str | None = None  # run as this OS user (we are root)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    cpu_done: float = 0.0  # CPU seconds of earlier (killed) instances
    cpu_last: float = 0.0
    cpu_base: float = 0.0  # CPU seconds before the measured period (start-up, seeding)
    rss_last: int = 0
    rss_max: int = 0
    hwm_max: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Start the command in a session (and process group) of its own."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **as_user(self.user),
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send a signal to the whole process group (the command and its children)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group (a crash) and reap it; the CPU used so far is kept."""
        self.sample()
        self.signal_group(signal.SIGKILL)
        self._reap(10)

    def kill_children(self) -> int:
        """SIGKILL the command's child processes (a prefork pool's workers); how many."""
        if self.pid is None:
            return 0
        children = _children().get(self.pid, [])
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(children)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, SIGKILL whatever is left after `timeout`."""
        if self.proc is None:
            return
        self.sample()
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.signal_group(signal.SIGKILL)  # stragglers of the group, if any
        self._reap(5)

    def _reap(self, timeout: float) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        with self._lock:
            self.cpu_done += self.cpu_last
            self.cpu_last = 0.0
        self.proc = None

    def restart(self) -> None:
        """Start again after kill() or stop()."""
        self.restarts += 1
        self.start()

    def sample(self, children: dict[int, list[int]] | None = None) -> None:
        """Read /proc for this service's tree (called by the sampler thread)."""
        pid = self.pid
        if pid is None:
            return
        cpu, rss, hwm = proc_sample(pid, children)
        with self._lock:
            if self.pid != pid:
                return
            self.cpu_last = max(self.cpu_last, cpu)
            self.rss_last = rss
            self.rss_max = max(self.rss_max, rss)
            self.hwm_max = max(self.hwm_max, hwm)

    def figures(self, wall: float) -> dict[str, Any]:
        """CPU seconds and share of one core over `wall` seconds, memory in MB."""
        cpu = self.cpu_done + self.cpu_last - self.cpu_base
        return {
            "cpu_s": round(cpu, 1),
            "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
            "mem_mb": round(self.rss_last / 1024, 1),
            "mem_max_mb": round(self.rss_max / 1024, 1),
            "hwm_mb": round(self.hwm_max / 1024, 1),
            "restarts": self.restarts,
        }


class Sampler:
    """Samples every service's /proc figures every `interval` seconds in a thread."""

    def __init__(self, services: Callable[[], list[Service]], interval: float = 1.0) -> None:
        self.services = services
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def mark(self) -> None:
        """The measured period starts now: CPU used before it is not counted."""
        self.sample_all()
        for service in self.services():
            service.cpu_base = service.cpu_done + service.cpu_last
            service.rss_max = service.rss_last

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample_all()

    def sample_all(self) -> None:
        children = _children()
        for service in self.services():
            service.sample(children)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_all()


# ---------------------------------------------------------------------------------- PostgreSQL


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb in `root`), safe to crash and restart.

    Runs as the `postgres` OS user when we are root (PostgreSQL refuses to run as root), listens
    on 127.0.0.1:`port` only, unix socket in `root`. fsync is off: the run crashes the server
    process, never the machine, so the OS page cache keeps every committed write; crash recovery
    from the WAL is still exercised by the immediate-mode restart.
    """

    def __init__(self, root: Path, port: int, logs: Path) -> None:
        self.root = root
        self.port = port
        self.data = root / "pgdata"
        self.bin = pg_bin_dir()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.service = Service(
            name="postgres",
            argv=[
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "shared_buffers=128MB",
                "-c",
                "track_commit_timestamp=on",
                "-c",
                "log_min_messages=warning",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            log=logs / "postgres.log",
            user=self.user,
        )

    def url(self, db: str = "oms") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def init(self) -> None:
        """initdb (trust auth, UTF-8) into the run's directory."""
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        argv = [
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        subprocess.run(argv, check=True, capture_output=True, cwd="/", **as_user(self.user))

    def ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def start(self) -> None:
        """Start the postmaster and wait until it accepts connections."""
        self.service.start()
        if not wait_for(self.ready, 60):
            raise RuntimeError(f"private PostgreSQL did not start (see {self.service.log})")

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def crash_restart(self, down_seconds: float) -> None:
        """Immediate shutdown (SIGQUIT: no checkpoint, crash recovery on start), then start."""
        self.service.sample()
        self.service.signal_group(signal.SIGQUIT)
        if self.service.proc is not None:
            try:
                self.service.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.service.signal_group(signal.SIGKILL)
        self.service._reap(10)
        time.sleep(down_seconds)
        self.service.restarts += 1
        self.start()


# ---------------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A private redis-server with append-only persistence, fsync on every write.

    Redis is the Celery broker: with `--appendonly yes --appendfsync always` a task the broker
    acknowledged survives a crash (SIGKILL) of the server; without it a crash loses every queued
    task (DESIGN.md measured 41%). The cost, one fsync per write on a local disk, is small next
    to the OMS's own work; the restart in the run is a crash, so the AOF is what is tested.
    """

    def __init__(self, root: Path, port: int, logs: Path) -> None:
        self.port = port
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.service = Service(
            name="redis",
            argv=[
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            log=logs / "redis.log",
        )

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def start(self) -> None:
        self.service.start()
        if not wait_for(self.ready, 30):
            raise RuntimeError(f"private Redis did not start (see {self.service.log})")

    def crash_restart(self, down_seconds: float) -> None:
        """SIGKILL the server (a crash), wait, start it on the same append-only file."""
        self.service.kill()
        time.sleep(down_seconds)
        self.service.restarts += 1
        self.start()
