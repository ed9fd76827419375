"""Typed exceptions. Every error a user can cause is an ``LqoError``; the CLI turns
one into a single line on stderr and exit code 2."""


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
