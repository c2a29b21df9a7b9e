"""The public front door: a short, sorted, complete ``__all__``."""

from __future__ import annotations

import reclaim
import reclaim.backends


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions.
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


def test_all_is_sorted_and_complete() -> None:
    for module in (reclaim, reclaim.backends):
        public = {n for n in vars(module) if not n.startswith("_")} - {"annotations"}
        assert module.__all__ == sorted(module.__all__, key=_isort_key)
        assert set(module.__all__) - {"__version__"} <= public
        exported_objects = [getattr(module, n) for n in module.__all__]
        assert all(o is not None for o in exported_objects)


def test_public_classes_claim_the_public_module() -> None:
    assert reclaim.Fixture.__module__ == "reclaim"
    assert reclaim.ReleaseError.__module__ == "reclaim"
    assert str(reclaim.ResourceState.FAILED) == "failed"
