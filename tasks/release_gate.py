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

# (figure, label, whether lower is better)
FIGURES = (
    ("eval_loss", "test_sft loss", True),
    ("exact_answer_rate", "exact-answer rate", False),
)
SAME_DATA_TAGS = ("test-sha256", "test-gen-sha256")


class GateMargins(BaseModel):
    """How much worse than a rival the new model may be and still pass."""

    loss: float = 0.0
    exact_answer: float = 0.0


class Contender(BaseModel):
    """A model's figures on the held-out data the gate compares on."""

    label: str = Field(description="What the figures are of, e.g. 'production (model:3)'")
    figures: dict[str, float] = Field(default_factory=dict)
    source: str = Field("", description="Where the figures come from (the job, a re-score)")


class GateDecision(BaseModel):
    """The gate's verdict, with every figure and comparison that made it."""

    passed: bool
    new: Contender
    rivals: list[Contender]
    reasons: list[str] = Field(description="One line per comparison, pass or fail")
    same_data: bool = True

    def tags(self) -> dict[str, str]:
        """The figures as model tags (the verdict stays with the version)."""
        tags = {"chatft-gate": "passed" if self.passed else "failed"}
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
    """Whether two models were evaluated on byte-identical held-out files."""
    return all(
        new_tags.get(tag) and new_tags.get(tag) == production_tags.get(tag)
        for tag in SAME_DATA_TAGS
    )


def judge(new: Contender, rivals: list[Contender], margins: GateMargins) -> GateDecision:
    """Pass only when ``new`` is at least as good as every rival on every figure, within
    the margins. A missing figure fails: an unknown comparison is not a win."""
    reasons: list[str] = []
    passed = True
    for key, label, lower_better in FIGURES:
        margin = margins.loss if lower_better else margins.exact_answer
        mine = new.figures.get(key)
        for rival in rivals:
            theirs = rival.figures.get(key)
            if mine is None or theirs is None:
                passed = False
                reasons.append(f"FAIL {label}: not known for "
                               f"{new.label if mine is None else rival.label}")
                continue
            ok = mine <= theirs + margin if lower_better else mine >= theirs - margin
            passed &= ok
            sign = "<=" if lower_better else ">="
            bound = theirs + margin if lower_better else theirs - margin
            reasons.append(
                f"{'pass' if ok else 'FAIL'} {label}: new {mine:.4f} {sign} {bound:.4f} "
                f"({rival.label} {theirs:.4f}, margin {margin:g})"
            )
    return GateDecision(passed=passed, new=new, rivals=rivals, reasons=reasons)


def job_figures(evaluation: dict[str, float], prefix: str = "") -> dict[str, float]:
    """The gate's figures out of a job's evaluation metrics (``base_`` for the base model)."""
    return {key: evaluation[prefix + key] for key, _, _ in FIGURES if prefix + key in evaluation}
