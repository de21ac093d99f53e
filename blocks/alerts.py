"""Notifications out of the box: a failing smoke test sends a message to a webhook.

``ensure_smoke_test_alert()`` (run by ``make server-up``; safe to run again) makes sure
the Prefect server has

- the notification block ``custom-webhook/chatft-alerts``: created once with a
  placeholder URL, which the user replaces with their webhook (UI: Blocks ->
  chatft-alerts -> Edit). It is never overwritten afterwards, unless a URL is given
  (``CHATFT_ALERT_WEBHOOK_URL`` at ``server-up``);
- the automation ``chatft smoke test failed``: on every ``chatft.smoke-test.failed``
  event (one per failing endpoint) it sends the block a message naming the endpoint, the
  failure class of each deployment and a link to the smoke-test run; on every
  ``chatft.rollout.rolled-back`` (a canary release undone, by its run or by the smoke test
  after the run died) a message naming the deployment, the one restored and why; on
  ``chatft.release.held-too-long`` (a canary held for a person past the smoke test's
  limit, once per hold) a message naming it, since when and why. Kept in step with
  this file: an automation of that name is updated, never duplicated. It is enabled once
  the block holds a real URL (while it holds the placeholder, every failed smoke test
  would end in a failed delivery and a traceback in the server log): after filling in
  the URL, enable it in the UI or run ``make server-up`` again.

Any other notification block works too: point the automation's action at it in the UI.

    python -m blocks.alerts          # against PREFECT_API_URL
"""

from __future__ import annotations

import os
from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock

BLOCK_NAME = "chatft-alerts"
AUTOMATION_NAME = "chatft smoke test failed"
PLACEHOLDER_URL = "https://example.invalid/replace-with-your-webhook"
URL_ENV = "CHATFT_ALERT_WEBHOOK_URL"

# The events it sends: a failed smoke test, and a release rolled back (flows/rollout.py).
EVENTS = {"chatft.smoke-test.failed", "chatft.rollout.rolled-back",
          "chatft.release.held-too-long"}
SUBJECT = (
    "{% if event.event == 'chatft.rollout.rolled-back' %}Release rolled back{% elif "
    "event.event == 'chatft.release.held-too-long' %}Release held too long{% else %}"
    "Smoke test failed{% endif %}: {{ event.resource['prefect.resource.name'] }}"
)
# Jinja, rendered by the server when the event arrives; `flow_run` is the run the event
# came from (Prefect relates events emitted in a run to that run).
BODY = """\
{% if event.event == 'chatft.rollout.rolled-back' %}\
Endpoint {{ event.resource['prefect.resource.name'] }} \
({{ event.resource['chatft.workspace'] }} workspace): the release of deployment \
{{ event.payload.deployment }} was rolled back at \
{{ event.occurred.strftime('%Y-%m-%d %H:%M:%S UTC') }}; \
{{ event.payload.restored or 'no deployment' }} takes all traffic again.
Why: {{ event.payload.reason }}
Run: {{ flow_run|ui_url }}
{% elif event.event == 'chatft.release.held-too-long' %}\
Endpoint {{ event.resource['prefect.resource.name'] }} \
({{ event.resource['chatft.workspace'] }} workspace): the canary \
{{ event.payload.deployment }} of request {{ event.payload.request }} has been held for a \
person since {{ event.payload.since }} ({{ event.payload.hours }} h); \
{{ event.payload.serving }} serves production meanwhile.
Why it is held: {{ event.payload.reason }}
Promote or abort it: deployment release-control (docs/rollout.md, "Steering a release").
{% else %}\
Endpoint {{ event.resource['prefect.resource.name'] }} \
({{ event.resource['chatft.workspace'] }} workspace) failed its smoke test \
at {{ event.occurred.strftime('%Y-%m-%d %H:%M:%S UTC') }}.
Failure class: {{ event.resource['chatft.smoke-test.status'] }}
{% for f in event.payload.failures %}- deployment {{ f.deployment }}: {{ f.status }}: \
{{ f.reason }}
{% endfor %}\
Smoke-test run: {{ flow_run|ui_url }}
{% endif %}"""


def ensure_webhook_block(url: str | None = None) -> tuple[UUID, bool]:
    """(the block's id, whether its URL is filled in); created with ``url`` (or the
    placeholder) when missing."""
    try:
        block = CustomWebhookNotificationBlock.load(BLOCK_NAME)
        if url and block.url != url:
            block.url = url
            block.save(BLOCK_NAME, overwrite=True)
    except ValueError:  # no such block yet
        block = CustomWebhookNotificationBlock(
            name="chatft alerts",
            url=url or PLACEHOLDER_URL,
            method="POST",
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
        )
        block.save(BLOCK_NAME)
    assert block._block_document_id is not None
    return block._block_document_id, block.url != PLACEHOLDER_URL


def smoke_test_automation(block_id: UUID, enabled: bool = True) -> Automation:
    """The automation that sends a failed smoke test to the notification block ``block_id``."""
    return Automation(
        name=AUTOMATION_NAME,
        description="An endpoint managed by chat-finetune-flows did not answer its smoke "
        "test, or a release onto it was rolled back. Created by make server-up "
        "(blocks/alerts.py); edit block chatft-alerts to choose where the message goes.",
        enabled=enabled,
        trigger=EventTrigger(
            expect=EVENTS,
            match={"prefect.resource.id": "chatft.endpoint.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    )


def ensure_smoke_test_alert(url: str | None = None) -> tuple[UUID, UUID, bool]:
    """(block id, automation id, enabled), creating or updating each as needed."""
    block_id, url_set = ensure_webhook_block(url)
    wanted = smoke_test_automation(block_id, enabled=url_set)
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
    except ValueError:  # none yet
        return block_id, wanted.create().id, url_set
    wanted.id = existing.id
    wanted.update()
    return block_id, existing.id, url_set


def summary(block: UUID, automation: UUID, enabled: bool) -> str:
    """One line for ``up``: the block, the automation, and what to do when it is off."""
    return (f"Notification block custom-webhook/{BLOCK_NAME} ({block}); automation "
            f"{AUTOMATION_NAME!r} ({automation}) "
            + ("enabled" if enabled else
               "created disabled: fill in the block's URL (UI: Blocks -> chatft-alerts), then "
               f"enable the automation or run server-up again (or set {URL_ENV})"))


if __name__ == "__main__":
    print(summary(*ensure_smoke_test_alert(os.environ.get(URL_ENV) or None)))
