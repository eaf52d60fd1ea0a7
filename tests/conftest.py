"""Shared fixtures: tiny randomly initialised models (fast) and the embedded default model (real)."""

from __future__ import annotations

import pydoc_data.topics
from functools import cache

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from focus_core import FocusConfig, FocusEngine, load_model

TINY_ARCHS = ("llama", "mistral", "qwen2", "gemma3_text")
VOCAB = 4096  # the tiny tokenizer's vocabulary, shared by the tiny models
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of :data:`VOCAB` tokens trained here on CPython's reference docs (~1 s),
    with SmolLM2's special tokens (BOS ``<|im_start|>`` = 1, EOS ``<|im_end|>`` = 2) and a ChatML template:
    the tiny-model tests need no model files."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = " ".join(pydoc_data.topics.topics.values())
    bpe.train_from_iterator([text[i : i + 10_000] for i in range(0, len(text), 10_000)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        chat_template=CHATML,
    )


def tiny_model(
    model_type: str, *, seed: int = 0, window: int = 512, init_std: float = 0.3, layers: int = 2, **config
) -> torch.nn.Module:
    """A random model (2 layers unless told) of ``model_type`` with grouped-query attention, fp32, SDPA;
    ``config`` overrides its configuration.

    Weights are drawn wider than usual (std 0.3) so that the next token depends on the context.
    """
    if model_type == "gpt2":
        config = AutoConfig.for_model(
            "gpt2",
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=window,
            bos_token_id=1,
            eos_token_id=2,
            initializer_range=0.3,
        )
    else:
        config = AutoConfig.for_model(
            model_type,
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=window,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            tie_word_embeddings=True,
            initializer_range=init_std,
            **GEMMA3 if model_type == "gemma3_text" else {},
            **config,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.eval().requires_grad_(False)


# Gemma 3's shape in small: a sliding-window layer (window 16, RoPE base 10K) under a global one (1M).
GEMMA3 = {"head_dim": 16, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]}


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random llama saved as a Hugging Face model folder (with the tiny tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TINY_CONFIG = FocusConfig(
    chunk_size=32, local_window=24, dynamic_prompt_len=8, max_new_tokens=6, native_window=128, progress=False
)


@pytest.fixture
def make_engine(tokenizer):
    def make(model_type: str = "llama", **overrides) -> FocusEngine:
        return FocusEngine(tiny_model(model_type), tokenizer, TINY_CONFIG.replace(**overrides))

    return make


def random_ids(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, VOCAB, (n,), generator=g).tolist()


@pytest.fixture(scope="session")
def embedded():
    """The embedded default model and tokenizer, loaded once per session (automatic precision: bf16 on a CPU
    with bf16 instructions, else fp32)."""
    return load_model()
