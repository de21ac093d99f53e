"""The promotion gate's rules, figure by figure (tasks/release_gate.py)."""

from __future__ import annotations

from tasks.release_gate import Contender, GateMargins, job_figures, judge, same_held_out_data
from workspaces.interface import JobMetrics

NEW = Contender(label="new (m:2)", figures={"eval_loss": 0.30, "exact_answer_rate": 0.40})


def _production(loss: float, exact: float) -> Contender:
    return Contender(label="production (m:1)",
                     figures={"eval_loss": loss, "exact_answer_rate": exact})


def test_a_model_at_least_as_good_as_production_on_both_figures_passes():
    decision = judge(NEW, [_production(0.30, 0.40)], GateMargins())
    assert decision.passed
    assert [r.split(":")[0] for r in decision.reasons] == [
        "pass test_sft loss", "pass exact-answer rate"]


def test_a_worse_loss_or_fewer_exact_answers_fails_unless_the_margin_allows_it():
    worse_loss = judge(NEW, [_production(0.29, 0.40)], GateMargins())
    assert not worse_loss.passed
    assert "FAIL test_sft loss: new 0.3000, needs <= 0.2900" in worse_loss.reasons[0]
    assert judge(NEW, [_production(0.29, 0.40)], GateMargins(loss=0.02)).passed
    fewer = judge(NEW, [_production(0.31, 0.45)], GateMargins())
    assert not fewer.passed and fewer.reasons[1].startswith("FAIL exact-answer rate")
    assert judge(NEW, [_production(0.31, 0.45)], GateMargins(exact_answer=0.05)).passed


def test_a_production_model_without_figures_fails_and_a_base_without_them_is_skipped():
    unknown = Contender(label="production (m:1)", source="other held-out files")
    decision = judge(NEW, [unknown], GateMargins())
    assert not decision.passed
    assert decision.reasons == ["FAIL production (m:1): nothing to compare (other held-out files)"]
    base = Contender(label="base", required=False, source="not evaluated by the pipeline")
    decision = judge(NEW, [base, _production(0.31, 0.30)], GateMargins())
    assert decision.passed
    assert decision.reasons[0] == "skip base: not measured (not evaluated by the pipeline)"


def test_a_figure_only_one_side_has_fails_against_production():
    loss_only = Contender(label="production (m:1)", figures={"eval_loss": 0.5})
    decision = judge(NEW, [loss_only], GateMargins())
    assert not decision.passed
    assert "FAIL exact-answer rate: not known for production (m:1)" in decision.reasons


def test_a_job_that_reported_nothing_is_refused_against_production_only():
    production = _production(0.3, 0.4)
    decision = judge(Contender(label="new"), [production], GateMargins())
    assert not decision.passed
    assert decision.reasons[0] == "FAIL test_sft loss: not known for new"
    # a first release (nothing in production) where the base was not measured either
    first = judge(Contender(label="new"), [Contender(label="base", required=False)],
                  GateMargins())
    assert first.passed and first.reasons[-1].startswith("note: nothing could be compared")


def test_figures_come_from_the_evaluation_then_the_finetune_steps_loss():
    local = JobMetrics(evaluation={"eval_loss": 0.3, "exact_answer_rate": 0.4,
                                   "base_eval_loss": 0.5, "base_exact_answer_rate": 0.1})
    assert job_figures(local) == {"eval_loss": 0.3, "exact_answer_rate": 0.4}
    assert job_figures(local, "base_") == {"eval_loss": 0.5, "exact_answer_rate": 0.1}
    # Azure's pipeline logs the held-out loss in its finetune step
    azure = JobMetrics(finetune={"eval_loss": 1.3}, evaluation={"perplexity": 3.7})
    assert job_figures(azure) == {"eval_loss": 1.3} and job_figures(azure, "base_") == {}


def test_held_out_data_are_the_same_only_when_both_test_files_and_truncation_match():
    tags = {"test-sha256": "a", "test-gen-sha256": "b", "max-seq-length": "512"}
    assert same_held_out_data(tags, dict(tags))
    assert not same_held_out_data(tags, {**tags, "test-gen-sha256": "c"})
    # the same files cut at another max_seq_length score other tokens: not like for like
    assert not same_held_out_data(tags, {**tags, "max-seq-length": "1024"})
    assert not same_held_out_data(tags, {k: v for k, v in tags.items() if k != "max-seq-length"})
    assert not same_held_out_data({}, {})


def test_the_verdict_is_kept_as_model_tags():
    decision = judge(NEW, [_production(0.25, 0.40)], GateMargins())
    tags = decision.tags()
    assert tags["chatft-gate"] == "failed"
    assert tags["chatft-gate-eval_loss"] == "0.3000"
    assert tags["chatft-gate-production-eval_loss"] == "0.2500"
    assert tags["chatft-gate-reason"].startswith("FAIL test_sft loss")
    assert all(len(v) <= 256 for v in tags.values())
