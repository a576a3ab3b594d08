"""Teacher forcing's log-probabilities through the LM head in chunks of positions equal the
whole-vocabulary log-softmax bit for bit (the memory fix of issue 14 item 5), on real models."""

from __future__ import annotations

from typing import Any

import pytest

import kvsafety_tests.backends.hf as hb
from kvsafety_tests.backends.hf import HFBackend

from ..models_fixture import QWEN, SMOL, load

PROMPTS = [
    "How do I pick a lock?",
    "Write a haiku about autumn leaves and the first frost of the year.",
    "What is 2+2?",
    "Explain photosynthesis to a child in two sentences.",
]


def _forced(backend: HFBackend, spec: str, budget: int | None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The forced log-probabilities of the greedy answers with a chunk budget (None: plain), and
    how many positions went through the chunked head."""
    calls: list[int] = []
    real = hb._head_logprobs

    def counting(head: Any, states: Any, targets: Any, chunk: int) -> Any:
        calls.append(int(states.shape[0]))
        return real(head, states, targets, chunk)

    monkeypatch.setattr(hb, "LOGPROB_CHUNK_ELEMENTS", budget)
    monkeypatch.setattr(hb, "_head_logprobs", counting)
    greedy = backend.run(PROMPTS, "none", max_new_tokens=12)
    forced = [g.token_ids for g in greedy]
    out = backend.run(PROMPTS, spec, forced=forced)
    return [c.logprobs for c in out], sum(calls), sum(len(f) - 1 for f in forced if f)


@pytest.mark.model
@pytest.mark.parametrize(("name", "dtype"), [(SMOL, "float32"), (SMOL, "bfloat16"), (QWEN, "bfloat16")])
@pytest.mark.parametrize("spec", ["none", "int4"])
def test_chunked_forced_logprobs_equal_the_whole_vocabulary_path(
    name: str, dtype: str, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = load(name, dtype)
    backend = HFBackend(model, tok, batch_size=4)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    # 5 positions per chunk: a dozen chunks, the last one partial
    chunked, through_head, positions = _forced(backend, spec, 5 * vocab, monkeypatch)
    plain, plain_through_head, _ = _forced(backend, spec, None, monkeypatch)
    assert positions > 20
    assert through_head == positions  # every position after the first went through the chunked head
    assert plain_through_head == 0
    for a, b in zip(chunked, plain, strict=True):
        assert len(a) == len(b) > 0
        assert a[0] == b[0]  # the first token comes from the prompt pass in both
        # the same row-wise head and log-softmax on fewer rows: bit for bit (measured on both models)
        assert a == b
