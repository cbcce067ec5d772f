"""The in-process link: the server lives in the same process, but every message is still bytes."""

from __future__ import annotations

from typing import Callable, Protocol


class Link(Protocol):
    """What carries a client's messages to its server: bytes in, bytes out (in process, or gRPC)."""
    last_framing: tuple[int, int]  # bytes the transport added around the last request and its reply

    def request(self, payload: bytes) -> bytes:
        """Send one message to the server, return its reply."""

    def close(self) -> None:
        """End the session."""


class InProcessLink:
    """Hands the serialised bytes to a server's handler and returns the serialised reply.

    Passing bytes, not tensors, keeps simulation honest: what is counted is what a network link
    would carry, and the server decodes (and checks) exactly what it would decode remotely.
    """

    last_framing = (0, 0)

    def __init__(self, handler: Callable[[bytes], bytes]):
        self.handler = handler

    def request(self, payload: bytes) -> bytes:
        """The serialised message to the server's session in this process; its serialised reply."""
        return self.handler(bytes(payload))

    def close(self) -> None:
        """Nothing to close in process."""
        pass
