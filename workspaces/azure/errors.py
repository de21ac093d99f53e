"""Map azure-core, azure-identity and azure-ai-ml failures onto :mod:`workspaces.errors`.

Every message says what to do and is scrubbed of anything that looks like a secret
(bearer tokens, JWTs, SAS signatures, account keys) before it leaves this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from workspaces.errors import (
    AuthenticationFailed,
    InvalidRequest,
    QuotaExceeded,
    ResourceNotFound,
    TransientWorkspaceError,
    WorkspaceError,
)
from workspaces.failure_advice import QUOTA_ADVICE

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_SECRET_PATTERNS = [
    re.compile(r"(?i)bearer\s+[^\s'\",]+"),
    re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*"),
    re.compile(r"(?i)\b(sig|se|skoid|sktid)=[^&\s'\"]+"),
    re.compile(
        r"(?i)(account_?key|accountkey|primarykey|secondarykey|client_?secret|"
        r"password|x-azureml-token)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&]+"
    ),
]
DEFAULT_FIX = (
    "check the credentials block (tenant id, client id and secret, or managed/workload "
    "identity), or run 'az login' for the default chain"
)
ROLE_HINT = (
    "give the identity the 'AzureML Data Scientist' role (or Contributor) on the workspace, "
    "and 'Reader' on the registry"
)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without known secrets and secret-shaped strings."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) + m.group(2) + "***") if m.lastindex == 2 else "***", text
        )
    return text


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# azure-ai-ml validation messages end with generic advice; keep what precedes it.
_ADVICE = re.compile(r"\n\s*(Resolutions|Additional Resources):", re.IGNORECASE)


def _summary(exc: BaseException) -> str:
    # azure-core's text of a service error is "(Code) Message\nCode: Code\nMessage: Message";
    # the parsed error says it once.
    error = getattr(exc, "error", None)
    code, said = (str(getattr(error, "code", "") or ""),
                  str(getattr(error, "message", "") or "").strip())
    if said:
        said = " ".join(line.strip() for line in said.splitlines() if line.strip())
        return f"{code}: {said}" if code and not said.startswith(code) else said
    message = str(getattr(exc, "message", None) or exc or exc.__class__.__name__)
    message = _ADVICE.split(_ANSI.sub("", message))[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    # Never cut: the part that says what is missing is often at the end.
    return " ".join(lines) or exc.__class__.__name__


_ATTEMPT = re.compile(r"^\t(\w+):\s?(.*)$")


def credential_attempts(text: str) -> list[tuple[str, str]]:
    """Each credential a chain (DefaultAzureCredential) tried, with its reason, in full.

    azure-identity lists them after "Attempted credentials:", one per tab-indented line;
    a reason may go on over further lines until the next credential or the closing
    "To mitigate" advice.
    """
    if "Attempted credentials:" not in text:
        return []
    attempts: list[tuple[str, str]] = []
    for line in text.split("Attempted credentials:", 1)[1].splitlines():
        if line.startswith("To mitigate this issue"):
            break
        match = _ATTEMPT.match(line)
        if match:
            attempts.append((match.group(1), match.group(2).strip()))
        elif attempts and line.strip():
            name, reason = attempts[-1]
            attempts[-1] = (name, f"{reason} {line.strip()}")
    return attempts


def credential_failure(
    exc: BaseException, subject: str, fix: str, secrets: tuple[str, ...] = ()
) -> str:
    """The whole story of a failed token request: ``subject`` (which credential, for which
    scope), each credential tried with its reason, never cut, then ``fix``. Scrubbed."""
    text = str(getattr(exc, "message", None) or exc).strip()
    attempts = credential_attempts(text)
    if attempts:
        body = "Credentials tried, in order:\n" + "\n".join(
            f"- {name}: {reason}" for name, reason in attempts
        )
    else:
        body = f"{exc.__class__.__name__}: {' '.join(text.split()) or 'no detail given'}"
    return scrub(f"{subject}.\n{body}\nFix: {fix}.", secrets)


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None and getattr(exc, "response", None) is not None:
        status = getattr(exc.response, "status_code", None)
    return status


def _error_code(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    return str(getattr(error, "code", "") or "")


def map_azure_error(
    exc: BaseException, action: str, secrets: tuple[str, ...] = ()
) -> WorkspaceError:
    """The workspace error for ``exc`` raised while doing ``action`` (e.g. "getting job x")."""
    detail = scrub(_summary(exc), secrets)
    status = _status(exc)
    code = _error_code(exc)
    if isinstance(exc, WorkspaceError):
        return exc
    if "quota" in f"{code} {detail} {exc}".lower():
        return QuotaExceeded(
            f"Azure ML refused {action} for lack of quota ({detail}). {QUOTA_ADVICE}."
        )
    if isinstance(exc, ClientAuthenticationError) and status is None:
        # The credential itself failed (no HTTP answer from Azure ML): say what it tried.
        return AuthenticationFailed(credential_failure(
            exc, f"No Azure credential could get a token while {action}", DEFAULT_FIX, secrets
        ))
    if status == 401 or (isinstance(exc, ClientAuthenticationError) and status in (None, 401)):
        return AuthenticationFailed(
            f"Azure rejected the credential while {action} ({detail}). Check the credentials "
            "block (tenant id, client id and secret, or managed/workload identity), or run "
            "'az login' for the default chain."
        )
    if status == 403:
        return AuthenticationFailed(
            f"The credential lacks permission for {action} ({detail}); {ROLE_HINT}."
        )
    if status == 404 or isinstance(exc, ResourceNotFoundError):
        return ResourceNotFound(f"Not found while {action}: {detail}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError) or status in TRANSIENT_STATUSES:
        return TransientWorkspaceError(
            f"Azure ML was unreachable or busy while {action} ({detail}); retry later."
        )
    if isinstance(exc, HttpResponseError) and status is not None and 400 <= status < 500:
        return InvalidRequest(f"Azure ML refused {action} (HTTP {status}): {detail}")
    if isinstance(exc, HttpResponseError):
        # A failed long-running operation carries the service's error without a 4xx status.
        return InvalidRequest(f"Azure ML could not complete {action}: {detail}")
    if "does not exist" in detail.lower() or "not found" in detail.lower():
        return ResourceNotFound(f"Not found while {action}: {detail}")
    return InvalidRequest(f"{action} failed: {detail}")


@contextmanager
def azure_errors(action: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """Re-raise Azure failures inside the block as workspace errors."""
    try:
        yield
    except WorkspaceError:
        raise
    except (
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
        ClientAuthenticationError,
    ) as exc:
        raise map_azure_error(exc, action, secrets) from None
    except Exception as exc:
        if _is_sdk_validation(exc):
            raise map_azure_error(exc, action, secrets) from None
        raise


def _is_sdk_validation(exc: BaseException) -> bool:
    from azure.ai.ml.exceptions import MlException

    return isinstance(exc, MlException)
