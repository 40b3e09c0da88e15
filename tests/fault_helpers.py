"""Helpers for the fault tests: call something that must refuse a FIFO, failing (not hanging) if it blocks."""

from __future__ import annotations

import threading

import pytest


def error_without_blocking(fn, fifo, error=Exception, timeout: float = 30) -> str:
    """str() of the `error` that fn() raises, run in a thread; if fn blocks (reading the FIFO), unblock it by
    opening the FIFO for writing and fail the test."""
    result: dict = {}

    def call():
        try:
            fn()
        except error as exc:
            result["error"] = str(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        with open(fifo, "wb"):
            pass
        pytest.fail(f"{fn} blocked on the FIFO {fifo}")
    assert "error" in result, f"{fn} raised no {error.__name__}"
    return result["error"]


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# A fuzzed input read in-process may raise the peak by at most this much: the readers refuse, before
# allocating, any header that asks for more (IDX: max_bytes; model files: the declared layer shapes).
FUZZ_RSS_GROWTH = 64 << 20
