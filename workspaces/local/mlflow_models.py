"""Load a registered MLflow transformers model's weights and tokenizer into a process.

``mlflow.transformers.load_model`` imports MLflow (about 3 s) and reads more than a model
server needs; an endpoint server or the scorer starts once per deployment or gate, and in
the suite that is hundreds of times. A model folder that MLflow wrote with its weights
inside (``model_binary``) and a tokenizer as its only component is read here with
transformers alone, as MLflow would read it: the class it names, its dtype, the tokenizer
folder. Any other folder (a PEFT adapter, weights left on the hub, an image processor...)
goes through MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def plain_layout(path: Path) -> dict[str, Any] | None:
    """The transformers flavor of the model in ``path`` when it is the plain layout: weights
    in the folder and a tokenizer as the only component; None otherwise."""
    try:
        flavors = yaml.safe_load((path / "MLmodel").read_text()).get("flavors") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    flavor = flavors.get("transformers")
    if not isinstance(flavor, dict) or flavor.get("peft_adaptor"):
        return None
    binary = flavor.get("model_binary")
    if not binary or not (path / binary / "config.json").is_file():
        return None
    if list(flavor.get("components") or []) != ["tokenizer"]:
        return None
    if not (path / "components" / "tokenizer").is_dir():
        return None
    return flavor


def load_components(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of the MLflow transformers model saved in ``path``."""
    flavor = plain_layout(path)
    if flavor is None:
        import mlflow

        components = mlflow.transformers.load_model(str(path), return_type="components")
        return components["model"], components["tokenizer"]
    import torch
    import transformers

    model_class = getattr(transformers, str(flavor.get("pipeline_model_type") or ""), None)
    if model_class is None or not hasattr(model_class, "from_pretrained"):
        model_class = transformers.AutoModelForCausalLM
    dtype = str(flavor.get("torch_dtype") or "").removeprefix("torch.")
    kwargs = {"dtype": getattr(torch, dtype)} if isinstance(
        getattr(torch, dtype, None), torch.dtype) else {}
    model = model_class.from_pretrained(path / flavor["model_binary"], **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / "components" / "tokenizer")
    return model, tokenizer
