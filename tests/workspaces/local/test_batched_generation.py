"""Batched generation (issue #34): requests generated together answer as each would alone.

Most tests run a :class:`Batcher` in this process on the stand-in model, and hold its
tokenizer lock to decide which requests meet in one batch: an instance that took a request
waits for the lock before its first step, so whatever is queued meanwhile joins that
request's running batch at once. One test does the same over HTTP on a real endpoint
server, one with SmolLM2 itself (slow: it converts the GGUF).
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import register_model, serve
from workspaces.local.batched_generation import Batcher
from workspaces.local.endpoint_server import stop_token_ids
from workspaces.scoring import build_body, read_reply, up_to_last_question
from workspaces.ultrachat import SAMPLE_DIR, read_jsonl

GREEDY = {"do_sample": False}


def _questions(count: int) -> list[list[dict[str, str]]]:
    rows = read_jsonl(SAMPLE_DIR / "test_gen.jsonl", limit=count)
    return [up_to_last_question(r["messages"]) for r in rows]


def _load(folder):  # noqa: ANN001, ANN202 - a model folder; (model, tokenizer, stop ids)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, stop_token_ids(model, tokenizer)


@pytest.fixture(scope="module")
def standin(standin_dir):
    """The stand-in model, its tokenizer and stop ids, loaded once for the module."""
    return _load(standin_dir)


@pytest.fixture
def batcher_of(standin):
    """Batchers on the stand-in, closed when the test ends (a thread still generating at
    interpreter exit would abort it)."""
    made: list[Batcher] = []

    def make(instances: int = 1, max_batch: int = 16, stop_ids=None, gate=None) -> Batcher:  # noqa: ANN001
        model, tokenizer, stops = standin
        batcher = Batcher(model, tokenizer, stops if stop_ids is None else stop_ids,
                          instances=instances, max_batch=max_batch, tokenizer_lock=gate)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def _generate_alone(model, tokenizer, stop_ids, messages, parameters) -> str:  # noqa: ANN001
    """The reply ``model.generate`` gives the conversation on its own (no batch, no padding)."""
    import torch

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, **parameters, eos_token_id=stop_ids,
                                pad_token_id=tokenizer.pad_token_id)
    new = output[0][inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def _batched(batcher: Batcher, gate: threading.Lock, jobs: list[tuple[list, dict]]) -> list:
    """Submit ``jobs`` so that they share one batch; their futures, in order.

    With the gate held, the instance takes the first job and waits before prefilling it;
    the others queue meanwhile and join the first one's batch after its first step.
    """
    with gate:
        futures = [batcher.submit(*jobs[0], max_time=600)]
        deadline = time.monotonic() + 30
        while batcher.busy == 0:
            assert time.monotonic() < deadline, "no instance took the first request"
            time.sleep(0.01)
        futures += [batcher.submit(messages, parameters, max_time=600)
                    for messages, parameters in jobs[1:]]
    return futures


def test_alone_a_request_gets_what_generate_gives_it(standin, batcher_of):
    """The batcher's own decoding loop is ``generate``'s: greedy, with a stop token, and
    with a repetition penalty."""
    model, tokenizer, stop_ids = standin
    batcher = batcher_of()
    for messages in _questions(4):
        for parameters in ({**GREEDY, "max_new_tokens": 24},
                           {**GREEDY, "max_new_tokens": 24, "repetition_penalty": 1.3}):
            alone = batcher.submit(messages, parameters, max_time=600).result()
            assert alone == _generate_alone(model, tokenizer, stop_ids, messages, parameters)


def test_greedy_replies_in_a_batch_equal_each_request_served_alone(batcher_of):
    """Left padding, per-row positions and a cache merged mid-generation change nothing."""
    gate = threading.Lock()
    batcher = batcher_of(gate=gate)
    # Prompts of different lengths (so rows are padded), each with its own length limit.
    greedy = [(messages, {**GREEDY, "max_new_tokens": n})
              for messages, n in zip(_questions(8), (1, 3, 30, 8, 16, 2, 24, 12), strict=True)]
    alone = [batcher.submit(messages, p, max_time=600).result() for messages, p in greedy]
    # Sampled requests in the same batch, with their own knobs, must not move greedy rows.
    sampled = [(messages, {"do_sample": True, "temperature": t, "top_p": 0.9, "top_k": 20,
                           "max_new_tokens": 40})
               for messages, t in zip(_questions(10)[8:], (0.7, 1.5), strict=True)]
    # The first job runs longest, so the others join a batch whose cache is already longer.
    futures = _batched(batcher, gate, [greedy[2], *sampled, *greedy[:2], *greedy[3:]])
    replies = [f.result(timeout=300) for f in futures]
    assert [replies[0], *replies[3:]] == [alone[2], *alone[:2], *alone[3:]]
    assert all(isinstance(reply, str) for reply in replies[1:3])


def test_a_request_that_ends_is_answered_while_its_batch_goes_on(batcher_of):
    """A short request does not wait for the long one it shares a batch with."""
    gate = threading.Lock()
    # No stop token: each row ends exactly at its own max_new_tokens.
    batcher = batcher_of(stop_ids=[], gate=gate)
    long, short = _questions(2)
    futures = _batched(batcher, gate, [(long, {**GREEDY, "max_new_tokens": 1500}),
                                       (short, {**GREEDY, "max_new_tokens": 3})])
    futures[1].result(timeout=300)
    assert not futures[0].done()  # answered while the long one still generates
    assert batcher.generating == 1
    futures[0].result(timeout=600)


def test_a_failing_model_answers_each_of_its_requests_with_the_error(batcher_of, monkeypatch):
    """Every request of a failed batch gets the error (a 424 upstream); the instance lives."""
    gate = threading.Lock()
    batcher = batcher_of(gate=gate)
    broken = RuntimeError("out of memory")
    real_forward = batcher._forward
    monkeypatch.setattr(batcher, "_forward", lambda *a: (_ for _ in ()).throw(broken))
    one, two = _questions(2)
    futures = _batched(batcher, gate, [(one, {"max_new_tokens": 4}), (two, {"max_new_tokens": 4})])
    for future in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=60)
    monkeypatch.setattr(batcher, "_forward", real_forward)
    assert isinstance(batcher.submit(one, {"max_new_tokens": 4}, max_time=60).result(60), str)


def test_requests_spread_over_idle_instances_before_they_share_one(batcher_of):
    """Two instances, two requests: each instance takes one, none waits."""
    gate = threading.Lock()
    batcher = batcher_of(instances=2, gate=gate)
    with gate:  # each instance holds what it took, waiting for the gate
        futures = [batcher.submit(q, {"max_new_tokens": 2}, max_time=60) for q in _questions(2)]
        deadline = time.monotonic() + 30
        while batcher.busy < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (batcher.busy, batcher.waiting) == (2, 0)
    assert all(isinstance(f.result(timeout=60), str) for f in futures)


def test_a_closed_batcher_takes_no_request_and_lets_its_model_go(standin):
    """A deleted deployment's batcher refuses requests and is freed with its model."""
    model, tokenizer, stop_ids = standin
    batcher = Batcher(model, tokenizer, stop_ids, instances=2, max_batch=4)
    batcher.submit(_questions(1)[0], {"max_new_tokens": 2}, max_time=60).result(60)
    batcher.close()
    with pytest.raises(RuntimeError, match="deployment was deleted"):
        batcher.submit(_questions(1)[0], {"max_new_tokens": 2}, max_time=60)
    released = weakref.ref(batcher)
    del batcher
    deadline = time.monotonic() + 30
    while released() is not None:  # its instances' threads ended and dropped it
        assert time.monotonic() < deadline, "a closed batcher is still held"
        gc.collect()
        time.sleep(0.05)


@pytest.mark.slow
def test_an_endpoint_batches_requests_that_arrive_together(workspace, standin_mlflow_model):
    """Over HTTP, one instance: long requests share a batch, and greedy requests that join
    it answer exactly what they answer alone."""
    endpoint = serve(workspace, register_model(workspace, standin_mlflow_model), "ep-batch")
    key = workspace.get_endpoint_keys(endpoint.name).primary.get_secret_value()
    headers = {"Authorization": f"Bearer {key}"}
    health = endpoint.scoring_uri.removesuffix("/score") + "/health"

    def score(messages: list[dict[str, str]], parameters: dict) -> str:
        answer = httpx.post(endpoint.scoring_uri, json=build_body(messages, parameters),
                            headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        return read_reply(answer.text)

    greedy = [(q, {**GREEDY, "max_new_tokens": 16}) for q in _questions(4)]
    alone = [score(*job) for job in greedy]
    # The stand-in ends a sampled story within tens of milliseconds, so a round may end
    # before /health sees both at once; with one instance, only batching ever shows two.
    long = {"do_sample": True, "temperature": 2.0, "max_new_tokens": 2048}
    story = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
    peak, instances_busy, rounds = 0, 0, 0
    with ThreadPoolExecutor(6) as pool:
        while peak < 2 and rounds < 40:
            rounds += 1
            held = [pool.submit(score, story, long) for _ in range(2)]
            while peak < 2 and not all(f.done() for f in held):
                load = httpx.get(health, headers=headers, timeout=10).json()
                peak = max(peak, load["requests"]["demo"]["generating"])
                instances_busy = max(instances_busy, load["generating"]["demo"]["now"])
            together = [pool.submit(score, *job) for job in greedy]
            assert [f.result() for f in together] == alone
            for future in held:
                future.result()
    assert peak == 2, f"never two requests generating at once in {rounds} rounds"
    assert instances_busy == 1


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 converted from the pinned GGUF into this session's temporary catalog."""
    from workspaces.local.catalog import SMOLLM2_NAME, SMOLLM2_VERSION, convert_smollm2

    folder = tmp_path_factory.mktemp("catalog") / SMOLLM2_NAME / SMOLLM2_VERSION
    return _load(convert_smollm2(folder))


@pytest.mark.slow
@pytest.mark.timeout(2700)  # the GGUF conversion alone took minutes on a shared machine
def test_smollm2_greedy_replies_in_a_batch_equal_each_served_alone(smollm2):
    """The measured model itself: batched greedy replies equal those served alone."""
    model, tokenizer, stop_ids = smollm2
    gate = threading.Lock()
    batcher = Batcher(model, tokenizer, stop_ids, instances=1, max_batch=16,
                      tokenizer_lock=gate)
    jobs = [(q, {**GREEDY, "max_new_tokens": n})
            for q, n in zip(_questions(8), (24, 6, 20, 12, 24, 3, 16, 24), strict=True)]
    alone = [batcher.submit(*job, max_time=600).result() for job in jobs]
    assert alone[:2] == [_generate_alone(model, tokenizer, stop_ids, *job) for job in jobs[:2]]
    futures = _batched(batcher, gate, jobs)
    assert [f.result(timeout=600) for f in futures] == alone
    batcher.close()
