"""LangChain and LlamaIndex integrations of FocusLLM: thin wrappers over focus_core.

``from focusllm_integrations import FocusLLM`` is the LangChain LLM; the LlamaIndex classes live in
``focusllm_integrations.llamaindex``. Each framework is imported only when its wrappers are used, so
installing one extra (``[langchain]`` or ``[llamaindex]``) is enough.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FocusLLM"]


def __getattr__(name: str) -> Any:
    if name == "FocusLLM":
        from .langchain import FocusLLM

        return FocusLLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
