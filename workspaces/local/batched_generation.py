"""Batched generation for one deployment: requests that arrive together share each step.

A :class:`Batcher` runs one thread per instance of a deployment. An idle instance takes
the requests waiting (its share of them when several instances are idle, so requests are
spread over instances before they are batched); a busy instance takes newcomers into its
running batch between two decoding steps, up to ``max_batch`` requests. Each decoding
step is one forward pass of the model for the whole batch.

The batch is left-padded: every row's tokens end in the same column, so one new token per
row is one new column of the key/value cache. Each row keeps its own position ids (its
tokens counted from 0, padding not counted) and the attention mask hides the padding, so
a row's tokens attend to what they would attend to alone: greedy outputs equal those of
the request served alone.

Each request keeps its own parameters (``max_new_tokens``, ``do_sample``,
``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``) and its own stopping: a
row that ends (a stop token, its ``max_new_tokens``, its deadline) is answered at once
and leaves the batch, and the padding columns no remaining row needs are dropped, so a
request that ended costs the others nothing more.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from workspaces.local.thread_budget import ThreadBudget

logger = logging.getLogger(__name__)

# What a request that names no max_new_tokens gets (the contract allows 1 to 2048).
DEFAULT_MAX_NEW_TOKENS = 200


@dataclass(frozen=True)
class Decoding:
    """How one request chooses its tokens and when it stops."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def decoding_for(parameters: dict[str, Any], generation_config: Any = None) -> Decoding:
    """A request's parameters over the model's generation config, as ``generate`` merges them.

    >>> decoding_for({"do_sample": True, "temperature": 0}).do_sample
    False
    """

    def pick(key: str, default: Any) -> Any:
        value = parameters.get(key)
        if value is None:
            value = getattr(generation_config, key, None)
        return default if value is None else value

    temperature = float(pick("temperature", 1.0))
    return Decoding(
        max_new_tokens=int(parameters.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
        # Temperature 0 asks for the most likely token: greedy, not a division by zero.
        do_sample=bool(pick("do_sample", False)) and temperature != 0,
        temperature=temperature,
        top_k=int(pick("top_k", 50)),
        top_p=float(pick("top_p", 1.0)),
        repetition_penalty=float(pick("repetition_penalty", 1.0)),
    )


@dataclass
class GenerationRequest:
    """One conversation to answer; ``future`` gets the assistant text or the model's error."""

    messages: list[dict[str, str]]
    decoding: Decoding
    deadline: float  # time.monotonic() past which generation stops where it is
    future: Future = field(default_factory=Future)


@dataclass
class _Row:
    """A request inside a running batch."""

    request: GenerationRequest
    prompt: list[int]
    generated: list[int] = field(default_factory=list)

    def last_position(self) -> int:
        """The position id of the row's last token (padding is not counted)."""
        return len(self.prompt) + len(self.generated) - 1

    def ended(self, stop_ids: frozenset[int], now: float) -> bool:
        """A stop token, max_new_tokens, the deadline, or nobody waits for the answer."""
        return (
            (bool(self.generated) and self.generated[-1] in stop_ids)
            or len(self.generated) >= self.request.decoding.max_new_tokens
            or now >= self.request.deadline
            or self.request.future.cancelled()
        )


def _settle(future: Future, result: str | None = None, error: Exception | None = None) -> None:
    """Answer a future once; one that was cancelled (its caller left) takes nothing."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _choose_tokens(logits: Any, rows: list[_Row]) -> list[int]:
    """The next token of each row from its last logits: repetition penalty, then greedy or
    sampling with the row's temperature, top_k and top_p (in ``generate``'s order)."""
    import torch

    for i, row in enumerate(rows):
        penalty = row.request.decoding.repetition_penalty
        if penalty != 1.0:
            ids = torch.tensor(row.prompt + row.generated)
            score = logits[i].gather(0, ids)
            score = torch.where(score < 0, score * penalty, score / penalty)
            logits[i] = logits[i].scatter(0, ids, score)
    chosen = logits.argmax(dim=-1).tolist()
    for i, row in enumerate(rows):
        if row.request.decoding.do_sample:
            chosen[i] = _sample(logits[i], row.request.decoding)
    return chosen


def _sample(scores: Any, decoding: Decoding) -> int:
    import torch

    scores = scores.unsqueeze(0)
    if decoding.temperature != 1.0:
        scores = scores / decoding.temperature
    if decoding.top_k != 0:
        k = min(max(decoding.top_k, 1), scores.shape[-1])
        threshold = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < threshold, -math.inf)
    if decoding.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - decoding.top_p)
        drop[..., -1:] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return int(torch.multinomial(scores.softmax(dim=-1), 1))


class _Batch:
    """The rows an instance generates for, their key/value cache and attention mask.

    Rows are left-padded: column j of the mask and of the cache is the same step for every
    row, and a row's real tokens are the last columns of its mask.
    """

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Any = None

    def add(self, rows: list[_Row], cache: Any, mask: Any) -> None:
        """Merge rows prefilled together into the batch, padding the shorter side left."""
        import torch
        from torch.nn.functional import pad

        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for ours, theirs in zip(self.cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                mine, other = getattr(ours, name), getattr(theirs, name)
                mine = pad(mine, (0, 0, width - mine.shape[2], 0))
                other = pad(other, (0, 0, width - other.shape[2], 0))
                setattr(ours, name, torch.cat([mine, other]))
        self.mask = torch.cat([pad(self.mask, (width - self.mask.shape[1], 0)),
                               pad(mask, (width - mask.shape[1], 0))])
        self.rows.extend(rows)

    def keep(self, indices: list[int]) -> None:
        """Keep these rows only, and drop the padding columns no remaining row needs."""
        import torch

        if not indices:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(indices)
        self.mask = self.mask[index]
        # Rows are left-padded, so the columns no row uses are the first ones.
        unused = int(self.mask.any(dim=0).int().argmax())
        self.mask = self.mask[:, unused:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, unused:]
            layer.values = layer.values[index, :, unused:]
        self.rows = [self.rows[i] for i in indices]


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Input ids, attention mask and position ids of prompts padded on the left."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    # As generate does: positions count real tokens from 0; padding gets a harmless 1.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return ids, mask, positions


class Batcher:
    """Generates for one deployment's requests in batches, one thread per instance."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_ids: list[int],
        instances: int,
        max_batch: int,
        tokenizer_lock: threading.Lock | None = None,
        thread_role: str | None = None,
    ) -> None:
        """Start ``instances`` threads, each generating for up to ``max_batch`` requests at
        once; a row ends at a token of ``stop_ids``. Returns once every instance waits.

        With ``thread_role``, each instance takes its share of the cores (thread_budget.py)
        under that role before each step; without, torch's own count."""
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(stop_ids)
        self.instances = instances
        self.max_batch = max_batch
        self.thread_role = thread_role
        # A fast tokenizer must not be called from two threads at once ("Already borrowed").
        self.tokenizer_lock = tokenizer_lock or threading.Lock()
        self.pad_id = next(
            (i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0
        )
        accepted = inspect.signature(model.forward).parameters
        # Recent transformers name the key/value cache ``cache``, older ones past_key_values.
        self._cache_argument = "cache" if "cache" in accepted else "past_key_values"
        self._keep_logits = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self._waiting: deque[GenerationRequest] = deque()
        self._changed = threading.Condition()
        self._idle = 0
        self._closed = False
        self.busy = 0  # instances generating now
        self._batches: dict[int, _Batch] = {}  # each busy instance's batch, by thread id
        self._threads = [
            threading.Thread(target=self._serve, name=f"instance-{number}", daemon=True)
            for number in range(instances)
        ]
        for thread in self._threads:
            thread.start()
        with self._changed:
            # Ready when every instance waits: the first requests then spread over all.
            self._changed.wait_for(lambda: self._idle == instances, timeout=30)

    def submit(
        self,
        messages: list[dict[str, str]],
        parameters: dict[str, Any],
        max_time: float,
    ) -> Future:
        """Queue a conversation; the future answers the assistant text (or the model's error).

        Generation stops ``max_time`` seconds from now, where it is.
        """
        request = GenerationRequest(
            messages=messages,
            decoding=decoding_for(parameters, getattr(self.model, "generation_config", None)),
            deadline=time.monotonic() + max_time,
        )
        with self._changed:
            if self._closed:
                raise RuntimeError("the deployment was deleted; its model no longer generates")
            self._waiting.append(request)
            self._changed.notify_all()
        return request.future

    @property
    def generating(self) -> int:
        """Requests in the running batches."""
        return sum(len(batch.rows) for batch in list(self._batches.values()))

    @property
    def waiting(self) -> int:
        """Requests queued for a place in a batch."""
        return len(self._waiting)

    def close(self, wait_s: float = 0.0) -> None:
        """Stop taking requests; instances finish what they hold, then their threads end.

        ``wait_s`` waits that long for them to end: a process must not exit while one is
        inside torch (its C++ runtime aborts the exit).
        """
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _serve(self) -> None:
        # One budget per instance thread: torch's thread count is the calling thread's.
        budget = ThreadBudget.from_env(self.thread_role) if self.thread_role else None
        while (requests := self._take(self.max_batch, wait=True)) is not None:
            try:
                self._generate_batch(requests, budget)
            finally:
                with self._changed:
                    self.busy -= 1

    def _take(self, room: int, wait: bool) -> list[GenerationRequest] | None:
        """Requests for an instance: an idle one waits for its share, a busy one takes what
        waits only when no instance is idle. None once closed with nothing left."""
        with self._changed:
            if not wait and (self._idle or not self._waiting):
                return []
            if wait:
                self._idle += 1
                self._changed.notify_all()
                while not self._waiting and not self._closed:
                    self._changed.wait()
                self._idle -= 1
                if not self._waiting:
                    return None
                self.busy += 1
            share = math.ceil(len(self._waiting) / (self._idle + 1)) if wait else room
            return [self._waiting.popleft() for _ in range(min(room, share, self.waiting))]

    def _generate_batch(self, requests: list[GenerationRequest],
                        budget: ThreadBudget | None = None) -> None:
        """Generate for ``requests`` and for every request that joins them, until each is
        answered: the one place where an instance starts generating."""
        import torch

        batch = self._batches[threading.get_ident()] = _Batch()
        try:
            with torch.inference_mode():
                while requests or batch.rows:
                    if budget is not None:
                        budget.apply(sharers=self.busy)
                    if requests:
                        self._join(batch, requests)
                    if batch.rows:
                        self._decode_step(batch)
                    requests = self._take(self.max_batch - len(batch.rows), wait=False)
        except Exception as exc:  # the model failed: each request it held gets the error
            logger.exception("generation failed for %d requests", len(batch.rows) + len(requests))
            for row in batch.rows:
                _settle(row.request.future, error=exc)
            for request in requests:
                _settle(request.future, error=exc)
        finally:
            del self._batches[threading.get_ident()]

    def _join(self, batch: _Batch, requests: list[GenerationRequest]) -> None:
        """Prefill newcomers in one forward pass, choose their first tokens, add them."""
        rows = []
        for request in requests:
            try:
                with self.tokenizer_lock:
                    prompt = self.tokenizer.apply_chat_template(
                        request.messages, add_generation_prompt=True, return_dict=True
                    )["input_ids"]
            except Exception as exc:  # a conversation the chat template refuses
                _settle(request.future, error=exc)
                continue
            rows.append(_Row(request, list(prompt)))
        if rows:
            from transformers import DynamicCache

            ids, mask, positions = _left_padded([row.prompt for row in rows], self.pad_id)
            cache = DynamicCache()
            logits = self._forward(ids, mask, positions, cache)
            self._extend(rows, logits)
            batch.add(rows, cache, mask)
        # Held by the batch now (or answered): a failure from here on answers them there.
        requests.clear()
        self._answer_ended(batch)

    def _decode_step(self, batch: _Batch) -> None:
        """One forward pass for every row's last token; one new token per row."""
        import torch
        from torch.nn.functional import pad

        ids = torch.tensor([[row.generated[-1]] for row in batch.rows])
        positions = torch.tensor([[row.last_position()] for row in batch.rows])
        batch.mask = pad(batch.mask, (0, 1), value=1)
        logits = self._forward(ids, batch.mask, positions, batch.cache)
        self._extend(batch.rows, logits)
        self._answer_ended(batch)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        output = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: cache},
            **self._keep_logits,
        )
        return output.logits[:, -1, :].float()

    def _extend(self, rows: list[_Row], logits: Any) -> None:
        chosen = _choose_tokens(logits, rows)
        for row, token in zip(rows, chosen, strict=True):
            row.generated.append(token)

    def _answer_ended(self, batch: _Batch) -> None:
        """Answer the rows that ended and take them out of the batch."""
        now = time.monotonic()
        ended = [row.ended(self.stop_ids, now) for row in batch.rows]
        if not any(ended):
            return
        done = [row for row, end in zip(batch.rows, ended, strict=True) if end]
        # Out of the batch first: whoever reads the answer sees the batch without it.
        batch.keep([index for index, end in enumerate(ended) if not end])
        for row in done:
            try:
                with self.tokenizer_lock:
                    text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            except Exception as exc:  # its answer failed, the batch's others did not
                _settle(row.request.future, error=exc)
            else:
                _settle(row.request.future, text.strip())
