"""A process for test_store: opens new results stores at the same moment as others and writes a
row in each.

Kept apart from the test module so that a spawned process imports neither torch nor numpy.
"""

from typing import Any


def open_and_put(paths: list[str], index: int, barrier: Any, errors: Any) -> None:
    from sharpdim.runner.store import ResultsStore

    error = None
    for path in paths:
        barrier.wait()  # all processes open this path together
        try:
            with ResultsStore(path, timeout=10) as store:
                store.put({"writer": index}, {"value": index})
        except Exception as err:  # reported to the test, which names it
            error = error or f"process {index}, {path}: {type(err).__name__}: {err}"
    errors.put(error)
