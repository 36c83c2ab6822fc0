"""Garbage-collector settings for the long-running processes (``serve``, the metering worker).

Why. A profile with native frames (``py-spy record --native``) of ``serve`` under load put
CPython's ``gc_collect_main`` at ~20% of the process's busy samples. Every Check allocates
short-lived containers (header tuples, dicts, protobuf wrappers, futures), so with the default
threshold of 700 generation 0 is collected thousands of times a second, and each older
collection also walks everything loaded at start: the config, the catalog, the directory (a
million customers is millions of objects), the imported modules. None of that becomes garbage.

What. Once a process has started, :func:`tune_after_start` collects once, freezes every
surviving object into the permanent generation (``gc.freeze``: never scanned again, still freed
by reference counting) and raises generation 0's threshold so young collections run about 70
times less often. Garbage without cycles is freed at once by reference counting either way;
only reference cycles wait longer, bounded by the threshold (tens of thousands of objects,
a few MB). Objects created later (a reloaded config, a refreshed directory) are scanned as
usual.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000
"""Allocations (minus deallocations) of container objects between two young collections."""


def tune_after_start() -> None:
    """Collect, freeze what survived start-up, and make young collections rarer."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
