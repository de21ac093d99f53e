"""The promotion gate: does a new model beat the base model and the model in production?

Both are judged on the same held-out data: the figures each fine-tune job recorded on its
test files, when the files are the same (by sha256); otherwise the production model is
scored again, on the new request's held-out split, with the same code as the job's
evaluation (a workspace that cannot do that leaves the gate unable to compare, and the
model is not released). Two figures count: test_sft loss (lower is better) and the
exact-answer rate on held-out test_gen questions (higher is better), each with a margin.

Example::

    decision = judge(new, production, margins=GateMargins(loss=0.0, exact_answer=0.0))
    decision.passed, decision.reasons
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from workspaces.interface import JobMetrics

# (figure, label, whether lower is better)
FIGURES = (
    ("eval_loss", "test_sft loss", True),
    ("exact_answer_rate", "exact-answer rate", False),
)
# Figures compare like for like only on byte-identical held-out files cut at the same
# max_seq_length (a longer cut scores other tokens).
SAME_DATA_TAGS = ("test-sha256", "test-gen-sha256", "max-seq-length")


class GateMargins(BaseModel):
    """How much worse than a rival the new model may be and still pass."""

    loss: float = 0.0
    exact_answer: float = 0.0


class Contender(BaseModel):
    """A model's figures on the held-out data the gate compares on."""

    label: str = Field(description="What the figures are of, e.g. 'production (model:3)'")
    figures: dict[str, float] = Field(default_factory=dict)
    source: str = Field("", description="Where the figures come from (the job, a re-score)")
    required: bool = Field(
        True, description="A comparison that cannot be made fails the gate (the production "
        "model); False: it is reported and skipped (the base model, which Azure's pipeline "
        "does not evaluate)",
    )


class GateDecision(BaseModel):
    """The gate's verdict, with every figure and comparison that made it."""

    passed: bool
    new: Contender
    rivals: list[Contender]
    reasons: list[str] = Field(description="One line per comparison, pass or fail")
    margins: GateMargins = Field(default_factory=GateMargins)

    def tags(self) -> dict[str, str]:
        """The figures as model tags (the verdict stays with the version)."""
        tags = {"chatft-gate": "passed" if self.passed else "failed",
                "chatft-gate-loss-margin": f"{self.margins.loss:g}",
                "chatft-gate-exact-answer-margin": f"{self.margins.exact_answer:g}"}
        for key, _, _ in FIGURES:
            if key in self.new.figures:
                tags[f"chatft-gate-{key}"] = f"{self.new.figures[key]:.4f}"
            for rival in self.rivals:
                if key in rival.figures:
                    name = rival.label.split(" ", 1)[0]
                    tags[f"chatft-gate-{name}-{key}"] = f"{rival.figures[key]:.4f}"
        failed = [r for r in self.reasons if r.startswith("FAIL")]
        if failed:
            tags["chatft-gate-reason"] = "; ".join(failed)[:250]
        return tags


def same_held_out_data(new_tags: dict[str, str], production_tags: dict[str, str]) -> bool:
    """Whether two models were evaluated on byte-identical held-out files, cut at the same
    max_seq_length."""
    return all(
        new_tags.get(tag) and new_tags.get(tag) == production_tags.get(tag)
        for tag in SAME_DATA_TAGS
    )


def judge(new: Contender, rivals: list[Contender], margins: GateMargins) -> GateDecision:
    """Pass only when ``new`` is at least as good as every rival on every figure both were
    measured on, within the margins.

    A figure measured for one side only cannot be compared: against a required rival that
    fails (an unknown comparison is not a win), against another it is reported. A required
    rival with no figure in common with ``new`` fails the gate.
    """
    reasons: list[str] = []
    passed = True
    for rival in rivals:
        compared = 0
        for key, label, lower_better in FIGURES if rival.figures else ():
            margin = margins.loss if lower_better else margins.exact_answer
            mine, theirs = new.figures.get(key), rival.figures.get(key)
            if mine is None and theirs is None:
                continue
            if mine is None or theirs is None:
                unknown = new.label if mine is None else rival.label
                if rival.required:
                    passed = False
                    reasons.append(f"FAIL {label}: not known for {unknown}")
                else:
                    reasons.append(f"skip {label}: not known for {unknown}, not compared")
                continue
            compared += 1
            ok = mine <= theirs + margin if lower_better else mine >= theirs - margin
            passed &= ok
            sign = "<=" if lower_better else ">="
            bound = theirs + margin if lower_better else theirs - margin
            reasons.append(
                f"{'pass' if ok else 'FAIL'} {label}: new {mine:.4f}, needs {sign} {bound:.4f} "
                f"({rival.label} {theirs:.4f}, margin {margin:g})"
            )
        if not compared:
            why = rival.source or "no figure in common"
            if rival.required:
                passed = False
                reasons.append(f"FAIL {rival.label}: nothing to compare ({why})")
            else:
                reasons.append(f"skip {rival.label}: not measured ({why})")
    if not any(r.startswith(("pass", "FAIL")) for r in reasons):
        # Only rivals that may be skipped, and all were: a first release where the base
        # model was not measured. Nothing says the model is worse; it is released.
        reasons.append("note: nothing could be compared (no model in production, and no "
                       "figure of the base model); the model is released as the first one")
    return GateDecision(passed=passed, new=new, rivals=rivals, reasons=reasons,
                        margins=margins)


def job_figures(metrics: JobMetrics, prefix: str = "") -> dict[str, float]:
    """The gate's figures out of a job's metrics (``base_`` for the base model).

    The evaluation step's figures first; a test loss only the finetune step logged (Azure's
    pipeline evaluates the held-out split in its finetune step) counts for the tuned model.
    """
    figures = {key: metrics.evaluation[prefix + key] for key, _, _ in FIGURES
               if prefix + key in metrics.evaluation}
    if not prefix and "eval_loss" not in figures and "eval_loss" in metrics.finetune:
        figures["eval_loss"] = metrics.finetune["eval_loss"]
    return figures
