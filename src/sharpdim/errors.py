"""Exceptions raised for bad input.

Every message is one line that says what is wrong and what to do. The CLI turns a
:class:`SharpdimError` into exit code 2 without a traceback.
"""

from __future__ import annotations


class SharpdimError(ValueError):
    """Bad input or an impossible request, with a one-line message for the user."""


class TooLargeError(SharpdimError):
    """A dense or exact computation was asked for a model above the configured size limit."""


class NonFiniteLossError(SharpdimError):
    """The loss at the given parameters is NaN or inf (a diverged model, or bad data)."""


class NonFiniteCurvatureError(SharpdimError):
    """The loss is finite but its Hessian-vector products are not: second derivatives that
    overflow (a model about to diverge) or are undefined at these parameters."""


class ZeroPersistenceError(SharpdimError):
    """Points (or a subsample of them) that all coincide, e.g. a frozen trajectory: zero total
    persistence, so no PH0 dimension."""
