"""Optional dependencies: which extra brings each, and the error when one is missing.

The core (SQLite, local pilots, the CLI) needs none of them; each is wanted by
one feature only, so a missing one must name the feature and the extra that
brings it rather than surface as a bare ``ModuleNotFoundError`` from deep in
SQLAlchemy or an import chain:

- ``postgres``: ``psycopg``, the driver of ``postgresql+psycopg://`` URLs;
- ``ssh``: ``asyncssh``, for entries whose batch system is reached over SSH;
- ``fast``: ``uvloop`` and ``httptools``, which uvicorn uses when present
  (less CPU per request); without them it quietly runs on asyncio and h11, so
  nothing ever fails for lack of them.

``all`` is the three together; ``test`` adds the test and lint tools.
"""

from __future__ import annotations

EXTRA_OF = {
    "psycopg": "postgres",
    "asyncssh": "ssh",
    "uvloop": "fast",
    "httptools": "fast",
}


class MissingExtra(ImportError):
    """A feature needs a package that is not installed; the message says which
    extra installs it. An ImportError, so code that already falls back on an
    ImportError keeps doing so."""

    def __init__(self, feature: str, module: str) -> None:
        self.feature = feature
        self.extra = EXTRA_OF[module]
        super().__init__(
            f"{feature} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'glidewms[{self.extra}]'",
            name=module,
        )


def is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """Whether `exc` is about `module` itself, not about something it imports
    (a broken installation of the package must not be reported as absent).

    How an import site uses it, keeping a plain, typed ``import``::

        try:
            import asyncssh
        except ModuleNotFoundError as exc:
            if is_missing(exc, "asyncssh"):
                raise MissingExtra("an entry reached over SSH", "asyncssh") from None
            raise
    """
    return exc.name is not None and exc.name.split(".")[0] == module
