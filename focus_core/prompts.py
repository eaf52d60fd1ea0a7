"""The default question-answering prompt, shared by the CLI and both integrations.

Completion style (``Question: ... Answer:``), which small instruct models follow better than their chat
template on long documents (README, "Limits"); each ecosystem fills it under its own placeholder names.
"""

from __future__ import annotations

QA_TEMPLATE = "{context}\n\nQuestion: {question}\nAnswer:"


def qa_template(context: str, question: str) -> str:
    """:data:`QA_TEMPLATE` with its placeholders renamed, e.g. ``qa_template("context_str", "query_str")``."""
    return QA_TEMPLATE.format(context="{" + context + "}", question="{" + question + "}")


def qa_prompt(context: str, question: str, answer_prefix: str = "") -> str:
    """The filled prompt; a non-blank ``answer_prefix`` begins the answer after ``Answer:``."""
    prefix = f" {answer_prefix.strip()}" if answer_prefix.strip() else ""
    return QA_TEMPLATE.format(context=context, question=question) + prefix
