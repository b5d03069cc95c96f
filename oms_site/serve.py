"""The web server: uvicorn's worker processes, each on its own listening socket (SO_REUSEPORT).

    python -m oms_site.serve --host 127.0.0.1 --port 8000 --workers 2 [uvicorn options]

Why not `uvicorn --workers N`: its workers share one listening socket, and the first worker
woken by a burst of connections accepts every one waiting. Clients that keep their
connections (the API's scripts, a proxy's upstream pool) then stay on that worker: with 16
clients connecting at once, one worker often served all of them (0.0 against 3.8 s of CPU in a
5-second phase) while the other idled, and one process holds the GIL for its Python. With a
socket per worker bound with SO_REUSEPORT, the kernel hands each new connection to one of
the workers' sockets by a hash of its addresses, whatever the timing.

Everything else is uvicorn's own supervisor (health checks, restarts, signals); the options
are uvicorn's (`uvicorn --help`), the application is always `oms_site.asgi:application`. It
listens on TCP `--host`/`--port` only: `--uds`, `--fd` and `--reload` are not served here (use
`uvicorn` itself for those).
"""

from __future__ import annotations

import inspect
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

APP = "oms_site.asgi:application"


class ReusePortServer(uvicorn.Server):
    """A uvicorn server that listens on its own SO_REUSEPORT socket instead of a shared one."""

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
        super().run(sockets=[sock])


class ReusePortProcess(multiprocess.Process):
    """uvicorn's worker process, serving through a ReusePortServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ReusePortServer(config=self.config)
        return self._server


def _port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (sockets sharing a port by SO_REUSEPORT would
    otherwise split the connections with a server already running there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run(config: uvicorn.Config) -> None:
    """Serve `config` with `config.workers` processes, each listening on its own socket."""
    if not _port_free(config.host, config.port):
        sys.exit(f"oms_site.serve: {config.host}:{config.port} is already in use")
    if config.workers <= 1:
        ReusePortServer(config=config).run()
        return
    # uvicorn's supervisor builds (and rebuilds, when one dies) its workers through this name;
    # no socket is shared, so none is bound here.
    multiprocess.Process = ReusePortProcess  # type: ignore[misc]
    multiprocess.Multiprocess(config, sockets=[]).run()


def main(argv: list[str] | None = None) -> None:
    """`uvicorn`'s command line and options, serving oms_site.asgi:application."""
    command: Any = uvicorn.main
    args = [APP, *(sys.argv[1:] if argv is None else argv)]
    params = command.make_context("oms_site.serve", args).params
    accepted = inspect.signature(uvicorn.Config).parameters
    # Options left unset keep uvicorn's defaults (as `uvicorn.run` gives them).
    config = uvicorn.Config(**{k: v for k, v in params.items() if k in accepted and v is not None})
    run(config)


if __name__ == "__main__":
    main()
