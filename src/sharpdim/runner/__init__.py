"""Running sweeps: the SQLite results store and resumable runs (executors come later)."""

from sharpdim.runner.encoding import canonical_json, config_key, json_value
from sharpdim.runner.resume import ResumableRuns, code_version
from sharpdim.runner.store import ResultsStore, RunRecord

__all__ = [
    "ResultsStore",
    "ResumableRuns",
    "RunRecord",
    "canonical_json",
    "code_version",
    "config_key",
    "json_value",
]
