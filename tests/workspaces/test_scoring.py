"""The chat-completion scoring contract: bodies built, validated and parsed; replies read."""

from __future__ import annotations

import pytest

from tasks.endpoint_probes import classify_reply
from tasks.endpoints import reply_text
from workspaces.interface import ScoreResponse
from workspaces.scoring import BadReply, BadScoringBody, build_body, parse_body, read_reply


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "JSON object"),
        ({"input_data": {"input_string": []}}, "non-empty list"),
        ({"input_data": {"input_string": [[], []]}}, "2 conversations"),
        (
            {
                "input_data": {
                    "input_string": [[{"role": "user", "content": "x"}]],
                    "parameters": {"max_new_tokens": 0},
                }
            },
            "max_new_tokens' is 0",
        ),
        (
            {
                "input_data": {
                    "input_string": [[{"role": "user", "content": "x"}]],
                    "parameters": {"beam_me_up": 1},
                }
            },
            "not supported",
        ),
        (
            {
                "input_data": {
                    "input_string": [[{"role": "user", "content": "x"}]],
                    "parameters": {"do_sample": "yes"},
                }
            },
            "true or false",
        ),
    ],
)
def test_scoring_body_errors_name_the_field(body, message):
    with pytest.raises(BadScoringBody, match=message):
        parse_body(body)


def test_flat_and_nested_conversations_are_both_accepted():
    messages = [{"role": "user", "content": "x"}]
    assert parse_body({"input_data": {"input_string": messages}})[0] == messages
    assert parse_body({"input_data": {"input_string": [messages]}})[0] == messages


@pytest.mark.parametrize(("body", "kind"), [
    ("{}", "content_filtered"),
    ('{"output": ""}', "bad_reply"),
    ('{"output": 3}', "bad_reply"),
    ('["Hello"]', "bad_reply"),
    ("<html>", "bad_reply"),
])
def test_replies_outside_the_contract_are_refused_with_a_kind(body, kind):
    with pytest.raises(BadReply) as caught:
        read_reply(body)
    assert caught.value.kind == kind


@pytest.mark.parametrize("body", ['{"output": "Oslo."}', '["Oslo."]', "{}", '{"output": ""}'])
def test_the_flow_and_the_smoke_test_agree_on_every_reply(body):
    # The defect: reply_text took ["text"] as a reply while the smoke test called it bad_reply.
    response = ScoreResponse(status_code=200, body=body, latency_ms=1)
    try:
        text = reply_text(response)  # what the flow prints as the reply
    except BadReply as exc:
        assert classify_reply(response)[0] == exc.kind
    else:
        assert classify_reply(response) == ("ok", "")
        assert text == "Oslo."


def test_built_bodies_pass_the_servers_validation():
    messages = [{"role": "user", "content": "What is the capital of Norway?"}]
    body = build_body(messages, {"max_new_tokens": 20, "do_sample": False})
    assert parse_body(body) == (messages, {"max_new_tokens": 20, "do_sample": False})
    with pytest.raises(BadScoringBody, match="temperature' is 5"):
        build_body(messages, {"temperature": 5})
