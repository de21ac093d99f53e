"""One sentence of advice for each failure class the service reports that we know.

Workspaces keep the service's own words (error code and message); this module only adds
what to do about them, so a message reads "<what failed>: <service's words>. <advice>".
"""

from __future__ import annotations

import re

# What to do when Azure has no quota for a size: the one wording, used by every quota
# refusal (a failed deployment, a refused request, the pre-flight's quota check).
QUOTA_ADVICE = (
    "Request more quota for this VM family in the region (Azure ML studio > Quota), pick "
    "another size from the model's allow list, or free capacity"
)

# (class, pattern on "code message", advice); the first match wins, so the specific
# classes come before the generic quota and auth ones.
_CLASSES: list[tuple[str, re.Pattern[str], str]] = [
    (
        "OutOfCapacity",
        re.compile(r"OutOfCapacity|not enough capacity|capacity (is )?not available", re.I),
        "The region has no free machines of this size right now: run again later, or pick "
        "another instance type or region.",
    ),
    (
        "OutOfQuota",
        re.compile(r"OutOfQuota", re.I),
        f"{QUOTA_ADVICE}, then run again: the failed deployment is replaced.",
    ),
    (
        "ImageBuildFailure",
        re.compile(r"ImageBuildFailure|image build", re.I),
        "The serving image did not build: open the build log linked from the deployment in "
        "Azure ML studio and fix the environment or model package before running again.",
    ),
    (
        "ResourceNotReady",
        re.compile(r"ResourceNotReady|liveness|readiness probe|container crash", re.I),
        "The serving container crashed or failed its liveness probe: read the deployment "
        "logs; a large model may need a longer liveness delay or a bigger instance type.",
    ),
    (
        "quota",
        re.compile(r"quota", re.I),
        f"{QUOTA_ADVICE}.",
    ),
    (
        "auth",
        re.compile(
            r"AuthorizationFailed|AuthenticationFailed|InvalidAuthenticationToken|"
            r"ExpiredAuthenticationToken|Unauthorized|Forbidden|permission|not authorized",
            re.I,
        ),
        "Check the credentials block, and give the identity the 'AzureML Data Scientist' "
        "role on the workspace.",
    ),
]


def failure_class(text: str) -> str | None:
    """The known class of a failure's code and message, or None."""
    return next((name for name, pattern, _ in _CLASSES if pattern.search(text)), None)


def advice_for(text: str) -> str | None:
    """One sentence saying what to do about a failure, from its code and message."""
    return next((advice for _, pattern, advice in _CLASSES if pattern.search(text)), None)


def with_advice(message: str, cause: str | None = None) -> str:
    """``message`` followed by the advice for ``cause`` (default: the message itself)."""
    advice = advice_for(cause if cause is not None else message)
    return f"{message.rstrip('. ')}. {advice}" if advice else message
