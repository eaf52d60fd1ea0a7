"""Sampling, streaming, stop strings and bad input, on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_CONFIG, random_ids, tiny_model

from focus_core import FocusConfigError, FocusEngine, FocusInputError, FocusInputTypeError, MemoryBudgetError
from focus_core.config import FocusConfig
from focus_core.generation import ends_in_a_loop
from focus_core.kv_cache import KVBuffer
from focus_core.sampling import Sampler, TextStream


def test_seeded_sampling_is_reproducible_and_differs_across_seeds(make_engine):
    engine = make_engine(max_new_tokens=10, temperature=1.5)
    ids = random_ids(300, seed=1)
    a = engine.generate_ids(ids, seed=1)
    assert engine.generate_ids(ids, seed=1) == a
    assert engine.generate_ids(ids, seed=2) != a


def test_top_k_one_and_tiny_top_p_are_greedy(make_engine):
    engine = make_engine(max_new_tokens=8)
    ids = random_ids(300, seed=2)
    greedy = engine.generate_ids(ids)
    assert engine.generate_ids(ids, temperature=1.0, top_k=1, seed=0) == greedy
    assert engine.generate_ids(ids, temperature=1.0, top_p=1e-6, seed=0) == greedy


def test_top_k_sampling_stays_within_the_top_k():
    logits = torch.tensor([5.0, 4.0, 3.0, -1.0, -2.0])
    sampler = Sampler(FocusConfig(temperature=5.0, top_k=2, seed=0), torch.device("cpu"))
    assert {sampler(logits) for _ in range(200)} == {0, 1}
    sampler = Sampler(FocusConfig(temperature=5.0, top_p=0.5, seed=0), torch.device("cpu"))
    assert {sampler(logits) for _ in range(200)} <= {0, 1}


def test_stream_pieces_join_to_the_generated_text(make_engine):
    engine = make_engine(max_new_tokens=10)
    ids = random_ids(300, seed=3)
    pieces = list(engine.stream(ids))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate(ids)
    assert "".join(pieces) == engine.tokenizer.decode(engine.generate_ids(ids), skip_special_tokens=True)


def test_stop_strings_cut_the_text(make_engine):
    engine = make_engine(max_new_tokens=10)
    ids = random_ids(300, seed=3)
    full = engine.generate(ids)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = engine.generate(ids, stop=[stop])
    assert cut == full[: full.index(stop)]
    assert "".join(engine.stream(ids, stop=stop)) == cut


def test_text_stream_holds_back_a_partial_stop_string(tokenizer):
    ids = tokenizer("Hello world. END of story").input_ids
    stream = TextStream(tokenizer, stop=("END",))
    out = ""
    for t in ids:
        out += stream.push(t)
        assert "EN" not in out.rstrip().split(" ")[-1] or stream.stopped
    assert stream.stopped and out == "Hello world. "


@pytest.mark.parametrize("prompt", ["", "   \n", []])
def test_empty_prompts_are_refused(make_engine, prompt):
    with pytest.raises(FocusInputError):
        make_engine().generate(prompt)


@pytest.mark.parametrize(
    "prompt", [None, 42, {"text": "hi"}, [1.5, 2.0], [True, 3], torch.zeros(2, 3, dtype=torch.long)]
)
def test_wrong_prompt_types_are_refused(make_engine, prompt):
    with pytest.raises(FocusInputTypeError):
        make_engine().generate(prompt)


def test_out_of_vocabulary_ids_are_refused(make_engine):
    with pytest.raises(FocusInputError, match=str(10**6)):  # the id at fault
        make_engine().generate([5, 10**6])


def test_bad_overrides_are_refused_before_work(make_engine):
    engine = make_engine()
    with pytest.raises(ValueError):
        engine.generate(random_ids(300), chunk_size=0)
    with pytest.raises(ValueError) as err:
        engine.generate(random_ids(300), dynamic_prompt_len=100)
    assert err.value.setting == "dynamic_prompt_len"
    with pytest.raises(ValueError) as err:
        engine.generate(random_ids(300), chunk_size=120)  # too wide for the window
    assert err.value.setting == "chunk_size"
    assert engine.stats.chunks_encoded == 0


def test_over_budget_prompt_is_refused_before_allocation(make_engine):
    engine = make_engine(memory_budget_bytes=600_000)
    ids = random_ids(5000)
    needed = engine.estimate_memory(ids, encode_batch_tokens=engine.config.chunk_size).total  # smallest batches
    assert needed > 600_000
    with pytest.raises(MemoryBudgetError, match=f"{needed} bytes") as err:
        engine.stream(ids)  # refused when the call is made, not when the stream is read
    assert err.value.needed_bytes == needed and err.value.budget_bytes == 600_000
    assert engine.stats.chunks_encoded == 0
    assert len(engine.generate_ids(random_ids(40))) > 0  # short prompts still fit


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@pytest.mark.parametrize("aggregation", ["select", "focus", "entropy", "kv"])
def test_allocations_are_the_declared_layout_and_the_estimate_counts_them(make_engine, aggregation, arch, monkeypatch):
    sizes = {"select_tokens": 48, "passage_tokens": 16, "exit_layer": 0} if aggregation == "select" else {}
    if arch == "gemma3_text":  # prefixes keep the sliding layer's window (16); sequences 16 - 1 + 8 slots of it
        sizes["encode_batch_tokens"] = 8
    engine = make_engine(arch, aggregation=aggregation, **sizes)
    ids = random_ids(3000)
    request = engine.request(ids)
    layout, estimate = request.layout, engine.estimate_memory(ids)
    allocated = []
    init = KVBuffer.__init__

    def recording_init(buffer, num_layers, rows, capacity, device, dtype, **windows):
        allocated.append((rows, capacity))
        init(buffer, num_layers, rows, capacity, device, dtype, **windows)

    monkeypatch.setattr(KVBuffer, "__init__", recording_init)
    with torch.inference_mode():
        state = engine.start(request)
        for _ in range(3):
            state.next_logits()
            state.append(5)
    if aggregation in ("focus", "select"):
        held = [state.sequence.kv]
        assert len(held[0].windowed) == (arch == "gemma3_text")  # its one sliding layer trimmed
    else:
        held = [state.chunks.kv] + ([state.local.sequence.kv] if aggregation == "entropy" else [])
    # the decoding state is exactly the declared blocks, and the estimate counts exactly those bytes
    assert [(kv.rows, kv.capacity) for kv in held] == [(b.rows, b.slots) for b in layout.state]
    assert sum(kv.nbytes for kv in held) == estimate.kv_bytes
    # every other buffer is one of the parallel pass's (no more rows than declared) or the kv step's
    passes = [layout.encode, layout.score, layout.step]
    for rows, capacity in allocated:
        fits = [b for b in passes if b is not None and rows <= b.rows and capacity <= b.slots]
        assert fits or (rows, capacity) in [(b.rows, b.slots) for b in layout.state], (rows, capacity)
    assert (layout.encode.rows, layout.encode.slots) in allocated and (
        layout.score.rows,
        layout.score.slots,
    ) in allocated
    assert engine.prefix_cache.nbytes == estimate.prefix_cache_bytes  # every chunk's prefix, as cached


def test_over_budget_refusal_names_settings_that_would_fit(make_engine):
    engine = make_engine(memory_budget_bytes=600_000)
    with pytest.raises(MemoryBudgetError) as err:
        engine.generate_ids(random_ids(5000))
    message = str(err.value)
    assert "prefix_cache_bytes=0" in message and "torchrun --nproc_per_node 2" in message
    fits = int(message.split("a prompt of at most ~")[1].split()[0])
    assert 0 < fits < 5000
    assert len(engine.generate_ids(random_ids(fits * 9 // 10))) > 0  # the suggested length does fit


def test_prefix_cache_eviction_keeps_answers_correct(make_engine):
    ids = [random_ids(300, seed=s) for s in range(3)]
    expected = [make_engine(prefix_cache_bytes=0).generate_ids(x) for x in ids]
    engine = make_engine()
    chunk_bytes = engine.runner.kv_bytes_per_token() * (1 + engine.config.chunk_size)
    engine = make_engine(prefix_cache_bytes=3 * chunk_bytes)  # room for 3 of the ~9 chunks of each prompt
    for _ in range(2):
        assert [engine.generate_ids(x) for x in ids] == expected
        assert engine.prefix_cache.nbytes <= 3 * chunk_bytes and len(engine.prefix_cache) == 3


def test_count_tokens_and_chat_template(make_engine):
    engine = make_engine()
    assert engine.count_tokens("Hello world") == len(engine.tokenizer("Hello world").input_ids)
    rendered = engine.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    )
    assert "<|im_start|>system\nBe brief.<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    with pytest.raises(FocusInputTypeError):
        engine.apply_chat_template([{"role": "user"}])
    with pytest.raises(FocusInputTypeError):
        engine.count_tokens(None)


def test_encoding_micro_batches_shrink_to_fit_the_budget(make_engine):
    ids = random_ids(3000, seed=4)
    roomy = make_engine(encode_batch_tokens=8192)
    small_batches = roomy.estimate_memory(ids, encode_batch_tokens=32).total
    assert roomy.estimate_memory(ids).total > small_batches
    tight = make_engine(encode_batch_tokens=8192, memory_budget_bytes=small_batches)
    assert tight.generate_ids(ids) == roomy.generate_ids(ids)


def test_score_of_a_short_input_is_the_plain_forward_log_softmax(make_engine):
    engine = make_engine(max_new_tokens=6)
    prompt, continuation = random_ids(40, seed=4), random_ids(10, seed=5)
    logits = engine.model(torch.tensor([prompt + continuation])).logits[0].float()  # [50, vocab]
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)[torch.arange(10), continuation]
    torch.testing.assert_close(engine.score(prompt, continuation), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("aggregation", ["focus", "entropy", "kv"])
def test_score_of_a_long_input_follows_the_aggregated_decoding(make_engine, aggregation):
    """Teacher-forcing the greedy output: every target is the step's argmax, so its log-prob is the max."""
    engine = make_engine(max_new_tokens=6, aggregation=aggregation)
    prompt = random_ids(300, seed=6)
    greedy = engine.generate_ids(prompt)
    best = []
    with torch.inference_mode():
        state = engine.start(engine.request(prompt))
        for token in greedy:
            best.append(torch.log_softmax(state.next_logits().float(), dim=-1).max())
            state.append(token)
    torch.testing.assert_close(engine.score(prompt, greedy), torch.stack(best))
    assert engine.score(prompt, greedy[:3]).tolist() == engine.score(prompt, greedy)[:3].tolist()


def test_score_refuses_an_empty_continuation(make_engine):
    with pytest.raises(FocusInputError):
        make_engine().score(random_ids(40), "")


@pytest.mark.parametrize("setting, value", [("prefix_cache_bytes", 0), ("native_window", 64)])
def test_engine_settings_are_refused_per_call(make_engine, setting, value):
    engine = make_engine()
    with pytest.raises(FocusConfigError) as err:
        engine.generate_ids(random_ids(300), **{setting: value})
    assert err.value.setting == setting
    assert engine.stats.chunks_encoded == 0


def test_a_generation_reports_its_tokens_and_why_it_ended(make_engine):
    engine = make_engine(max_new_tokens=6)
    ids = random_ids(300, seed=14)
    generation = engine.stream(ids)
    assert generation.finish_reason is None and generation.prompt_tokens == len(ids)
    text = "".join(generation)
    assert generation.completion_ids == engine.generate_ids(ids) and text == engine.generate(ids)
    assert generation.finish_reason == ("length" if len(generation.completion_ids) == 6 else "stop")
    stop = engine.tokenizer.decode(generation.completion_ids[1:3])
    completion = engine.complete(ids, stop=[stop])
    assert completion.finish_reason == "stop" and stop not in completion.text
    assert completion.prompt_tokens == len(ids) and 2 <= len(completion.completion_ids) < 6


def test_an_answer_ended_by_its_first_token_says_so(make_engine, caplog):
    """When the model's first token is end-of-sequence the reply is empty, and the finish reason and a
    warning say why rather than leaving an empty string unexplained."""
    engine = make_engine(max_new_tokens=6)
    ids = random_ids(300, seed=14)
    first = engine.generate_ids(ids)[0]
    engine.eos_token_ids = engine.eos_token_ids | {first}  # this model's first answer token now ends it
    with caplog.at_level("WARNING", logger="focus_core"):
        completion = engine.complete(ids)
    assert completion.text == "" and completion.completion_ids == () and completion.finish_reason == "empty"
    assert any("first token" in r.getMessage() for r in caplog.records)


def test_an_answer_that_loops_ends_after_its_first_repeat(tokenizer):
    """A model that writes the same block of tokens again and again (a narrowly drawn tiny model repeats one
    token): the answer ends once a block of ``repeat_stop`` tokens has come twice, back to back, and says
    so; it is the unrestricted answer up to that point, and ``repeat_stop=None`` lets it run on."""
    model = tiny_model("llama", init_std=0.02)
    looping = FocusEngine(model, tokenizer, TINY_CONFIG.replace(max_new_tokens=40, repeat_stop=None))
    prompt = tokenizer.decode(random_ids(40, seed=0))
    unrestricted = looping.complete(prompt)
    assert unrestricted.finish_reason == "length" and len(unrestricted.completion_ids) == 40
    ids = list(unrestricted.completion_ids)
    first_loop = next(n for n in range(1, 41) if ends_in_a_loop(ids[:n], 8))
    completion = FocusEngine(model, tokenizer, TINY_CONFIG.replace(max_new_tokens=40)).complete(prompt)
    assert completion.finish_reason == "repetition" and completion.completion_ids == tuple(ids[:first_loop])
    assert completion.text == tokenizer.decode(ids[:first_loop], skip_special_tokens=True)


def test_a_loop_is_a_block_written_twice_back_to_back():
    block = [5, 6, 7, 8]
    assert ends_in_a_loop([1, 2, *block, *block], 4) and ends_in_a_loop([9, *block, *block, *block], 4)
    assert not ends_in_a_loop([1, 2, *block, *block], 5)  # shorter than the shortest block counted
    assert not ends_in_a_loop([*block, 0, *block], 4) and not ends_in_a_loop(block, 2)


def test_the_chat_templates_turn_markers_end_an_answer(make_engine, tokenizer):
    """A model that writes the token opening a new turn (``<|im_start|>`` in ChatML) has ended its answer,
    as its end-of-sequence token does (both end decoding as ``eos_token_ids``)."""
    engine = make_engine()
    assert engine.eos_token_ids == {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None  # a base model's tokenizer: its end-of-sequence token alone
    assert FocusEngine(engine.model, plain, TINY_CONFIG).eos_token_ids == {tokenizer.eos_token_id}


@pytest.mark.parametrize("aggregation", ["select", "focus", "entropy", "kv"])
def test_prefixes_keeping_only_the_sliding_window_give_the_same_tokens(make_engine, aggregation):
    """Gemma 3's sliding-window layers store only their window of each chunk prefix (the rest is never
    attended to): the tokens equal those of an engine storing every layer whole, in less memory."""
    sizes = {"select_tokens": 48, "passage_tokens": 16} if aggregation == "select" else {}
    trimmed, whole = (make_engine("gemma3_text", aggregation=aggregation, **sizes) for _ in range(2))
    whole.runner.windowed_layers, whole.runner.sliding_window = (), None
    assert trimmed.runner.windowed_layers == (0,) and trimmed.runner.sliding_window == 16
    ids = random_ids(400, seed=21)
    assert trimmed.generate_ids(ids) == whole.generate_ids(ids)
    assert trimmed.relevance(ids) == whole.relevance(ids)
    assert 0 < trimmed.prefix_cache.nbytes < whole.prefix_cache.nbytes
