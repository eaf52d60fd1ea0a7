"""An LCEL chain `prompt | FocusLLM() | StrOutputParser()` over a document longer than the model's window.

The document is the Python language reference (three files, ~19K tokens) with one historical note
added; the embedded SmolLM2-135M-Instruct has an 8K window.

    python examples/langchain_chain.py
"""

import time
from pathlib import Path

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from focusllm_integrations.langchain import FocusLLM

DOCS = sorted((Path(__file__).parent / "data" / "python_reference").glob("*.txt"))


def main() -> None:
    document = "\n\n".join(path.read_text() for path in DOCS)
    llm = FocusLLM(max_new_tokens=16)
    prompt = PromptTemplate.from_template("{document}\n\nQuestion: {question}\nAnswer: {answer_start}")
    chain = prompt | llm.bind(stop=["\n"]) | StrOutputParser()
    start = time.perf_counter()
    answer = chain.invoke(
        {
            "document": document,
            "question": "Who was the editor of the first printed volume?",
            "answer_start": "The editor of the first printed volume was",
        }
    )
    print(f"document: {llm.get_num_tokens(document)} tokens, model window: {llm.engine.native_window}")
    print(f"answer: {answer.strip()}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
