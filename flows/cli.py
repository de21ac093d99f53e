"""The command line of each flow, generated from the flow's parameter model.

Every field a person can set in the UI's run form can be set from the shell, with the
same validation and the same help text (the fields' descriptions), e.g.::

    python -m flows.finetune_and_deploy --help
    python -m flows.finetune_and_deploy --dataset sample --training.num-train-epochs 1
    python -m flows.teardown_idle_endpoints --dry-run --workspace-block azure-ml-workspace/prod

Nested models are dotted options (``--training.learning-rate``); booleans are flags with a
``--no-`` twin; lists repeat the option or take JSON (``--endpoint-names a,b``).
Only the command line is read: environment variables never set a request field.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict

from flows.parameters import WorkspaceBlock

RequestT = TypeVar("RequestT", bound=BaseModel)

WORKSPACE_BLOCK_HELP = (
    "Block slug of the workspace (local-workspace/NAME or azure-ml-workspace/NAME); "
    "empty = the local workspace in ./.workspace"
)


def _command_model(request_cls: type[RequestT]) -> type[BaseSettings]:
    """The request's fields plus ``--workspace-block``, as a settings class for the parser."""

    class Command(BaseSettings, request_cls):  # type: ignore[misc, valid-type]
        __doc__ = request_cls.__doc__
        model_config = SettingsConfigDict(
            extra="forbid", case_sensitive=True, cli_hide_none_type=True, cli_avoid_json=True,
            cli_implicit_flags=True, cli_kebab_case=True,
        )
        workspace_block: str = Field("", description=WORKSPACE_BLOCK_HELP)

    Command.__name__ = f"{request_cls.__name__}Command"
    return Command


def parse_request(
    request_cls: type[RequestT], prog: str, argv: Sequence[str] | None = None
) -> tuple[RequestT, str]:
    """(request, workspace_block) from the command line; exits 2 with the field on bad input."""
    command = _command_model(request_cls)
    source = CliSettingsSource(
        command, cli_prog_name=prog,
        cli_parse_args=list(sys.argv[1:] if argv is None else argv),
    )
    values: dict[str, Any] = source()
    workspace_block = values.pop("workspace_block", None) or ""
    errors = []
    try:
        TypeAdapter(WorkspaceBlock).validate_python(workspace_block)
    except ValidationError:
        errors.append({"loc": ("workspace_block",), "msg": (
            f"{workspace_block!r} is not a block slug; give BLOCK-TYPE/NAME in lowercase "
            "letters, digits and dashes (e.g. azure-ml-workspace/prod), or leave it empty "
            "for the local workspace")})
    try:
        request = request_cls.model_validate(values)
    except ValidationError as exc:
        errors += exc.errors()
    if not errors:
        return request, workspace_block
    lines = [
        f"  --{'.'.join(str(p) for p in error['loc']).replace('_', '-')}: {error['msg']}"
        for error in errors
    ]
    source.root_parser.print_usage(sys.stderr)
    print(f"{prog}: error: invalid value(s):\n" + "\n".join(lines), file=sys.stderr)
    raise SystemExit(2)
