"""A TCP proxy between the FIX gateway and the venue simulator that can cut the line.

The gateway's FixSession rows point at the proxy; `disconnect(seconds)` closes every open
connection (both directions, no goodbye: what a dropped network looks like to both FIX engines)
and refuses new ones for `seconds`, after which the gateway's reconnect logs on again and the
sequence numbers resynchronise (ResendRequest / gap fill).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class FixLineProxy:
    """127.0.0.1:`listen_port` → 127.0.0.1:`target_port`, in a thread with its own event loop."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._refuse_until = 0.0
        self._started = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="fix-proxy", daemon=True)
        self.connections = 0
        self.cuts = 0

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("FIX proxy did not start")

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def disconnect(self, seconds: float) -> int:
        """Drop every connection now and refuse new ones for `seconds`; returns how many."""
        future = asyncio.run_coroutine_threadsafe(self._cut(seconds), self.loop)
        return future.result(10)

    async def _cut(self, seconds: float) -> int:
        self._refuse_until = time.monotonic() + seconds
        writers = list(self._writers)
        for writer in writers:
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()  # RST, no FIN: the far end only learns it on its next write
        self._writers.clear()
        self.cuts += 1
        return len(writers) // 2

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        )
        self._started.set()
        try:
            self.loop.run_forever()
        finally:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self.loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update({writer, up_writer})
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._writers.difference_update({writer, up_writer})

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return  # either side closed or reset: the finally below closes the other
        finally:
            with contextlib.suppress(Exception):
                writer.close()
