"""Shared fixtures: tiny randomly initialised models (fast) and the embedded default model (real)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from focus_core import FocusConfig, FocusEngine, load_model
from focus_core.loading import _embedded_checkpoint

TINY_ARCHS = ("llama", "mistral", "qwen2")
VOCAB = 49152  # the embedded tokenizer's vocabulary, shared by the tiny models


def tiny_model(model_type: str, *, seed: int = 0, window: int = 512, init_std: float = 0.3) -> torch.nn.Module:
    """A 2-layer random model of ``model_type`` with grouped-query attention, fp32, SDPA.

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
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=window,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            tie_word_embeddings=True,
            initializer_range=init_std,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(_embedded_checkpoint())


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
    """The embedded default model and tokenizer, loaded once per session (bf16)."""
    return load_model()
