"""Exception hierarchy. Every error carries a message that names what was wrong."""


class WorkerError(Exception):
    """Base class for errors the worker reports to users."""


class MissingDependencyError(WorkerError):
    """An optional package (one of the project's extras) is needed and not installed."""


class MptaError(WorkerError):
    """An MPTA archive could not be fetched, extracted, validated or loaded."""


class FetchError(MptaError):
    """The archive could not be downloaded or read."""


class ArchiveError(MptaError):
    """The archive is corrupt, unsafe or incomplete."""


class SpecError(MptaError):
    """pipeline.json is not valid JSON or does not match the MPTA spec."""


class ModelError(MptaError):
    """A model file cannot be loaded or has an unsupported contract."""
