"""The chat-completion scoring contract, in one place: the request body and the reply.

Azure ML online endpoints of chat-completion models (and the local endpoints) take::

    {"input_data": {"input_string": [[{"role": "user", "content": "..."}, ...]],
                    "parameters": {"temperature": 0.6, "max_new_tokens": 200, ...}},
     "params": {}}

and answer ``{"output": "<assistant text>"}``. An empty object ``{}`` is what a
content-filtered reply looks like. Anything else (a list such as ``["text"]``, a non-string
``output``, an empty ``output``) breaks the contract.

The flows build bodies with :func:`build_body`, the local endpoint server validates them
with :func:`parse_body`, and everything that reads an answer (the flow's sample score, the
smoke test) uses :func:`read_reply`, so the three can never disagree.
"""

from __future__ import annotations

import json
from typing import Any

from workspaces.chat_messages import message_problem
from workspaces.errors import ParseError

GENERATION_PARAMETERS: dict[str, tuple[type, float | None, float | None]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 1000),
    "max_new_tokens": (int, 1, 2048),
    "repetition_penalty": (float, 0.0, 10.0),
    "do_sample": (bool, None, None),
}

CONTENT_FILTERED = "content_filtered"
BAD_REPLY = "bad_reply"


class BadScoringBody(ParseError):
    """A scoring body breaks the contract; the message names the field and what is allowed."""


class BadReply(ValueError):
    """A 200 answer that is not a usable reply; ``kind`` is content_filtered or bad_reply."""

    def __init__(self, kind: str, message: str) -> None:
        """``kind`` names the fault for the smoke test's table; ``message`` explains it."""
        super().__init__(message)
        self.kind = kind


def build_body(messages: list[dict[str, str]], parameters: dict[str, Any]) -> dict[str, Any]:
    """The scoring body for one conversation, validated before it is sent.

    >>> build_body([{"role": "user", "content": "Hi"}], {"max_new_tokens": 20})["input_data"]
    {'input_string': [[{'role': 'user', 'content': 'Hi'}]], 'parameters': {'max_new_tokens': 20}}
    """
    body = {
        "input_data": {"input_string": [list(messages)], "parameters": dict(parameters)},
        "params": {},
    }
    parse_body(body)
    return body


def normalize_answer(text: str) -> str:
    """An answer compared loosely: case, spacing and a final full stop do not count."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def conversation(body: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of a body built by :func:`build_body`."""
    return parse_body(body)[0]


def up_to_last_question(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation cut after its last user turn (test_gen rows end with the answer)."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    return list(messages) if last_user is None else list(messages[: last_user + 1])


def parse_body(body: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate a scoring body; return the conversation and the generation parameters.

    Both the notebook's nested form ``[[messages]]`` and the flat ``[messages]`` are taken.
    """
    if not isinstance(body, dict):
        raise BadScoringBody("the body must be a JSON object with an 'input_data' field")
    data = body.get("input_data")
    if not isinstance(data, dict):
        raise BadScoringBody("field 'input_data' is missing or not an object")
    conversations = data.get("input_string")
    if not isinstance(conversations, list) or not conversations:
        raise BadScoringBody("field 'input_data.input_string' must be a non-empty list")
    if all(isinstance(item, list) for item in conversations):
        if len(conversations) != 1:
            raise BadScoringBody(
                f"field 'input_data.input_string' holds {len(conversations)} conversations; "
                "chat-completion scores one conversation per request"
            )
        messages = conversations[0]
        prefix = "input_data.input_string[0]"
    else:
        messages = conversations
        prefix = "input_data.input_string"
    if not messages:
        raise BadScoringBody(f"field '{prefix}' holds no message")
    for i, message in enumerate(messages):
        problem = message_problem(message, f"{prefix}[{i}]")
        if problem:
            raise BadScoringBody(problem)
    return messages, _parameters(data.get("parameters"))


def _parameters(raw: Any) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise BadScoringBody("field 'input_data.parameters' must be an object")
    parameters: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"input_data.parameters.{key}"
        if key not in GENERATION_PARAMETERS:
            raise BadScoringBody(
                f"field '{where}' is not supported; allowed: "
                + ", ".join(sorted(GENERATION_PARAMETERS))
            )
        kind, low, high = GENERATION_PARAMETERS[key]
        if kind is bool:
            if not isinstance(value, bool):
                raise BadScoringBody(f"field '{where}' must be true or false")
            parameters[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadScoringBody(f"field '{where}' must be a number")
        if kind is int and int(value) != value:
            raise BadScoringBody(f"field '{where}' must be a whole number")
        if not low <= value <= high:
            raise BadScoringBody(f"field '{where}' is {value}; allowed: {low:g} to {high:g}")
        parameters[key] = kind(value)
    return parameters


def reply_body(text: str) -> dict[str, str]:
    """What an endpoint answers for generated ``text``."""
    return {"output": text}


def read_reply(body: str) -> str:
    """The assistant text of a 200 answer; BadReply when the answer breaks the contract.

    >>> read_reply('{"output": "Oslo."}')
    'Oslo.'
    """
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        raise BadReply(BAD_REPLY, "200 but the body is not JSON") from None
    if data == {}:
        raise BadReply(
            CONTENT_FILTERED, "answered 200 with an empty object: the reply was content-filtered"
        )
    if not isinstance(data, dict) or "output" not in data:
        raise BadReply(BAD_REPLY, f"200 but no 'output' field (got {type(data).__name__})")
    if not isinstance(data["output"], str):
        raise BadReply(
            BAD_REPLY, f"200 but 'output' is a {type(data['output']).__name__}, not text"
        )
    if not data["output"].strip():
        raise BadReply(BAD_REPLY, "200 but 'output' is empty")
    return data["output"]
