"""Safe parsing of the foundation model's steering tags.

Azure registry tags are strings holding Python literals (``"['Standard_NC6s_v3']"``,
``"{'learning_rate': '2e-5'}"``). They are read with :func:`ast.literal_eval`, never ``eval``.
"""

from __future__ import annotations

import ast
import logging
from typing import Any

from workspaces.interface import FoundationModel

FINETUNE_ALLOW_LIST = "finetune_compute_allow_list"
INFERENCE_ALLOW_LIST = "inference_compute_allow_list"
MODEL_SPECIFIC_DEFAULTS = "model_specific_defaults"
# Tags Azure puts on models that are on their way out.
RETIREMENT_TAGS = ("retirement_date", "deprecation_date", "retired", "deprecated")

logger = logging.getLogger(__name__)


class TagParseError(ValueError):
    """A steering tag holds something that is not the literal it should be."""


def parse_literal_tag(model: FoundationModel, key: str) -> Any | None:
    """Return the Python literal held by tag ``key``, or None when the tag is absent."""
    raw = model.tags.get(key)
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return ast.literal_eval(str(raw))
    except (ValueError, SyntaxError) as exc:
        raise TagParseError(
            f"tag {key!r} of model {model.name} version {model.version} is not a Python "
            f"literal ({exc.__class__.__name__}): {str(raw)[:200]!r}"
        ) from exc


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


def retirement_notice(model: FoundationModel) -> str | None:
    """A sentence when the model is marked retired or deprecated, else None."""
    found = {k: v for k, v in model.tags.items() if k.lower() in RETIREMENT_TAGS and v}
    if not found:
        return None
    detail = ", ".join(f"{k}={v}" for k, v in sorted(found.items()))
    return f"model {model.name} version {model.version} is marked for retirement ({detail})"
