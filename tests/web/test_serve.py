"""`python -m oms_site.serve`: uvicorn's workers, each listening on its own SO_REUSEPORT socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.django_db

CONNECTIONS = 32


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sockets_on_port(port: int, state: str) -> set[str]:
    """Inodes of this host's IPv4 TCP sockets whose local port is `port`, in `state` (hex)."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def test_each_worker_listens_on_its_own_socket_and_connections_spread_over_them(
    django_db_setup: Any, django_db_blocker: Any
) -> None:
    # given: two workers started through oms_site.serve against the test database
    with django_db_blocker.unblock():
        db_name = connection.settings_dict["NAME"]
    port = _free_port()
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db_name}",
        LOG_LEVEL="WARNING",
    )
    command = [sys.executable, "-m", "oms_site.serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 90
        while len(_sockets_on_port(port, "0A")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        # wait until both workers answer (each has finished its start-up)
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not answer"
            time.sleep(0.2)
        # when: many clients connect at once and each sends a request on its connection
        for _ in range(CONNECTIONS):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        request = f"GET /healthz/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        for client in clients:
            client.sendall(request)
        answers = [client.recv(4096) for client in clients]
        # then: every request was answered, two listening sockets (one per worker, none in the
        # supervisor), and both workers hold some of the connections
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * CONNECTIONS
        listening = _sockets_on_port(port, "0A")
        established = _sockets_on_port(port, "01")
        # (the supervisor's other child is multiprocessing's resource tracker)
        owned = {pid: _socket_inodes(pid) for pid in _children(proc.pid)}
        workers = [pid for pid, inodes in owned.items() if listening & inodes]
        assert not listening & _socket_inodes(proc.pid)
        assert [len(listening & owned[pid]) for pid in workers] == [1, 1]
        per_worker = sorted(len(established & owned[pid]) for pid in workers)
        assert sum(per_worker) == CONNECTIONS
        assert per_worker[0] > 0
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_port_already_in_use_is_refused_not_shared() -> None:
    # given: something listening on the port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # when: the server is started on it
        out = subprocess.run(
            [sys.executable, "-m", "oms_site.serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # then: it stops at once with the reason, and never listened
    assert out.returncode == 1
    assert out.stderr.strip().endswith(f"127.0.0.1:{port} is already in use")
