"""What the benchmarks share: timing the calls into a backend, to tell its time from reclaim's."""

from __future__ import annotations

import time
from typing import Any, Final


class TimedRelease:
    """While entered, adds up the time spent in ``backend.release`` and ``release_many`` (a
    record that a batch failed is released on its own, and counted there too)."""

    METHODS: Final = ("release", "release_many")

    def __init__(self, backend: type[Any]) -> None:
        self.backend = backend
        self.ns = 0
        self.calls = 0
        self.originals = {m: backend.__dict__[m] for m in self.METHODS}

    def __enter__(self) -> TimedRelease:
        for method, original in self.originals.items():
            func = original.__func__

            def timed(cls: type[Any], records: Any, _func: Any = func) -> Any:
                t0 = time.perf_counter_ns()
                try:
                    return _func(cls, records)
                finally:
                    self.ns += time.perf_counter_ns() - t0
                    self.calls += 1

            setattr(self.backend, method, classmethod(timed))
        return self

    def __exit__(self, *_exc: object) -> None:
        for method, original in self.originals.items():
            setattr(self.backend, method, original)
