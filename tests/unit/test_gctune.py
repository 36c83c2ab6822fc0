"""The long-running processes' garbage-collector settings."""

from __future__ import annotations

import gc

from tollhouse.gctune import GEN0_THRESHOLD, tune_after_start


def test_tune_freezes_startup_objects_and_raises_gen0_threshold() -> None:
    """After start-up the surviving objects are frozen and young collections become rarer."""
    before = gc.get_threshold()
    gc.unfreeze()
    survivor = [object() for _ in range(10)]
    try:
        tune_after_start()
        assert gc.get_freeze_count() >= len(survivor)
        assert gc.get_threshold() == (GEN0_THRESHOLD, before[1], before[2])
        assert before[0] < GEN0_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
