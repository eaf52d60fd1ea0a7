"""Candidate-projection training and adapters, on tiny random Llama models."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import TINY_CONFIG, random_ids, tiny_model

from focus_core import AdapterError, FocusEngine
from focus_core.candidates import CandidateProjections
from focus_core.training import CandidateObjective, TokenStream, TrainingConfig, make_example, read_documents, train

C, L, P, K = 32, 24, 8, 5
TINY_TRAINING = TrainingConfig(
    steps=30,
    chunk_sizes=(16, 32),
    memory_tokens=64,
    local_tokens=16,
    dynamic_prompt_len=4,
    target_tokens=4,
    rank=4,
    learning_rate=2e-2,
    warmup_steps=2,
    grad_accum=1,
    eval_every=10,
    eval_examples=4,
    save_every=10,
)


def learnable_model() -> torch.nn.Module:
    """A tiny Llama with the usual small weights (std 0.02) and a final norm scaled up, so that its logits
    can move far from uniform: what the candidates carry can then change the loss a lot."""
    model = tiny_model("llama", init_std=0.02)
    model.model.norm.weight.data.fill_(20.0)
    return model


class _Stream(TokenStream):
    """A copy task: documents are short random phrases over 64 token ids, each written twice."""

    def __init__(self, seed: int = 0):
        g = random.Random(seed)
        ids = []
        for _ in range(400):
            phrase = [g.randrange(100, 164) for _ in range(24)]
            ids += phrase + phrase
        self.train, self.eval = ids[: len(ids) * 9 // 10], ids[len(ids) * 9 // 10 :]


@pytest.mark.parametrize("rank", [None, 4])
def test_the_training_objective_equals_kv_decoding_of_the_same_layout(tokenizer, rank):
    """Teacher-forced targets in one parallel pass == the engine scoring them step by step in kv mode."""
    model = tiny_model("llama")
    projections = CandidateProjections(model, rank=rank, dtype=torch.float32)
    with torch.no_grad():  # move away from the base weights so that the candidates matter
        for p in projections.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    # the objective trains on every chunk's candidates: the engine reads them all too
    engine = FocusEngine(model, tokenizer, TINY_CONFIG.replace(aggregation="kv", top_chunks=8))
    engine.set_candidates(projections, trained=True)
    objective = CandidateObjective(model, projections, tokenizer.bos_token_id, P)
    for kind in ("continuation", "repetition"):
        window = random_ids(4 * C + L + K if kind == "continuation" else 4 * C, seed=3)
        example = make_example(window, kind, C, L, K, random.Random(0))
        prompt = example.chunks.flatten().tolist() + example.local.tolist()
        expected = engine.score(prompt, example.targets.tolist())
        torch.testing.assert_close(objective.logprobs(example), expected, rtol=1e-4, atol=1e-4)


def test_training_lowers_the_loss_touching_only_candidate_weights(tokenizer, tmp_path):
    model = learnable_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = train(model, tokenizer, _Stream(), tmp_path / "adapter", TINY_TRAINING, progress=False)
    losses = [e["loss"] for e in state["evaluations"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # base bitwise unchanged
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    assert (tmp_path / "adapter" / "candidates.safetensors").stat().st_size < 200_000  # low-rank deltas only


def test_only_candidate_parameters_receive_gradients(tokenizer):
    model = tiny_model("llama")
    projections = CandidateProjections(model, rank=4, dtype=torch.float32)
    projections.attach()
    objective = CandidateObjective(model, projections, tokenizer.bos_token_id, P)
    example = make_example(random_ids(4 * C + L + K), "continuation", C, L, K, random.Random(0))
    objective(example).backward()
    assert all(p.grad is None for p in model.parameters())
    # B gets gradients first (A's are zero while B is); the last layer's q and o shape nothing that is used
    unused = {"layers.1.q_proj.lora_b", "layers.1.o_proj.lora_b"}
    for name, p in projections.named_parameters():
        if name.endswith("lora_b"):
            assert (p.grad is None) == (name in unused), name
            assert name in unused or p.grad.abs().sum() > 0


def test_adapter_save_load_gives_identical_outputs_and_auto_uses_kv(tokenizer, tmp_path):
    train(
        learnable_model(), tokenizer, _Stream(), tmp_path / "adapter", TINY_TRAINING.replace(steps=10), progress=False
    )
    ids, continuation = random_ids(300, seed=9), random_ids(6, seed=11)
    a = FocusEngine(learnable_model(), tokenizer, TINY_CONFIG)
    a.load_adapter(tmp_path / "adapter")
    assert a.aggregation_for() == "kv"
    a.save_adapter(tmp_path / "again")
    b = FocusEngine(learnable_model(), tokenizer, TINY_CONFIG)
    b.load_adapter(tmp_path / "again")
    assert a.generate_ids(ids) == b.generate_ids(ids)
    assert torch.equal(a.score(ids, continuation), b.score(ids, continuation))
    untrained = FocusEngine(learnable_model(), tokenizer, TINY_CONFIG)
    assert not torch.allclose(untrained.score(ids, continuation, aggregation="kv"), a.score(ids, continuation))

    # two engines over one model: each uses its own candidate weights, whatever the other has hooked in
    shared = learnable_model()
    plain = FocusEngine(shared, tokenizer, TINY_CONFIG.replace(aggregation="kv"))
    before = plain.score(ids, continuation)
    adapted = FocusEngine(shared, tokenizer, TINY_CONFIG)
    adapted.load_adapter(tmp_path / "adapter")
    assert torch.equal(adapted.score(ids, continuation), a.score(ids, continuation))
    assert torch.equal(plain.score(ids, continuation), before)


def test_mismatched_or_corrupt_adapters_are_refused_and_change_nothing(tokenizer, tmp_path):
    train(
        tiny_model("llama"), tokenizer, _Stream(), tmp_path / "adapter", TINY_TRAINING.replace(steps=2), progress=False
    )
    ids = random_ids(300, seed=10)
    for other in (tiny_model("llama", seed=1), tiny_model("qwen2")):
        engine = FocusEngine(other, tokenizer, TINY_CONFIG)
        before = engine.generate_ids(ids, aggregation="kv")
        with pytest.raises(AdapterError, match="different model"):
            engine.load_adapter(tmp_path / "adapter")
        assert engine.aggregation_for() == "entropy" and engine.generate_ids(ids, aggregation="kv") == before
    weights = tmp_path / "adapter" / "candidates.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterError, match="cannot be read"):
        FocusEngine(tiny_model("llama"), tokenizer, TINY_CONFIG).load_adapter(tmp_path / "adapter")
    with pytest.raises(AdapterError, match="not a FocusLLM adapter"):
        FocusEngine(tiny_model("llama"), tokenizer, TINY_CONFIG).load_adapter(tmp_path)


def test_training_resumes_from_its_checkpoint(tokenizer, tmp_path):
    cfg = TINY_TRAINING.replace(steps=4, save_every=2, eval_every=100)
    train(tiny_model("llama"), tokenizer, _Stream(), tmp_path, cfg, progress=False)
    state = train(
        tiny_model("llama"), tokenizer, _Stream(), tmp_path, cfg.replace(steps=6), resume=True, progress=False
    )
    assert [h["step"] for h in state["history"]] == [1, 2, 3, 4, 5, 6]


def test_training_data_reads_files_folders_and_jsonl(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second document")
    (tmp_path / "c.jsonl").write_text('{"text": "third"}\n\n{"text": "fourth"}\n')
    assert read_documents([tmp_path]) == ["first document", "third", "fourth", "second document"]
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(Exception, match='no "text"'):
        read_documents([tmp_path / "bad.jsonl"])
    with pytest.raises(Exception, match="does not exist"):
        read_documents([tmp_path / "missing"])
    with pytest.raises(Exception, match="needs"):
        TokenStream(tokenizer, ["tiny"]).window(100, random.Random(0))
