"""What the benchmarks that start their own servers (web, simulator) share."""

from __future__ import annotations

import subprocess
import sys
import time


def uvicorn_command(port: int, *extra: str) -> list[str]:
    """The command line of one quiet uvicorn serving the OMS on 127.0.0.1:`port`.

    Through `oms_site.serve`, as deployed: with `--workers N`, each worker listens on its own
    socket (SO_REUSEPORT), so the benchmark's clients spread over the workers.
    """
    return [
        sys.executable,
        "-m",
        "oms_site.serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        *extra,
    ]


def wait_healthy(proc: subprocess.Popen, port: int, *, timeout: float) -> None:
    """Wait until the web server `proc` answers /healthz/ on `port`; stop it on failure."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("uvicorn exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError(f"uvicorn did not become healthy in {timeout:.0f} s")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen | None, *, timeout: float = 10) -> None:
    """Stop a server the benchmark started: SIGTERM, then SIGKILL if it has not exited in time."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
