"""Resumable sweeps: run each config at most once, across restarts, through a results store.

:class:`ResumableRuns` wraps the per-run work of a sweep. Called with a run's config and a
function that computes the run, it returns the stored result when the store holds a finished
run (status ``"done"`` or ``"diverged"``) for that config, and otherwise computes it, stores
it at once (its own transaction) and returns it. A sweep killed midway therefore loses only
the run in progress; rerun, it computes only what is missing. Runs stored as ``"failed"``
are computed again, and so are stored runs that cannot be decoded (damaged JSON, or a result
that ``decode`` refuses), with one warning per store. An exception raised while computing a
run propagates and stores nothing.

Fresh and reused runs both come back through the stored form (``decode`` of the stored
JSON), so a sweep's output does not depend on which of its runs were reused. The package
version is part of every key (``"sharpdim_version"``): runs stored by another version, whose
numbers may differ, are computed again rather than reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from sharpdim.runner.store import FINISHED, ResultsStore

T = TypeVar("T")


class ResumableRuns(Generic[T]):
    """Reuse finished runs from ``store``; compute and store the others.

    Args:
        store: where runs are looked up and written.
        encode: a run's result as JSON data (e.g. ``lambda r: r.to_dict()``).
        decode: the inverse of ``encode`` on the stored JSON.
        status: the store status of a computed run: ``"done"``, ``"diverged"`` or
            ``"failed"``.
        version: the version written into every key (default: this sharpdim's).

    Attributes:
        reused, computed: how many calls returned a stored run / computed one.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with ResultsStore(f"{folder}/runs.sqlite") as store:
        ...         runs = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done")
        ...         first = runs({"lr": 0.1}, lambda: {"loss": 0.5})
        ...         again = runs({"lr": 0.1}, lambda: {"loss": 9.9})  # not computed
        ...         (first, again, runs.computed, runs.reused)
        ({'loss': 0.5}, {'loss': 0.5}, 1, 1)
    """

    def __init__(
        self,
        store: ResultsStore,
        *,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        status: Callable[[T], str],
        version: str | None = None,
    ) -> None:
        self.store = store
        self.encode = encode
        self.decode = decode
        self.status = status
        self.version = _package_version() if version is None else version
        self.reused = 0
        self.computed = 0

    def __call__(self, config: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """The run of ``config``: stored if finished, else ``compute()`` (then stored)."""
        keyed = {**config, "sharpdim_version": self.version}
        record = self.store.get(keyed)
        if record is not None and record.status in FINISHED:
            try:
                reused = self.decode(record.result)
            except Exception as err:  # stored by another program or version: computed again
                self.store.warn_undecodable(record.key, err)
            else:
                self.reused += 1
                return reused
        value = compute()
        stored = self.store.put(keyed, self.encode(value), self.status(value))
        self.computed += 1
        return self.decode(stored.result)


def _package_version() -> str:
    from sharpdim import __version__

    return __version__
