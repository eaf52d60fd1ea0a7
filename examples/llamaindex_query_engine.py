"""LlamaIndex without retrieval: SimpleDirectoryReader -> FocusQueryEngine -> two questions.

Every question reads all ~19K tokens of the folder; the second is much faster because the documents'
encoded chunks are reused. The 135M default model answers completion-style prompts, so the queries
are phrased as the start of the answer.

    python examples/llamaindex_query_engine.py
"""

import time
from pathlib import Path

from llama_index.core import SimpleDirectoryReader

from focusllm_integrations.llamaindex import FocusLlamaIndexLLM, FocusQueryEngine

FOLDER = Path(__file__).parent / "data" / "python_reference"
TEMPLATE = "{context_str}\n\n{query_str}"
QUESTIONS = [
    "Question: Who was the editor of the first printed volume?\nAnswer: The editor of the first printed volume was",
    "Question: Which press printed the first volume?\nAnswer: The first volume was printed by the",
]


def main() -> None:
    # Only the file name as metadata: results must not depend on where the repository is checked out.
    documents = SimpleDirectoryReader(
        str(FOLDER), file_metadata=lambda path: {"file_name": Path(path).name}
    ).load_data()
    llm = FocusLlamaIndexLLM(max_new_tokens=12, generate_kwargs={"stop": ["\n"]})
    engine = FocusQueryEngine.from_documents(documents, llm=llm, prompt_template=TEMPLATE)
    for question in QUESTIONS:
        start = time.perf_counter()
        response = engine.query(question)
        top = response.source_nodes[0]  # the most relevant passage the answer was read from
        print(
            f"{question.splitlines()[0]}\n  -> {response.response.strip()}  "
            f"({time.perf_counter() - start:.1f} s, {len(response.source_nodes)} source passages, "
            f"chunks encoded so far: {llm.engine.stats.chunks_encoded}, reused: {llm.engine.stats.chunks_reused})\n"
            f"  top source: {top.node.metadata['file_name']}, relevance {top.score:.1f}: "
            f"{top.node.text[:80]!r}..."
        )


if __name__ == "__main__":
    main()
