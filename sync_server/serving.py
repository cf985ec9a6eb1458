"""The HTTP/1.1 protocol `freshroots serve` gives uvicorn: httptools, with each response's head
and body leaving in one write.

Why: uvicorn's `RequestResponseCycle.send` calls `transport.write` once for the status line and
headers and again for every body message, and with uvloop each of those calls is a send()
system call when the socket has room. Most of our answers are small (a 304, an empty pull, a
gzip page of a few KB), so half of their sends carry only headers; under load those two writes
were ~9% of the server's CPU in py-spy. Subclassing the protocol and wrapping only its transport
halves that without copying any of uvicorn's request/response code, so a uvicorn upgrade keeps
every fix of that code.

How: `HeadCoalescingTransport` holds a write that is a complete final response head (it starts
"HTTP/1.1 ", its status is not 1xx, it ends with the blank line) and sends it with the next
write: one `write(head + body)` for a small body, one `writelines` (one writev) for a big one.
A head is never held past the event-loop iteration that wrote it (a `call_soon` flush), so a
streamed response whose first chunk comes later still sends its headers at once; it is also
flushed when the response completes with no body write (HEAD), before close() and write_eof(),
and before the connection is handed to the WebSocket protocol. An interim `100 Continue` is a
1xx head and is never held. Reading, flow control and everything else pass straight through.
A body chunk that merely looks like a head is held the same way, which is harmless: it only
waits for the next write or the end of the loop iteration, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeGuard

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["PROTOCOL", "CoalescingHttpToolsProtocol", "HeadCoalescingTransport"]

# What `freshroots serve` passes to uvicorn as `http=`: an import string, so `--workers N`
# (uvicorn's spawned worker processes) load it the same way as a single process.
PROTOCOL = "sync_server.serving:CoalescingHttpToolsProtocol"

# Bodies up to this size are joined to their head (one copy, the fastest single write); bigger
# ones go out with the head as one writev, without copying the body.
JOIN_LIMIT = 16 * 1024
# Heads are a few hundred bytes; a larger "head" is left alone rather than held.
HEAD_LIMIT = 16 * 1024

_HEAD_PREFIX = b"HTTP/1.1 "
_INTERIM = ord("1")  # 1xx: 100 Continue must reach the client before it sends its body


def is_response_head(data: object) -> TypeGuard[bytes]:
    """A whole final-response head as uvicorn writes it: status line, headers, blank line."""
    return (
        type(data) is bytes
        and len(data) <= HEAD_LIMIT
        and data.startswith(_HEAD_PREFIX)
        and data.endswith(b"\r\n\r\n")
        and data[9] != _INTERIM
    )


class HeadCoalescingTransport(asyncio.Transport):
    """Wraps a connection's transport; holds a response head until the next write (see the
    module docstring). Everything but writing is delegated unchanged."""

    __slots__ = ("_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None

    # Writing
    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        held = self._held
        if held is None:
            if is_response_head(data):
                self._held = data
                self._loop.call_soon(self.flush)
            else:
                self.transport.write(data)
            return
        self._held = None
        if len(data) <= JOIN_LIMIT:
            self.transport.write(held + data)
        else:
            self.transport.writelines((held, data))

    def writelines(self, list_of_data: Any) -> None:
        held = self._held
        if held is None:
            self.transport.writelines(list_of_data)
            return
        self._held = None
        self.transport.writelines([held, *list_of_data])

    def flush(self) -> None:
        """Send a held head now (nothing if none, or if the connection is already gone)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self.transport.get_write_buffer_size() + (len(held) if held is not None else 0)

    # Delegated unchanged
    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.transport.get_write_buffer_limits()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `HeadCoalescingTransport`; pass it as `http=`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadCoalescingTransport(transport, self.loop))

    def on_response_complete(self) -> None:
        # A response with no body write (HEAD) has nothing left to join its head to.
        self._flush()
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol gets the bare transport, exactly as with stock uvicorn.
        transport = self.transport
        if isinstance(transport, HeadCoalescingTransport):
            transport.flush()
            self.transport = transport.transport
        super().handle_websocket_upgrade()

    def _flush(self) -> None:
        transport = self.transport
        if isinstance(transport, HeadCoalescingTransport):
            transport.flush()
