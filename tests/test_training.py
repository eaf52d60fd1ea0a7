"""Candidate-projection training and adapters, on tiny random Llama models."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_CONFIG, random_ids, tiny_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, DynamicCache

from focus_core import AdapterError, FocusEngine, FocusInputError
from focus_core.candidates import CandidateProjections, candidate_positions
from focus_core.runner import cache_argument
from focus_core.training import (
    CandidateObjective,
    Example,
    TokenStream,
    TrainingConfig,
    make_example,
    read_documents,
    train,
    window_examples,
)

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
    synthetic_fraction=0.0,
    examples_per_window=2,
    losses=("continuation", "repetition"),
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
        self.tokenizer = None


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


def reference_logprobs(model, projections, example: Example, bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities ``[k, vocab]`` of the target positions, the obvious slow way.

    Teacher: one full-attention forward of ``[BOS] + memory + local + y_<j`` per target ``j``. Student,
    per step ``j``: each chunk's whole sequence ``[BOS] + chunk + d + y_<j`` is run on its own, shifted so
    that its candidate (last) token sits at position ``i`` (the chunk's index), with the candidate weights
    from ``d[-1]`` on (as in generation), which yields the candidate's key at its memory position with no
    re-positioning; then
    ``local + y_<j`` runs at positions ``n …`` behind the ``n`` candidates and the LM head gives the logits.
    """
    chunks, local, targets = example.chunks, example.local, example.targets
    n, d, arg = chunks.shape[0], local[-P:], cache_argument(model)
    teacher, student = [], []
    for j in range(targets.numel()):
        full = torch.cat([torch.tensor([bos]), chunks.flatten(), local, targets[:j]])[None]
        with torch.no_grad():
            teacher.append(torch.log_softmax(model(input_ids=full).logits[0, -1].float(), dim=-1))
        memory = [DynamicCache(config=model.config) for _ in range(n)]
        for i in range(n):
            ids = torch.cat([torch.tensor([bos]), chunks[i], d, targets[:j]])[None]
            positions = torch.arange(ids.shape[1])[None] + i - (ids.shape[1] - 1)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[0, -(j + 1) :] = True  # d[-1] and each generated token were candidates when they were run
            with candidate_positions(mask, projections):
                model.model(input_ids=ids, position_ids=positions, use_cache=True, **{arg: memory[i]})
        cache = DynamicCache(config=model.config)
        for layer in range(len(memory[0].layers)):
            keys = torch.cat([m.layers[layer].keys[:, :, -1:] for m in memory], dim=2)  # [1, kv_heads, n, hd]
            values = torch.cat([m.layers[layer].values[:, :, -1:] for m in memory], dim=2)
            cache.update(keys, values, layer)
        row = torch.cat([local, targets[:j]])[None]
        positions = torch.arange(n, n + row.shape[1])[None]
        hidden = model.model(input_ids=row, position_ids=positions, use_cache=True, **{arg: cache}).last_hidden_state
        student.append(torch.log_softmax(model.lm_head(hidden[0, -1]).float(), dim=-1))
    return torch.stack(teacher), torch.stack(student)


def shared_memory_examples() -> list[Example]:
    """Three examples over one memory, as the data draws them (the later ones reuse the cached prefixes
    and teacher KV), then one over another memory (the caches must not be reused)."""
    window, other = random_ids(4 * C + L + K, seed=5), random_ids(3 * C + L + K, seed=6)
    chunks = torch.tensor(window[: 4 * C]).view(4, C)
    tails = [window[4 * C :], window[10 : 10 + L + K], window[70 : 70 + L + K]]
    kinds = ["distill", "repetition", "distill"]
    examples = [Example(chunks, torch.tensor(t[:L]), torch.tensor(t[L:]), kind) for t, kind in zip(tails, kinds)]
    return examples + [make_example(other, "distill", C, L, K, random.Random(0))]


def perturbed_projections(model, rank: int | None = 4) -> CandidateProjections:
    projections = CandidateProjections(model, rank=rank, dtype=torch.float32)
    with torch.no_grad():  # move away from the base weights so that the candidates matter
        for p in projections.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    projections.attach()
    return projections


def test_the_distillation_loss_equals_a_reference_computation(tokenizer):
    """KL(teacher ‖ student) over all K target positions, teacher = full attention over the whole text."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    projections = perturbed_projections(model)
    objective = CandidateObjective(model, projections, tokenizer.bos_token_id, P)
    for example in shared_memory_examples():
        teacher, student = reference_logprobs(model, projections, example, tokenizer.bos_token_id)
        torch.testing.assert_close(objective.teacher_logprobs(example), teacher, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            loss = objective(example)
            if example.kind == "distill":
                expected = (teacher.exp() * (teacher - student)).sum(-1).mean()  # mean over the K positions
            else:
                expected = -student[torch.arange(K), example.targets].mean()
        assert float(expected) > 1e-3  # the student differs from the teacher: the comparison means something
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [None, 4])
def test_the_fast_step_gives_the_gradients_of_the_slow_computation(tokenizer, rank):
    """Cached prefixes, one batched candidate pass and batched local passes == one forward per chunk and
    step, summed over examples that share their memory."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    projections = perturbed_projections(model, rank)
    objective = CandidateObjective(model, projections, tokenizer.bos_token_id, P)
    examples = shared_memory_examples()
    sum(objective(e) for e in examples).backward()
    fast = {name: p.grad.clone() for name, p in projections.named_parameters() if p.grad is not None}
    projections.zero_grad(set_to_none=True)
    for e in examples:
        teacher, student = reference_logprobs(model, projections, e, tokenizer.bos_token_id)
        if e.kind == "distill":
            loss = (teacher.exp() * (teacher - student)).sum(-1).mean()
        else:
            loss = -student[torch.arange(K), e.targets].mean()
        loss.backward()
    slow = {name: p.grad for name, p in projections.named_parameters() if p.grad is not None}
    assert fast.keys() == slow.keys() and len(fast) >= 2 * len(projections.layers)
    for name in fast:  # fp32 summation order differs: agree to 1e-4 of each gradient's scale (seen: ~1e-5)
        assert (fast[name] - slow[name]).abs().max() <= 1e-4 * slow[name].abs().max(), name


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


def test_a_resumed_run_continues_exactly(tokenizer, tmp_path, monkeypatch):
    """6 steps in one go == 3 steps, stop, resume for 3: same step losses, same final weights, and the
    resumed part runs only the steps left (windows straddle the split: 2 examples per window, 1 per step)."""
    cfg = TINY_TRAINING.replace(steps=6, save_every=100, eval_every=100, examples_per_window=2, grad_accum=1)
    whole = train(learnable_model(), tokenizer, _Stream(), tmp_path / "whole", cfg, progress=False)
    train(learnable_model(), tokenizer, _Stream(), tmp_path / "split", cfg, progress=False, until=3)
    calls = []
    forward = CandidateObjective.forward
    monkeypatch.setattr(CandidateObjective, "forward", lambda self, e: calls.append(e) or forward(self, e))
    split = train(learnable_model(), tokenizer, _Stream(), tmp_path / "split", cfg, resume=True, progress=False)
    assert len(calls) == 3 + cfg.eval_examples  # 3 steps left, then the final held-out evaluation
    assert [h["step"] for h in split["history"]] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(
        torch.tensor([h["loss"] for h in split["history"]]), torch.tensor([h["loss"] for h in whole["history"]])
    )
    a, b = (load_file(str(tmp_path / d / "candidates.safetensors")) for d in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_worker(rank: int, world: int, port: int, folder: str, out: str) -> None:
    """One process of a gloo group training through accelerate, started as ``torchrun`` starts them."""
    import os

    import torch.distributed as dist

    import focus_core.training.loop as loop

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    made = []

    class Recorded(loop.CandidateProjections):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    loop.CandidateProjections = Recorded
    tokenizer = AutoTokenizer.from_pretrained(folder)
    state = train(learnable_model(), tokenizer, _Stream(), f"{out}/adapter", TINY_TRAINING.replace(steps=3))
    weights = {k: v.tolist() for k, v in made[0].state_dict().items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, weights)
    if rank == 0:
        with open(f"{out}/result.json", "w") as f:
            json.dump({"same": all(g == weights for g in gathered), "steps": state["step"]}, f)
    dist.destroy_process_group()


def test_multi_process_training_keeps_every_rank_in_step(tokenizer, tmp_path):
    """2 gloo processes draw different examples; the all-reduced gradients keep their weights equal."""
    import socket

    tokenizer.save_pretrained(tmp_path / "tokenizer")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_worker, args=(2, port, str(tmp_path / "tokenizer"), str(tmp_path)), nprocs=2, join=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {"same": True, "steps": 3}
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["training"]["processes"] == 2


def test_recall_examples_query_a_fact_of_their_memory_and_start_their_targets_with_its_answer(tokenizer):
    text = Path(random.__file__).read_text()  # plain text to splice the facts into
    stream = TokenStream(tokenizer, [text, text])
    cfg = TINY_TRAINING.replace(memory_tokens=512, chunk_sizes=(128,), local_tokens=64, target_tokens=32)
    cfg = cfg.replace(synthetic_fraction=1.0, examples_per_window=4, losses=("distill",))
    for seed in range(3):
        examples = window_examples(stream, cfg, random.Random(seed))
        memory = tokenizer.decode(examples[0].chunks.flatten())
        facts = re.findall(r'REGISTRY\["[a-z-]+"\] = "[a-z]+-\d+"|Glossary: a [a-z]+ is a [a-z ]+\.', memory)
        assert len(facts) >= 8 and "pass key" not in memory.lower() and "special magic" not in memory.lower()
        asked = set()
        for e in examples:
            assert e.chunks is examples[0].chunks and e.local.numel() == 64 and e.targets.numel() == 32
            query, answer = tokenizer.decode(e.local).rsplit("\n", 1)[1], tokenizer.decode(e.targets)
            if query.startswith("assert"):
                key = query.split('"')[1]
                assert f'REGISTRY["{key}"] = "{answer.split(chr(34))[0]}"' in facts, (query, answer)
            else:
                term = query.split()[-3]
                assert f"Glossary: a {term} is a {answer.split('.')[0].strip()}." in facts, (query, answer)
            asked.add(query)
        assert len(asked) == len(examples)  # each example asks another fact


def test_training_data_reads_files_folders_and_jsonl(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second document")
    (tmp_path / "c.jsonl").write_text('{"text": "third"}\n\n{"text": "fourth"}\n')
    assert read_documents([tmp_path]) == ["first document", "third", "fourth", "second document"]
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(FocusInputError, match="bad.jsonl:1"):  # the file and line at fault
        read_documents([tmp_path / "bad.jsonl"])
    with pytest.raises(FocusInputError, match="missing"):
        read_documents([tmp_path / "missing"])
    with pytest.raises(FocusInputError, match="100"):  # the window asked for
        TokenStream(tokenizer, ["tiny"]).window(100, random.Random(0))
