"""ChatFocusLLM: a system message, the chat template, and the answer streamed token by token.

python examples/langchain_chat.py
"""

from langchain_core.messages import HumanMessage, SystemMessage

from focusllm_integrations.langchain import ChatFocusLLM, FocusLLM


def main() -> None:
    chat = ChatFocusLLM(llm=FocusLLM(max_new_tokens=48))
    messages = [
        SystemMessage("You are a concise assistant. Answer in one sentence."),
        HumanMessage("What is the capital of France?"),
    ]
    print("prompt as the model sees it:\n" + chat.render(messages))
    usage = None
    for chunk in chat.stream(messages):
        print(chunk.content, end="", flush=True)
        usage = chunk.usage_metadata or usage
    print(f"\nusage: {usage}")


if __name__ == "__main__":
    main()
