"""One question-answering prompt: the CLI and both integrations fill the same text."""

from __future__ import annotations

from focus_core.prompts import qa_prompt
from focusllm_integrations import langchain, llamaindex


def test_integrations_default_templates_fill_the_cli_prompt():
    expected = "Some text.\n\nQuestion: Who?\nAnswer:"
    assert qa_prompt("Some text.", "Who?") == expected
    assert langchain.DEFAULT_QA_TEMPLATE.format(documents="Some text.", question="Who?") == expected
    assert llamaindex.DEFAULT_QA_TEMPLATE.format(context_str="Some text.", query_str="Who?") == expected


def test_answer_prefix_begins_the_answer():
    assert qa_prompt("T", "Q", "  The editor was ") == "T\n\nQuestion: Q\nAnswer: The editor was"
    assert qa_prompt("T", "Q", "   ") == qa_prompt("T", "Q")
