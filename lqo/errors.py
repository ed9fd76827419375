"""Typed exceptions. Every error a user can cause is an ``LqoError``; the CLI turns
one into a single line on stderr and exit code 2."""

from typing import Any


class LqoError(Exception):
    """Base class of every error lqo raises on bad input."""


class InvalidSQLError(LqoError):
    """The text is not SQL that sqlglot/DuckDB can parse."""


class NotSelectError(LqoError):
    """The statement is not a read-only SELECT query."""


class UnknownTableError(LqoError):
    """The query names a table or column the database does not have."""


class MissingFileError(LqoError):
    """A database, workload, recipe or model file does not exist."""


class WorkloadError(LqoError):
    """A workload directory or manifest is malformed."""


class SchemaMismatchError(LqoError):
    """A model was trained for another database schema."""


class PlanError(LqoError):
    """A plan does not fit the query it is meant for."""


class RecipeError(LqoError):
    """A recipe or configuration file is malformed."""


class BookError(LqoError):
    """A plan book file is missing, corrupt or written by an incompatible version."""


class SettingRefusedError(LqoError):
    """DuckDB refused an optimizer rule or setting a verified plan needs (a setting this
    DuckDB version does not know, a value it rejects): the plan's statement runs as
    written instead; DuckDB's error is the ``__cause__``."""


class QueryRuntimeError(LqoError):
    """A query that parsed and bound failed while it ran: a conversion error, an
    overflow, out of memory under DuckDB's ``memory_limit``, an interrupt, or a result
    Python cannot hold. ``query`` names the query (its id or a prefix of its text),
    ``detail`` is DuckDB's (or Python's) one-line message; the original exception is
    the ``__cause__``."""

    def __init__(self, message: str, query: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.query = query
        self.detail = detail

    def __reduce__(self) -> Any:  # picklable with its extra fields (worker processes)
        return (type(self), (str(self), self.query, self.detail))


class BusyError(LqoError):
    """Another lqo process is writing the same model directory or experience store."""


class ClusterError(LqoError):
    """``--ray``: the cluster cannot be reached, or a node cannot serve the workload
    (its database is missing or differs from the driver's), or every executor is lost."""
