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
JSON), so a sweep's output does not depend on which of its runs were reused. The code's
version is part of every key (``"sharpdim_version"``: the package version and a digest of the
package's source files, :func:`code_version`): runs stored by other code, whose numbers may
differ, are computed again rather than reused, even when a fix left the version number as it
was.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
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
        version: the version written into every key (default: :func:`code_version`).

    Attributes:
        reused, computed: how many calls returned a stored run / computed one.
        other_code: one entry per computed run whose config the store holds finished under
            other ``sharpdim_version`` s: those versions, sorted (runs computed again because
            the code changed, which a command reports).

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
        self.version = code_version() if version is None else version
        self.reused = 0
        self.computed = 0
        self.other_code: list[tuple[str, ...]] = []
        self._versions: dict[str, set[str]] | None = None  # unversioned key -> versions

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
        others = tuple(sorted(self._stored_versions(config) - {self.version}))
        if others:
            self.other_code.append(others)
        value = compute()
        stored = self.store.put(keyed, self.encode(value), self.status(value))
        self.computed += 1
        return self.decode(stored.result)

    def _stored_versions(self, config: Mapping[str, Any]) -> set[str]:
        """The ``sharpdim_version`` of every finished stored run of ``config`` (the store read
        once, at the first run that is not found)."""
        if self._versions is None:
            self._versions = {}
            for record in self.store.records():
                version = record.config.pop("sharpdim_version", None)
                if record.status in FINISHED and isinstance(version, str):
                    key = self.store.config_key(record.config)
                    self._versions.setdefault(key, set()).add(version)
        return self._versions.get(self.store.config_key(config), set())


@functools.cache
def code_version() -> str:
    """``"<version>+<digest>"``: the package version and :func:`source_digest` of the
    installed package, so any change of the code that computes a run changes its key; the
    version alone (with a warning) where the package's files cannot be read (a zip import)."""
    import sharpdim

    digest = source_digest(Path(sharpdim.__file__).parent)
    if digest is None:
        warnings.warn(
            "sharpdim's files cannot be read (imported from a zip?): stored runs are keyed by "
            f"the version number {sharpdim.__version__} alone, and runs of other code with the "
            "same number are reused",
            RuntimeWarning,
            stacklevel=2,
        )
        return sharpdim.__version__
    return f"{sharpdim.__version__}+{digest}"


def source_digest(root: Path) -> str | None:
    """The first 12 hex digits of a SHA-256 over the ``.py`` files under ``root`` (relative
    paths and contents, in path order), or over its compiled ``.pyc`` files where it ships
    without sources; ``None`` when it has neither or one cannot be read. Hidden files and
    folders are left out: an editor's lock file (Emacs' ``.#store.py``, a link to nowhere)
    made every sweep fail with FileNotFoundError."""
    for pattern in ("*.py", "*.pyc"):
        files = sorted(
            (
                f
                for f in root.rglob(pattern)
                if not any(part.startswith((".", "#")) for part in f.relative_to(root).parts)
                and f.is_file()
            ),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if pattern == "*.pyc":
            files = [f for f in files if "__pycache__" not in f.parts]  # (caches of sources)
        if files:
            digest = hashlib.sha256()
            try:
                for path in files:
                    digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                    digest.update(path.read_bytes() + b"\0")
            except OSError:
                return None
            return digest.hexdigest()[:12]
    return None
