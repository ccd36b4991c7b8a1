"""A per-process budget of the bytes decoded images may take at once.

Each image's own size is checked against `HISTOPATH_MAX_DECODED_MB` from its header
(`histopath.images`); this budget bounds their sum: a request holds its image's decoded
bytes while it decodes, classifies and renders it, and waits (in its thread, at most
`wait_s`) while other large images fill the budget. Small images pass at once; the worker's
memory stays bounded however many pathologists upload large files together.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator


class DecodeBusy(Exception):
    """The budget stayed full for the whole wait; the message is for the user."""


class ByteBudget:
    """At most `capacity` bytes held at once by the threads of this process.

    Args:
      capacity: the bytes that may be held together (one request may hold up to all).
      wait_s: the longest a request waits for room.
    """

    def __init__(self, capacity: int, wait_s: float = 60.0):
        if capacity < 1:
            raise ValueError(f"a byte budget needs a positive capacity, not {capacity}")
        self.capacity = capacity
        self.wait_s = wait_s
        self.held = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        """Holds `size` bytes (at most the capacity) for the block.

        Raises:
          DecodeBusy: no room within `wait_s`.
        """
        size = max(0, min(size, self.capacity))
        deadline = time.monotonic() + self.wait_s
        with self._room:
            while self.held + size > self.capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._room.wait(remaining):
                    if self.held + size > self.capacity:
                        raise DecodeBusy("the server is reading other large images right now; "
                                         "try again in a minute")
            self.held += size
        try:
            yield
        finally:
            with self._room:
                self.held -= size
                self._room.notify_all()
