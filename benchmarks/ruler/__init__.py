"""RULER-format long-context tasks (Hsieh et al., arXiv 2404.06654) over our own haystacks, and their runner.

The tasks keep RULER's names and configurations (``scripts/synthetic.yaml`` of NVIDIA/RULER). A needle is
"One of the special magic {numbers|uuids} for <key> is: <value>."; keys are words, values 7-digit numbers
or UUIDs.

- ``niah_single_1``: one needle in the noise haystack ("The grass is green. ..." once per line).
- ``niah_single_2`` / ``niah_single_3``: one needle in real prose; the value a number / a UUID.
- ``niah_multikey_1``: four needles with different keys in prose; one key is asked.
- ``niah_multikey_2`` / ``niah_multikey_3``: the haystack is made of needles, one per line, with other keys
  (word keys and number values / UUID keys and values); one is asked.
- ``niah_multivalue``: four needles share one key; all four values are asked.
- ``niah_multiquery``: four needles with different keys; all four keys are asked at once.
- ``vt`` (variable tracking): a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... of 4 hops among noise
  lines, after one worked ~500-token example; the answer is the 5 variables holding the value.
- ``cwe`` (common words extraction): a numbered list of words where 10 words appear 30 times and the
  others 3 times (6 and 1 below 4K tokens), after one worked example; the answer is the 10 common words.
- ``fwe`` (frequent words extraction): "coded words" (6 random letters) drawn with Zipf counts (alpha 2),
  the most frequent one replaced by RULER's "..." dots; the answer is the next three.
- ``qa_1`` / ``qa_2``: a SQuAD (single-hop) / HotpotQA (two-hop) question over numbered documents: its
  gold ones, then related ones (the other paragraphs of its SQuAD article; HotpotQA's eight distractors),
  then others at random, shuffled; the metric is RULER's ``string_match_part`` (any reference).

Every sample belongs to a part of the held-out protocol (:mod:`benchmarks.ruler.protocol`): development
(tune here) or held-out (report here), which differ in seeds, prose haystacks, wording and qa questions.

Templates and answer prefixes are RULER's (``scripts/data/synthetic/constants.py``), word for word,
including its singular rewording of the niah template when one value is asked. The metric is RULER's
``string_match_all`` (``scripts/eval/synthetic/constants.py``): the fraction of the references that
appear in the reply, ignoring case. Length is RULER's: the prompt plus the task's ``tokens_to_generate``
fit in the length (the prompt is within 1% of filling it), counted with the tokenizer passed in.

Where this differs from RULER: the development part's real-prose haystack is CPython's reference
documentation (:func:`benchmarks.haystack.reference_prose`); the held-out part's are RULER's Paul Graham
essays and SQuAD's Wikipedia paragraphs, alternating; prose is cut into sentences by a regular expression
rather than NLTK; HotpotQA's gold documents are its two supporting ones (RULER keeps all ten); word keys
join two words of :func:`word_list` (built from the CPython documentation) with a hyphen, as RULER joins
an adjective and a noun; ``cwe`` draws its words from that
list and, where a length needs more distinct words than the list holds, multiplies both frequencies by
the same factor (RULER switches to a larger dictionary); randomness comes from Python's ``random``
seeded by (task, length, seed).

    python -m benchmarks.ruler --lengths 4096 8192 16384 32768 65536 131072 --samples 10 --tasks all \\
        --methods entropy focus auto full truncation rag --rag-top-k 4 --rag-chunk-size 256 --resume
    python -m benchmarks.ruler --part heldout --lengths 32768 --samples 5 --methods select rag
    python -m benchmarks.ruler --recall --lengths 16384 32768 131072 --samples 10 --signals likelihood

The first writes ``benchmarks/results/ruler.json`` (the held-out part: ``benchmarks/results/heldout/``)
after every case (``--resume`` skips the cases it already holds) and the heatmap ``docs/ruler.png``; the
second writes the recall of the answer chunks by the engine's own relevance to
``benchmarks/results/relevance_recall.json`` (prompts that fit the native window have no chunks, hence no
recall).
"""

from .protocol import DEV, HELDOUT, PARTS, Part
from .recall import answer_chunk_recall, run_recall, summarize_recall
from .runner import NEW_TOKENS, make_methods, needle_coverage, plot_heatmaps, run_suite, summarize
from .tasks import (
    NIAH,
    NOISE,
    QA,
    TASKS,
    TOKENS_TO_GENERATE,
    Sample,
    family,
    make_sample,
    string_match_all,
    string_match_part,
    word_list,
)

__all__ = [
    "DEV",
    "HELDOUT",
    "NEW_TOKENS",
    "NIAH",
    "NOISE",
    "PARTS",
    "QA",
    "Part",
    "TASKS",
    "TOKENS_TO_GENERATE",
    "Sample",
    "answer_chunk_recall",
    "family",
    "make_methods",
    "make_sample",
    "needle_coverage",
    "plot_heatmaps",
    "run_recall",
    "run_suite",
    "string_match_all",
    "string_match_part",
    "summarize",
    "summarize_recall",
    "word_list",
]
