"""Names the procedure derives, and Azure's naming rules (kept locally too)."""

from __future__ import annotations

import re

from workspaces.errors import ParseError

ENDPOINT_NAME_RE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


class InvalidName(ParseError):
    """A name Azure would refuse for an endpoint or deployment."""


def check_endpoint_name(name: str, field: str = "endpoint_name") -> str:
    """Return ``name`` when it obeys Azure's endpoint/deployment rules, else raise InvalidName.

    Azure: 3-32 characters, starts with a letter, letters, digits and single hyphens,
    ends with a letter or digit.
    """
    problems = []
    if not 3 <= len(name) <= 32:
        problems.append(f"is {len(name)} characters long (allowed: 3-32)")
    if not ENDPOINT_NAME_RE.match(name):
        problems.append(
            "must start with a letter, hold only letters, digits and hyphens, "
            "and end with a letter or digit"
        )
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if problems:
        raise InvalidName(f"{field} {name!r} " + "; ".join(problems))
    return name


def suffix_for(request_id: str) -> str:
    """The request's suffix: ten digits made from its id (the id is a sha256 in hex).

    The walkthrough's suffix is the epoch second; two requests started in the same second
    then shared a model version and an endpoint name. Made from the request id, it is the
    same on every run of a request and differs between requests (a clash of two ids' first
    32 bits is refused by the ownership checks, never shared). Ten digits keep the
    endpoint name ``ultrachat-completion-<suffix>`` within Azure's 32 characters.
    """
    return str(1_000_000_000 + int(request_id[:8], 16))


def endpoint_name_for(suffix: str) -> str:
    """The walkthrough's endpoint name: ``ultrachat-completion-<suffix>``."""
    return check_endpoint_name(f"ultrachat-completion-{suffix}")


def registered_model_name(foundation_model: str) -> str:
    """``<model>-ultrachat-200k`` with ``/`` replaced by ``-``."""
    return f"{foundation_model}-ultrachat-200k".replace("/", "-")


def registered_model_description(foundation_model: str) -> str:
    """The walkthrough's description of the registered fine-tuned model."""
    return f"{foundation_model} fine tuned model for ultrachat 200k chat-completion"


def experiment_name_for(foundation_model: str) -> str:
    """``chat_completion_<model>`` (a hub id's ``/`` becomes ``-``)."""
    return "chat_completion_" + foundation_model.replace("/", "-")


def _int_or_one(value: object) -> int:
    if value is None or value == "":
        return 1
    return int(float(str(value)))


def finetune_display_name(
    foundation_model: str,
    parameters: dict[str, str],
    gpus_per_node: int,
    num_nodes: int,
) -> str:
    """The walkthrough's display name formula.

    ``<model>-ultrachat-bs<B>-<scheduler>-<ds>-<lora>-save_limit<L>-seqlen<S>`` where B is
    per-device batch x gradient accumulation x GPUs per node x nodes (missing counts 1).
    """
    batch = (
        _int_or_one(parameters.get("per_device_train_batch_size"))
        * _int_or_one(parameters.get("gradient_accumulation_steps"))
        * max(int(gpus_per_node or 1), 1)
        * max(int(num_nodes or 1), 1)
    )
    scheduler = parameters.get("lr_scheduler_type") or "linear"
    deepspeed_on = str(parameters.get("apply_deepspeed", "false")).lower() == "true"
    ds = f"ds{parameters.get('deepspeed_stage', '')}" if deepspeed_on else "nods"
    lora = "lora" if str(parameters.get("apply_lora", "false")).lower() == "true" else "nolora"
    save_limit = parameters.get("save_total_limit", "-1") or "-1"
    seqlen = parameters.get("max_seq_length", "-1") or "-1"
    model = foundation_model.replace("/", "-")
    return (
        f"{model}-ultrachat-bs{batch}-{scheduler}-{ds}-{lora}-save_limit{save_limit}-seqlen{seqlen}"
    )


def finetune_job_name(request_id: str, suffix: str, attempt: int = 1) -> str:
    """Deterministic job name, so a re-run after a crash finds the job it submitted."""
    base = f"chatft-{suffix}-{request_id[:10]}"
    return base if attempt <= 1 else f"{base}-r{attempt}"
