"""Prefect flows: each composes tasks and decides; the modules around them serve them.

The flows, one module each (the entrypoints of prefect.yaml):

- ``finetune_and_deploy``: steps 1-8 (9 optional) of docs/procedure.md;
- ``smoke_test_endpoints``: scheduled; scores every managed endpoint, settles abandoned
  releases;
- ``teardown_idle_endpoints``: scheduled; deletes managed endpoints nobody used;
- ``release_control``: a person's action on an endpoint's release (status, promote, abort,
  roll back).

The modules they are made of:

- ``parameters``: the typed request of each flow, which is its UI form and its ``--help``;
- ``preflight``: finetune_and_deploy's checks before anything is made, and its plan;
- ``deploy_step``: its step 7 for a new endpoint (also a canary's first release);
- ``rollout``: its step 7 as a canary release onto a live endpoint (the release's steps);
- ``release_actions``: release_control's promote, abort and roll back, on the same steps;
- ``finetune_result``: what finetune_and_deploy returns, and how its command line prints it;
- ``unchanged_rerun``: its command line's answer to a re-run nothing has changed since
  (a receipt of the last run, checked before Prefect is imported);
- ``cli``: each flow's command line, made from its parameters;
- ``commands``: ``chatft``, the project's command line;
- ``reported_failure``: a failure a flow already explained is logged once, without a
  traceback;
- ``startup``: the settings every run needs, applied below before any flow is imported.
"""

from flows.startup import apply_run_settings

# Before any flow module imports Prefect: the settings every run needs, however started.
apply_run_settings()
