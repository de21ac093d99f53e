"""A registered model read with transformers alone is the model MLflow reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from workspaces.local.mlflow_models import load_components, plain_layout


def test_the_plain_layout_loads_the_same_model_and_tokenizer_as_mlflow(standin_mlflow_model):
    import mlflow
    import torch

    assert plain_layout(standin_mlflow_model) is not None
    model, tokenizer = load_components(standin_mlflow_model)
    theirs = mlflow.transformers.load_model(str(standin_mlflow_model), return_type="components")
    assert type(model) is type(theirs["model"])
    mine, other = model.state_dict(), theirs["model"].state_dict()
    assert mine.keys() == other.keys()
    assert all(torch.equal(mine[k], other[k]) and mine[k].dtype == other[k].dtype for k in mine)
    text = [{"role": "user", "content": "What is 2 plus 3?"}]
    ids = tokenizer.apply_chat_template(text, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    assert torch.equal(ids["input_ids"], theirs["tokenizer"].apply_chat_template(
        text, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"])
    with torch.no_grad():
        greedy = model.generate(**ids, max_new_tokens=8, do_sample=False)
        expected = theirs["model"].generate(**ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(greedy, expected)


def test_any_other_layout_goes_through_mlflow(standin_mlflow_model, tmp_path):
    def variant(name: str, change) -> Path:  # noqa: ANN001
        folder = tmp_path / name
        shutil.copytree(standin_mlflow_model, folder)
        spec = yaml.safe_load((folder / "MLmodel").read_text())
        change(spec["flavors"]["transformers"], folder)
        (folder / "MLmodel").write_text(yaml.safe_dump(spec))
        return folder

    adapter = variant("peft", lambda f, _: f.update(peft_adaptor="peft"))
    on_hub = variant("hub", lambda f, folder: shutil.rmtree(folder / "model"))
    more = variant("processor", lambda f, _: f.update(components=["tokenizer", "processor"]))
    for folder in (adapter, on_hub, more):
        assert plain_layout(folder) is None, folder.name
    assert plain_layout(tmp_path / "missing") is None
    # An adapter is never served as its bare base model: MLflow's loader reads it, and
    # here finds no adapter to read.
    with pytest.raises(Exception) as raised:
        load_components(adapter)
    assert any("/mlflow/" in str(entry.path) for entry in raised.traceback)
