"""A response's head leaves with its body in one write (on a real socket pair and a real uvloop event loop)."""

from __future__ import annotations

import asyncio
import socket

import uvloop
from deepseek_workers.serving.server import _HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def _available(sock: socket.socket) -> bytes:
    """What has arrived so far (empty if nothing)."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


async def _scenario() -> dict[str, bytes]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    writer = _HeadWithBody(transport, loop)  # type: ignore[arg-type]
    seen: dict[str, bytes] = {}

    writer.write(HEAD)
    seen["after head alone"] = _available(theirs)
    writer.write(b"ok")
    seen["after body"] = _available(theirs)

    writer.write(HEAD)  # a streamed answer: its first chunk comes in a later step of the loop
    await asyncio.sleep(0)
    seen["after a loop step"] = _available(theirs)

    writer.write(b"plain bytes")
    seen["not a head"] = _available(theirs)

    writer.write(HEAD)
    writer.close()
    await asyncio.sleep(0.05)
    seen["after close"] = _available(theirs)
    theirs.close()
    return seen


def test_head_is_held_until_the_body_and_never_past_one_loop_step() -> None:
    seen = uvloop.run(_scenario())
    assert seen["after head alone"] == b""  # held, not sent on its own
    assert seen["after body"] == HEAD + b"ok"  # one write: head and body together
    assert seen["after a loop step"] == HEAD  # nothing waits past the step that wrote it
    assert seen["not a head"] == b"plain bytes"  # other writes go straight through
    assert seen["after close"] == HEAD  # close sends what is held first
