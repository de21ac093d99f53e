"""The rules of a chat message, one home for the data files and the scoring contract.

A message is ``{"role": "user" | "assistant" | "system", "content": <text>}``. ultrachat
rows (``workspaces.ultrachat``) and scoring bodies (``workspaces.scoring``) both hold lists
of them; each reports a broken message in its own words around :func:`message_problem`.

Example::

    message_problem({"role": "bot", "content": "hi"}, "messages[0]")
    # "field 'messages[0].role' is 'bot'; allowed: user, assistant, system"
"""

from __future__ import annotations

from typing import Any

ROLES = ("user", "assistant", "system")


def message_problem(message: Any, field: str, require_text: bool = False) -> str | None:
    """What is wrong with one message, naming ``field``; None when it is a valid message.

    Args:
        message: one item of a conversation.
        field: where it sits, e.g. ``messages[2]`` or ``input_data.input_string[0][1]``.
        require_text: refuse content that is empty or only blanks (training data must
            say something; a scoring request may send an empty turn).
    """
    if not isinstance(message, dict):
        return f"field {field!r} must be an object with 'role' and 'content'"
    if message.get("role") not in ROLES:
        return f"field '{field}.role' is {message.get('role')!r}; allowed: {', '.join(ROLES)}"
    if not isinstance(message.get("content"), str):
        return f"field '{field}.content' must be a string"
    if require_text and not message["content"].strip():
        return f"field '{field}.content' is empty; give the text"
    return None
