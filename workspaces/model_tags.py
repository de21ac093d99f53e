"""Safe parsing of the foundation model's steering tags.

Azure registry tags are strings holding Python literals (``"['Standard_NC6s_v3']"``,
``"{'learning_rate': '2e-5'}"``). They are read with :func:`ast.literal_eval`, never ``eval``.
"""

from __future__ import annotations

import ast
import logging
from datetime import UTC, date, datetime
from typing import Any

from workspaces.errors import ParseError
from workspaces.interface import FoundationModel

FINETUNE_ALLOW_LIST = "finetune_compute_allow_list"
INFERENCE_ALLOW_LIST = "inference_compute_allow_list"
MODEL_SPECIFIC_DEFAULTS = "model_specific_defaults"
# Tags Azure puts on models that are on their way out.
RETIREMENT_TAGS = ("retirement_date", "deprecation_date", "retired", "deprecated")

logger = logging.getLogger(__name__)
# Real steering tags are a few hundred characters; a longer one is refused unread, so a
# pathological tag can neither exhaust memory nor the parser's recursion.
MAX_TAG_CHARS = 65536


class TagParseError(ParseError):
    """A steering tag holds something that is not the literal it should be."""


def parse_literal_tag(model: FoundationModel, key: str) -> Any | None:
    """Return the Python literal held by tag ``key``, or None when the tag is absent."""
    raw = model.tags.get(key)
    if raw is None or str(raw).strip() == "":
        return None
    text = str(raw)
    what = f"tag {key!r} of model {model.name} version {model.version}"
    if len(text) > MAX_TAG_CHARS:
        raise TagParseError(
            f"{what} is {len(text)} characters long; at most {MAX_TAG_CHARS} are read. Fix "
            "the tag in the registry, or choose another foundation_model or version"
        )
    try:
        return ast.literal_eval(text)
    # A deeply nested literal ends the parser with MemoryError or RecursionError, not
    # SyntaxError; it is still just a bad tag.
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, MemoryError | RecursionError) else (
            exc.__class__.__name__)
        raise TagParseError(
            f"{what} is not a Python literal ({reason}): {text[:80]!r}; fix the tag in the "
            "registry, or choose another foundation_model or version"
        ) from None


def allow_list(model: FoundationModel, key: str) -> list[str] | None:
    """The VM sizes a model allows for fine-tuning or inference, or None when unrestricted."""
    value = parse_literal_tag(model, key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set) or not all(isinstance(v, str) for v in value):
        raise TagParseError(f"tag {key!r} of model {model.name} must be a list of VM size names")
    return list(value)


def model_specific_defaults(model: FoundationModel) -> dict[str, str]:
    """Fine-tune parameters the model overrides, values as strings as the API takes them."""
    value = parse_literal_tag(model, MODEL_SPECIFIC_DEFAULTS)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TagParseError(
            f"tag {MODEL_SPECIFIC_DEFAULTS!r} of model {model.name} must be a dict"
        )
    return {str(k): api_string(v) for k, v in value.items()}


def api_string(value: Any) -> str:
    """A parameter value as the component API takes it: booleans as "true"/"false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


TRUE_VALUES = frozenset({"true", "yes", "y", "1", "on"})
FALSE_VALUES = frozenset({"false", "no", "n", "0", "off", "none", "null"})
DATE_TAGS = ("retirement_date", "deprecation_date")


def _tag_date(value: str) -> date | None:
    text = value.strip()
    for parse in (
        lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")).date(),
        lambda t: datetime.strptime(t, "%m/%d/%Y").date(),
        lambda t: datetime.strptime(t, "%d %B %Y").date(),
        lambda t: datetime.strptime(t, "%B %d, %Y").date(),
    ):
        try:
            return parse(text)
        except ValueError:
            continue
    return None


def retirement_status(
    model: FoundationModel, today: date | None = None
) -> tuple[str | None, list[str]]:
    """``(refusal, warnings)`` from the model's retirement tags.

    ``retired``/``deprecated`` refuse when true-ish (``true``, ``yes``, ``1``);
    ``retirement_date``/``deprecation_date`` refuse when the date has come. ``false``, a
    date still ahead and values that are neither only warn, with the date.
    """
    today = today or datetime.now(UTC).date()
    what = f"model {model.name} version {model.version}"
    refusals: list[str] = []
    warnings: list[str] = []
    for key, raw in sorted(model.tags.items()):
        name, value = key.lower(), str(raw).strip()
        if name not in RETIREMENT_TAGS or not value:
            continue
        if name in DATE_TAGS:
            when = _tag_date(value)
            if when is None:
                warnings.append(f"{what} has tag {key}={value!r}, which is not a date")
            elif when <= today:
                refusals.append(f"{key} {when.isoformat()} has passed")
            else:
                warnings.append(f"{what} has {key} {when.isoformat()}: choose a successor "
                                "before then")
        elif value.lower() in TRUE_VALUES:
            refusals.append(f"{key}={value}")
        elif value.lower() in FALSE_VALUES:
            warnings.append(f"{what} has tag {key}={value!r}; not taken as retired")
        else:
            warnings.append(f"{what} has tag {key}={value!r}, which is neither true nor false")
    refusal = f"{what} is retired ({'; '.join(refusals)})" if refusals else None
    return refusal, warnings
