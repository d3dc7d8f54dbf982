"""Exception hierarchy. Every error carries a message that names what was wrong."""

from typing import ClassVar


class WorkerError(Exception):
    """Base class for errors the worker reports to users."""

    #: True when trying again cannot succeed without someone changing something (a local
    #: archive path that does not exist): background retry loops give up at once.
    permanent: ClassVar[bool] = False


class MissingDependencyError(WorkerError):
    """An optional package (one of the project's extras) is needed and not installed."""


class MptaError(WorkerError):
    """An MPTA archive could not be fetched, extracted, validated or loaded."""


class FetchError(MptaError):
    """The archive could not be downloaded or read."""


class ArchiveNotFoundError(FetchError):
    """A local archive (a path or a ``file://`` URL) does not exist or is not a file."""

    permanent = True


class ArchiveError(MptaError):
    """The archive is corrupt, unsafe or incomplete."""


class SpecError(MptaError):
    """pipeline.json is not valid JSON or does not match the MPTA spec."""


class ModelError(MptaError):
    """A model file cannot be loaded or has an unsupported contract."""
