"""Errors a workspace raises, split by what the caller should do about them.

Only :class:`TransientWorkspaceError` is worth retrying; every other error carries a
message that tells the user what to change.
"""


class WorkspaceError(Exception):
    """Base class of every error a workspace raises."""


class TransientWorkspaceError(WorkspaceError):
    """Throttling, a server error, a timeout or a dropped connection: try again later."""


class InvalidRequest(WorkspaceError):
    """The request itself is wrong (a bad name, size or value); retrying cannot help."""


class ParseError(InvalidRequest, ValueError):
    """A value the project reads (a model tag, a name, a data file, a parameter) is not
    what it must be. Also a ValueError, so pydantic reports it on the field it checks."""


class AuthenticationFailed(WorkspaceError):
    """The credential was refused or lacks a permission."""


class QuotaExceeded(WorkspaceError):
    """The subscription or machine has no room for the requested size or count."""


class ResourceNotFound(WorkspaceError):
    """A named model, job, compute, endpoint or deployment does not exist."""


class JobFailed(WorkspaceError):
    """A fine-tune job ended Failed or Canceled."""


class DeadlineExceeded(WorkspaceError):
    """A long wait (job, provisioning) passed its configured deadline."""


class OwnershipConflict(InvalidRequest):
    """A name this request would create or change belongs to another request."""


class ConcurrentChange(WorkspaceError):
    """Someone else (a person, another run) changed the endpoint since the writer read it;
    nothing was written."""
