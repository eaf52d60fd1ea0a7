"""``select`` aggregation: the early-exit pass, the attention probe and the selected read, each against
its slow reference."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCHS, TINY_CONFIG, random_ids, tiny_model

from focus_core import FocusConfig, FocusConfigError, FocusEngine
from focus_core.chunking import ChunkPlan
from focus_core.runner import SequenceBatch
from focus_core.selection import (
    SINK_TOKENS,
    Sentences,
    Span,
    choose_spans,
    memory_mass,
    merge,
    part_peaks,
    pooled,
    probed,
    question_marks,
    question_rows,
    select_spans,
    sentence_ends,
)

SELECT = {"aggregation": "select", "select_tokens": 48, "passage_tokens": 16}
REFERENCE = Path(__file__).resolve().parent.parent / "examples" / "data" / "python_reference"
LONG = 300  # tokens: well past the tiny engines' native window of 128


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_early_exit_prefix_equals_the_full_pass_up_to_its_layer(make_engine, arch):
    engine = make_engine(arch)
    sequence = (1, *random_ids(40, seed=1))
    with torch.inference_mode():
        full = engine.encoder.prefixes([sequence])[0]
        early = engine.encoder.prefixes([sequence], layers=1)[0]
    assert early.keys.shape[0] == 1 and full.keys.shape[0] == engine.runner.num_layers
    torch.testing.assert_close(early.keys, full.keys[:1])
    torch.testing.assert_close(early.values, full.values[:1])


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])  # Gemma 3's layer 0 has a sliding window of 16
def test_the_probe_records_the_attention_eager_attention_returns(tokenizer, arch, layer):
    """The probe's mass equals the softmax probabilities of an eager forward (output_attentions), summed
    over heads, per query row, for a batch with left padding."""
    model = tiny_model(arch)
    eager = tiny_model(arch)
    eager.set_attn_implementation("eager")
    from focus_core.runner import ModelRunner

    runner, rows = ModelRunner(model), (1, 4)
    sequences = [random_ids(20, seed=2), random_ids(14, seed=3)]
    question = torch.tensor(random_ids(5, seed=4))
    batch = SequenceBatch(runner, rows=2, capacity=25)
    with torch.inference_mode():
        batch.start_padded(sequences)
        mass = batch.attend(question, layers=(layer,), rows=rows)[layer]  # [2, 3, 25]
        for r, seq in enumerate(sequences):
            ids = torch.tensor([seq + question.tolist()])
            attentions = eager(ids, output_attentions=True).attentions[layer][0]  # [heads, t, t]
            first = len(seq)  # the question's first token
            expected = attentions[:, first + rows[0] : first + rows[1]].sum(dim=0)  # [3, t]
            pad = 20 - len(seq)
            torch.testing.assert_close(mass[r, :, pad:], expected, atol=1e-5, rtol=1e-4)
            assert float(mass[r, :, :pad].abs().sum()) == 0.0  # padding draws nothing


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_the_selected_read_is_full_attention_over_the_same_tokens(make_engine, arch):
    """select decodes as the plain model does over [BOS] + opening + selected spans + local, token for token."""
    engine = make_engine(arch, **SELECT, select_drop=None)  # the whole budget, cliff or not
    ids = [1, *random_ids(LONG, seed=5)]
    completion = engine.stream(ids)
    tokens = engine.generate_ids(ids)
    next(iter(completion), None)
    plan = engine.plan(ids)
    memory = list(itertools.chain.from_iterable(plan.chunks))
    spans = [(s.token_span[0] - plan.memory_start, s.token_span[1] - plan.memory_start) for s in completion.sources]
    read = [t for a, b in merge([Span(a, b, 0.0) for a, b in sorted(spans)]) for t in memory[a:b]]
    assert len(read) == SELECT["select_tokens"] + SELECT["passage_tokens"]  # the opening and the selection
    reference = [1, *read, *plan.local]
    with torch.inference_mode():
        out = engine.model.generate(
            torch.tensor([reference]), max_new_tokens=engine.config.max_new_tokens, do_sample=False, eos_token_id=None
        )
    assert tokens == out[0, len(reference) :].tolist()


def test_a_prompt_inside_the_window_longer_than_the_selection_reads_is_selected(make_engine):
    """A prompt that fits the window with its answer is read whole up to what the selection reads (the
    opening passage, select_tokens and the local window: 88 tokens here) and through the selection past
    it; read_whole_tokens moves that line; a mode that does not read inside the window reads it whole."""
    engine = make_engine(**SELECT)
    reach = SELECT["passage_tokens"] + SELECT["select_tokens"] + TINY_CONFIG.local_window
    inside = random_ids(reach + 12, seed=3)  # 100 + 6 new tokens fit the 128-token window
    assert engine.complete(inside[:reach]).mode == "plain"
    selected = engine.complete(inside)
    assert selected.mode == "select" and selected.sources
    whole = engine.complete(inside, read_whole_tokens=engine.native_window)
    assert whole.mode == "plain" and not whole.sources
    assert engine.complete(inside, read_whole_tokens=reach + 12).mode == "plain"
    assert engine.complete(inside, aggregation="entropy").mode == "plain"


def test_select_reads_the_passages_the_question_attends_to(make_engine):
    """Across the whole document: the chosen spans are those with the most probe mass (a slow reference
    that pools every window by hand), and sources name them with their character spans."""
    engine = make_engine("llama", **SELECT, exit_layer=0)
    ids = [1, *random_ids(LONG, seed=6)]
    request = engine.request(ids)
    plan, layout = request.plan, request.layout
    with torch.inference_mode():
        rows = (0, len(plan.dynamic_prompt))
        grid = engine.encoder.attend(plan, layers=(0,), rows=rows, layout=layout, progress=False)[0]
    assert grid.shape == (len(plan.chunks), rows[1], len(plan.chunks[0]))
    assert float(grid[:, :, :SINK_TOKENS].abs().sum()) == 0  # attention sinks left out
    mass = torch.cat([g[:, : len(c)] for g, c in zip(grid, plan.chunks)], dim=1).sum(dim=0)  # [memory tokens]
    best = max(range(16, plan.memory_tokens - 16 + 1), key=lambda a: float(mass[a : a + 16].sum()))
    spans = select_spans(mass, passage=16, budget=48, skip=16)
    assert any(s.start <= best + 8 < s.end for s in spans)  # the best window's middle is read


def test_select_spans_choose_peaks_without_overlap_within_the_budget():
    mass = torch.zeros(1000)
    mass[500:510], mass[20:25], mass[990:] = 1.0, 0.5, 0.3
    spans = select_spans(mass, passage=64, budget=200, skip=10)
    assert [(s.start, s.end) for s in spans] == [(10, 74), (473, 537), (936, 1000)]  # centred on the peaks
    assert all(len(s) == 64 for s in spans) and spans[1].score == pytest.approx(10.0)
    many = select_spans(torch.rand(1000), passage=50, budget=500)
    assert len(many) == 10 and all(a.end <= b.start for a, b in itertools.pairwise(many))
    assert merge([Span(0, 10, 1), Span(10, 20, 1), Span(30, 40, 1)]) == [(0, 20), (30, 40)]
    torch.testing.assert_close(pooled(torch.ones(5), 3), torch.tensor([2.0, 3, 3, 3, 2]))


@pytest.mark.parametrize("window", [1, 2, 7, 64])
def test_pooled_mass_is_each_windows_sum_centred_on_its_token(window):
    """The running-sum pooling against the obvious sum of each window, clipped at the ends, for every
    query of a long peaked mass (values far apart in size, as attention is)."""
    torch.manual_seed(0)
    mass = torch.rand(3, 700) ** 8
    left = (window - 1) // 2
    slow = torch.stack(
        [mass[:, max(i - left, 0) : i - left + window].double().sum(dim=1) for i in range(mass.shape[1])], dim=1
    )
    fast = pooled(mass, window)
    assert fast.shape == mass.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pooled(mass[0], window), fast[0])


def test_select_spans_stop_where_the_attention_falls_off():
    """With ``drop``, a group of passages far above the rest is read alone; a gentle decline is read to the
    budget; without it the budget is always filled."""
    mass = torch.full((1000,), 0.01)
    for start, height in [(100, 1.0), (400, 0.8), (700, 0.6)]:  # three needles, then filler at 1/60 of the third
        mass[start : start + 10] = height
    cliff = select_spans(mass, passage=50, budget=400, drop=2.0)
    assert [(s.start < n and n + 10 < s.end) for s, n in zip(cliff, (100, 400, 700), strict=True)] == [True] * 3
    assert len(select_spans(mass, passage=50, budget=400)) == 8  # no drop: the budget
    assert len(select_spans(mass, passage=50, budget=400, drop=100.0)) == 8  # the cliff is gentler than 100x
    assert len(select_spans(mass, passage=50, budget=400, drop=float("inf"))) == 8  # inf: never stops (the CLI's None)
    assert len(select_spans(mass, passage=50, budget=400, drop=1.0)) == 1  # any decline stops at the best
    slope = torch.linspace(1.0, 0.5, 1000)  # no passage draws under half of the one before it
    assert len(select_spans(slope, passage=50, budget=400, drop=2.0)) == 8


def test_the_probe_reads_chunks_of_one_length_and_scores_what_they_say_not_where():
    """A short last chunk is widened to the memory's last C tokens (its overlap dropped again), and the
    mass every chunk draws at the same place (chunk edges) is taken off: a needle that draws less than a
    chunk's edge, but more than its own place does elsewhere, wins."""
    plan = ChunkPlan(chunks=((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14)), local=(15,), dynamic_prompt=(15,))
    assert probed(plan).chunks[-1] == (11, 12, 13, 14) and probed(plan).chunks[:3] == plan.chunks[:3]
    assert probed(probed(plan)) == probed(plan)
    edges = torch.tensor([0.0, 0.1, 0.2, 1.0])  # every chunk's last token draws 1.0 whatever it holds
    grid = edges.repeat(4, 2, 1)  # [chunks, queries, C]
    grid[1, 0, 1] += 0.5  # token 6: the needle, for the first query
    grid[2, 1, 2] += 0.4  # token 11 for the second query
    grid[3, 1, 1] += 0.3  # token 12, scored twice (chunk 3 and the widened chunk 4): the first is kept
    mass = memory_mass(grid, plan)
    assert mass.shape == (2, plan.memory_tokens)
    expected = torch.zeros(2, 14)
    expected[0, 5], expected[1, 10] = 0.5, 0.4
    torch.testing.assert_close(mass, expected)
    two = ChunkPlan(chunks=((1, 2, 3, 4), (5, 6)), local=(7,), dynamic_prompt=(7,))
    torch.testing.assert_close(memory_mass(edges.repeat(2, 1, 1), two), torch.tensor([[0.0, 0.1, 0.2, 1.0, 0.2, 1.0]]))


def test_the_probe_queries_are_the_question_line_without_template_tokens():
    """The question is its last line of at least four ordinary tokens: an answer cue on the line after it,
    a chat template's closing and opening turn markers, and the document before it are not queries."""
    nl, eot, bot = 10, 90, 91  # a token ending a line; two special tokens
    marks = ({nl}, {eot, bot})
    doc, question = [5, 6, 7, nl], [20, 21, 22, 23, 24]
    assert question_rows(doc + question, *marks) == (4, 9)
    assert question_rows(doc + question + [nl, 30, 31], *marks) == (4, 9)  # "\nAnswer:" after it
    chat = doc + question + [eot, nl, bot, 40, nl]  # <|im_end|>\n<|im_start|>assistant\n
    assert question_rows(chat, *marks) == (4, 9)
    assert question_rows([5, 6, 7, 8, 9, 11], *marks) == (0, 6)  # one line: all of it
    assert question_rows([nl, 5, nl, 6], *marks) == (0, 4)  # no line long enough: the whole prompt


def test_each_part_of_the_question_keeps_its_own_passage():
    """Four keys asked together: each key's two queries point at its own needle, and the summed attention
    draws the strongest key's needle far above the others. The whole question's cliff reads that one
    needle alone; the parts add the other three. Queries spread over every needle (the question's
    template words) point at nothing, so a distractor stays out, and a lone query's peak is no part."""
    tokens, needles = 4000, [600, 1500, 2500, 3400]
    mass = torch.full((11, tokens), 1e-4)  # 11 queries: 4 keys of 2 tokens, 2 template words, 1 stray
    for q, strength in enumerate([8.0, 8.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.5]):
        mass[q, needles[q // 2] : needles[q // 2] + 10] = strength
    for n in needles + [3000]:  # the template words draw to every needle and to a distractor alike
        mass[8:10, n : n + 10] = 0.5
    mass[10, 2000:2010] = 1.0  # one query's chance peak

    def reads(spans: list[Span], token: int) -> bool:
        return any(s.start <= token < s.end for s in spans)

    whole = select_spans(mass.sum(dim=0), passage=64, budget=512, skip=64, drop=2.0)
    assert [reads(whole, n) for n in needles] == [True, False, False, False]
    spans = choose_spans(mass, passage=64, budget=512, skip=64, drop=2.0)
    assert all(reads(spans, n) for n in needles) and not reads(spans, 3000) and not reads(spans, 2000)
    assert len(part_peaks(mass, passage=64, skip=64, drop=2.0)) == 4
    assert len(part_peaks(mass, passage=64, skip=64, drop=2.0, min_queries=1)) == 5  # the stray counts alone
    tight = choose_spans(mass, passage=64, budget=128, skip=64, drop=2.0)  # room for two passages
    assert len(tight) == 2 and reads(tight, 600)
    assert choose_spans(mass, passage=64, budget=512, skip=64, drop=None) == select_spans(
        mass.sum(dim=0), passage=64, budget=512, skip=64
    )  # no cliff: the whole budget by the summed attention, as before


def test_the_question_s_rare_words_keep_a_needle_its_attention_passes_over():
    """The attention peaks on the prose before the needle and on a distractor; the needle's key, two
    question tokens, is spelled there alone. The key's words point at it together and it joins the
    reading in place of the weakest choice, scored by its attention. A common word points nowhere, a
    phrase of the question met once by chance weighs under half the key's and is cut, a key spelled in
    two places points at neither, and without a cliff the words are not used."""
    tokens, needle = 4000, 2500
    mass = torch.full((6, tokens), 1e-4)
    mass[:, 2380:2390] = 1.0  # the prose ~100 tokens before the needle
    mass[:, 900:910] = 0.8  # a distractor
    words = torch.zeros(6, tokens)
    words[2:4, needle : needle + 3] = 2.0  # the key's two tokens
    words[5, [300, 1700, 3300]] = 0.3  # a common word here and there
    words[0, 3600] = 1.0  # a word found once by chance: one query points, no part
    words[4:6, 1300:1302] = 1.0  # a phrase of the question found once by chance

    def reads(spans: list[Span], token: int) -> bool:
        return any(s.start <= token < s.end for s in spans)

    choice = {"passage": 64, "budget": 128, "skip": 64, "drop": 2.0}
    assert not reads(choose_spans(mass, **choice), needle)
    spans = choose_spans(mass, **choice, words=words)
    assert len(spans) == 2 and reads(spans, needle) and reads(spans, 2385)  # the weaker distractor gave way
    at = next(s for s in spans if reads([s], needle))
    assert at.end >= needle + 3 and at.score == pytest.approx(float(mass[:, at.start : at.end].sum()))
    assert not reads(choose_spans(mass, **choice | {"budget": 512}, words=words), 1300)
    twice = words.clone()
    twice[2:4, 1200:1203] = 2.0  # the same key spelled again: no window stands out
    assert choose_spans(mass, **choice, words=twice) == choose_spans(mass, **choice)
    assert choose_spans(mass, **choice | {"drop": None}, words=words) == choose_spans(mass, **choice | {"drop": None})


def test_the_words_passage_joins_where_the_attention_s_window_cuts_the_value_beside_the_key():
    """The attention's window holds the key and stops inside the value after it; the window the key's
    words point at overlaps it and joins, so the reading (the two merged) holds the value whole."""
    tokens, key, value_end = 4000, 2500, 2530
    mass = torch.full((4, tokens), 1e-4)
    mass[:, 2470:2480] = 1.0
    words = torch.zeros(4, tokens)
    words[1:3, key : key + 3] = 2.0
    choice = {"passage": 64, "budget": 256, "skip": 64, "drop": 2.0}
    (alone,) = choose_spans(mass, **choice)
    assert alone.start <= key and alone.end < value_end  # the key read, the value cut
    read = merge(choose_spans(mass, **choice, words=words))
    assert any(a <= key and value_end <= b for a, b in read)


def test_sentences_end_at_stops_and_newlines(tokenizer):
    ids = tokenizer("It rains. Does it? Yes!\nThe 3.5 model")["input_ids"]
    ends = sentence_ends(tokenizer, ids)
    texts = [tokenizer.decode([i]) for i in ids]
    assert {t for i, t in zip(ids, texts) if i in ends} == {t for t in texts if t.rstrip()[-1:] in ".?!" or "\n" in t}
    sentences = Sentences.of(tokenizer, ids, reach=4)
    starts = sentences.bounds.tolist()
    assert starts[0] == 0 and starts[-1] == len(ids)
    assert tokenizer.decode(ids[starts[1] : starts[2]]).strip() == "Does it?"


def test_a_window_moves_to_hold_whole_the_sentence_it_cuts():
    """The best window is recentred on its mass; where it cuts the sentence holding that mass, it moves
    by at most the reach to the nearest start that holds the sentence whole (a slow reference: every start
    within reach scored by hand); beyond the reach, or with no sentences given, it stays."""
    mass = torch.zeros(400)
    mass[200:216] = 1.0  # a needle's key, in the sentence of tokens 170-225
    bounds = [0, 40, 90, 170, 225, 300, 400]
    (stay,) = select_spans(mass, passage=64, budget=64)
    assert stay.start == 177  # centred on the key: the sentence's first tokens are cut
    for reach, start in [(4, 177), (32, 170)]:
        (span,) = select_spans(mass, passage=64, budget=64, sentences=Sentences(torch.tensor(bounds), reach))
        assert span.start == start

        def whole(a: int) -> float:
            return sum(float(mass[x:y].sum()) for x, y in itertools.pairwise(bounds) if a <= x and y <= a + 64)

        best = max(whole(p) for p in range(stay.start - reach, stay.start + reach + 1))
        assert whole(span.start) == best and (best > 0) is (reach == 32)
    mass[100:110] = 2.0  # a stronger peak taken first: the window of the key may not move onto it
    spans = select_spans(mass, passage=64, budget=128, sentences=Sentences(torch.tensor(bounds), 80))
    assert len(spans) == 2 and spans[0].end <= spans[1].start


@pytest.mark.parametrize(
    "setting",
    [
        {"select_tokens": 0},
        {"passage_tokens": -1},
        {"exit_layer": -1},
        {"passage_tokens": 64, "select_tokens": 32},
        {"select_drop": 0.5},
        {"select_drop": "2"},
        {"select_cascade": 0},
    ],
)
def test_bad_select_settings_are_refused_naming_the_setting(make_engine, setting):
    engine = make_engine()
    with pytest.raises(FocusConfigError) as err:
        engine.generate_ids(random_ids(LONG), aggregation="select", **setting)
    assert err.value.setting == next(iter(setting))
    assert engine.stats.chunks_encoded == 0


def test_select_settings_the_model_cannot_serve_are_refused_before_anything_runs(make_engine):
    engine = make_engine()
    with pytest.raises(FocusConfigError) as err:
        engine.stream(random_ids(LONG), **SELECT, exit_layer=2)  # the model has 2 layers
    assert err.value.setting == "exit_layer"
    with pytest.raises(FocusConfigError) as err:
        engine.stream(random_ids(LONG), aggregation="select")  # 1024 tokens do not fit a 128-token window
    assert err.value.setting == "select_tokens"
    assert engine.stats.chunks_encoded == 0


def test_a_repeated_question_reuses_the_early_exit_prefixes(make_engine):
    engine = make_engine(**SELECT, select_cascade=None)  # one stage (tests/test_cascade.py has both)
    ids = random_ids(LONG, seed=8)
    first = engine.generate_ids(ids)
    encoded = engine.stats.chunks_encoded
    assert engine.generate_ids(ids[:-3] + random_ids(3, seed=9)) is not None
    assert engine.stats.chunks_encoded == encoded  # same document: every prefix from the cache
    assert engine.generate_ids(ids) == first
    assert engine.generate_ids(ids, aggregation="focus") is not None  # full prefixes are other entries
    assert engine.stats.chunks_encoded > encoded


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_a_second_question_over_the_same_selection_reuses_its_read(make_engine, arch, monkeypatch):
    """The read of a selection (``[BOS]`` + opening + spans, every layer) is kept in the prefix cache: the
    same selection read again starts from it, and gives the tokens a read run anew gives."""
    engine = make_engine(arch, **SELECT, select_drop=None)
    anew = FocusEngine(engine.model, engine.tokenizer, engine.config.replace(prefix_cache_bytes=0))
    hits = []
    read = engine.encoder.read

    def counted(sequence, tokens):
        hits.append((read(sequence, tokens), len(tokens)))

    monkeypatch.setattr(engine.encoder, "read", counted)
    ids = [1, *random_ids(LONG, seed=5)]
    other_question = ids[:-4] + random_ids(4, seed=6)
    first = engine.generate_ids(ids)
    assert engine.generate_ids(ids) == first == anew.generate_ids(ids)
    assert engine.generate_ids(other_question) == anew.generate_ids(other_question)
    (run, tokens), (reused, again) = hits[:2]
    assert run == 0 and reused == tokens == again  # run, then read from the cache whole
    assert hits[2][0] > 0 or arch == "gemma3_text"  # [BOS] and the opening, where no layer was trimmed
    assert engine.stats.reads_reused == sum(1 for shared, _ in hits if shared) >= 1
    assert engine.stats.read_tokens_reused == sum(shared for shared, _ in hits)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_a_read_sharing_a_start_with_an_earlier_one_runs_only_the_rest(make_engine, arch):
    """A read whose start an earlier read shares (the opening and the passages before the first that
    differs) takes that start's KV from the prefix cache, runs the rest, and holds what a read run anew
    holds; a read that is the start of an earlier one takes it all. Not where the earlier read's
    sliding-window layers kept only their window (Gemma 3's tiny window of 16): there only the same read."""
    engine = make_engine(arch, **SELECT)
    anew = make_engine(arch, **SELECT, prefix_cache_bytes=0)
    first, second = random_ids(90, seed=1), random_ids(90, seed=1)[:50] + random_ids(30, seed=2)

    def read(engine: FocusEngine, tokens: list[int]) -> tuple[int, torch.Tensor, SequenceBatch]:
        sequence = SequenceBatch(engine.runner, rows=1, capacity=len(tokens) + 2)
        shared = engine.encoder.read(sequence, (1, *tokens))
        return shared, sequence.append(torch.tensor([7]))[0], sequence

    assert read(engine, first)[0] == 0
    trimmed = engine.prefix_cache.entries()[-1].trimmed
    assert trimmed == (arch == "gemma3_text")
    shared, logits, sequence = read(engine, second)
    expected_logits, expected = read(anew, second)[1:]
    assert shared == engine.stats.read_tokens_reused == (0 if trimmed else 51)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    if not sequence.kv.windowed:
        for a, b in zip(sequence.kv.keys + sequence.kv.values, expected.kv.keys + expected.kv.values):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert read(engine, first[:40])[0] == (0 if trimmed else 41)
    assert read(engine, first)[0] == 91


def test_select_layout_declares_the_early_exit_buffers(make_engine):
    request = make_engine(**SELECT, exit_layer=0).request(random_ids(LONG))
    cfg, plan, layout = request.config, request.plan, request.layout
    read = min(cfg.passage_tokens + cfg.select_tokens, plan.memory_tokens)
    assert layout.state[0].slots == 1 + read + len(plan.local) + cfg.max_new_tokens and layout.kept.rows == 0
    assert layout.encode.nbytes(1000, 2) == layout.encode.rows * layout.encode.slots * 500  # one of two layers


def test_describe_says_what_runs_and_which_aggregation_auto_resolves_to(make_engine, tiny_dir):
    tiny = make_engine()  # no trained candidates, and the default selection does not fit 128: auto is entropy
    assert tiny.describe().endswith("native window 128; aggregation auto -> entropy")
    described = make_engine(select_tokens=48, passage_tokens=16).describe()
    assert (
        "auto -> select (exit layer 1 of 2) past 88 tokens, or whole where the question's attention spreads"
        in described
    )
    assert "dtype float32; attention sdpa (given)" in tiny.describe()
    engine = FocusEngine.from_pretrained(str(tiny_dir), TINY_CONFIG.replace(**SELECT), dtype="float32")
    text = engine.describe()
    assert "dtype float32 (asked for)" in text and "cpu" in text
    assert text.endswith("aggregation select -> select (exit layer 1 of 2) past 88 tokens")


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0.2, 0.8])
def test_relevance_picks_the_needle_passage_in_real_prose_on_the_embedded_model(embedded, depth):
    """A made-up fact in the 19K-token Python reference (past the 8K window): the passage the question
    attends to most holds it, decoding reads it, and the answer follows."""
    model, tokenizer = embedded
    engine = FocusEngine(model, tokenizer, FocusConfig(aggregation="select", max_new_tokens=12, progress=False))
    paragraphs = "\n\n".join(p.read_text() for p in sorted(REFERENCE.glob("*.txt"))).split("\n\n")
    at = int(len(paragraphs) * depth)
    needle = "At the harbour festival, the fish stew is always seasoned with smoked paprika from Murcia."
    document = "\n\n".join([*paragraphs[:at], needle, *paragraphs[at:]])
    question = "\n\nQuestion: What is the fish stew at the harbour festival seasoned with?\nAnswer: It is seasoned with"
    completion = engine.complete(document + question)
    assert engine.count_tokens(document) > 2 * engine.native_window
    assert "paprika" in max(completion.relevance, key=lambda s: s.score).text
    assert any("paprika" in s.text for s in completion.sources) and "paprika" in completion.text


@pytest.mark.slow
def test_the_question_is_found_through_the_embedded_models_chat_template_and_answer_cue(embedded):
    """A user's question asked through the chat template, or ending in a completion's ``Answer:``, reaches
    the probe as the question's own tokens: no turn markers, no answer cue, no document text."""
    _, tokenizer = embedded
    document, question = "The observatory reopened in May.\n\nIts telescope is new.", "Who named the new telescope?"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{document}\n\n{question}"}], tokenize=False, add_generation_prompt=True
    )
    for prompt in (chat, f"{document}\n\nQuestion: {question}\nAnswer:"):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids[-64:]
        start, end = question_rows(ids, *question_marks(tokenizer, ids))
        assert tokenizer.decode(ids[start:end]).strip().removeprefix("Question: ") == question
