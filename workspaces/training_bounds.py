"""The bounds of every training input we know, in one place.

The request form takes its limits from here, and so do values given by name in
``training.extra_parameters``: an input outside them is refused before anything is
created, whichever way it was set. (The component's own interface is checked as well, in
:mod:`workspaces.pipeline_inputs`, but it declares few maxima: ``lora_dropout: 5`` and
``num_train_epochs: 1000000`` passed it and reached a job.)

Example::

    problem("lora_dropout", "5")
    # '5 is above the largest lora_dropout allowed; lora_dropout is a number at least 0
    #  and below 1'
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class Bound(NamedTuple):
    """Where a numeric input may lie; an open end excludes its limit."""

    low: float | None
    high: float | None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The allowed range in words, e.g. ``an integer at least 1 and at most 100``."""
        parts = []
        if self.low is not None:
            parts.append(("above " if self.low_open else "at least ") + _num(self.low))
        if self.high is not None:
            parts.append(("below " if self.high_open else "at most ") + _num(self.high))
        return ("an integer " if self.integer else "a number ") + " and ".join(parts)


BOUNDS: dict[str, Bound] = {
    "num_train_epochs": Bound(1, 100, integer=True),
    "per_device_train_batch_size": Bound(1, 1024, integer=True),
    "per_device_eval_batch_size": Bound(1, 1024, integer=True),
    "learning_rate": Bound(0, 1, low_open=True),
    "gradient_accumulation_steps": Bound(1, 1024, integer=True),
    "max_seq_length": Bound(16, 131072, integer=True),
    "save_total_limit": Bound(-1, None, integer=True),
    "max_steps": Bound(-1, None, integer=True),
    "warmup_steps": Bound(0, None, integer=True),
    "warmup_ratio": Bound(0, 1),
    "weight_decay": Bound(0, 1),
    "lora_r": Bound(1, 1024, integer=True),
    "lora_alpha": Bound(0, 10000, low_open=True),
    "lora_dropout": Bound(0, 1, high_open=True),
    "max_grad_norm": Bound(0, None, low_open=True),
    "adam_beta1": Bound(0, 1, high_open=True),
    "adam_beta2": Bound(0, 1, high_open=True),
    "adam_epsilon": Bound(0, 1, low_open=True),
    "logging_steps": Bound(1, None, integer=True),
    "eval_steps": Bound(1, None, integer=True),
    "save_steps": Bound(1, None, integer=True),
}


def field_limits(name: str) -> dict[str, Any]:
    """Pydantic ``Field`` limits (``ge``/``gt``/``le``/``lt``) of input ``name``."""
    bound = BOUNDS[name]
    limits: dict[str, Any] = {}
    if bound.low is not None:
        limits["gt" if bound.low_open else "ge"] = bound.low
    if bound.high is not None:
        limits["lt" if bound.high_open else "le"] = bound.high
    return limits


def problem(name: str, value: object) -> str | None:
    """Why ``value`` is not allowed for input ``name`` (None: allowed, or not bounded)."""
    bound = BOUNDS.get(name)
    if bound is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        # The type is the component interface's to judge, in the pre-flight, which names
        # the input's type; only the range is judged here.
        return None
    if not math.isfinite(number):
        return f"{text} is not allowed; {name} is {bound.describe()}"
    if bound.low is not None and (number < bound.low or (bound.low_open and number == bound.low)):
        return f"{text} is below the smallest {name} allowed; {name} is {bound.describe()}"
    if bound.high is not None and (
        number > bound.high or (bound.high_open and number == bound.high)
    ):
        return f"{text} is above the largest {name} allowed; {name} is {bound.describe()}"
    return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
