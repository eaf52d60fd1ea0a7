"""LangChain and LlamaIndex integrations of FocusLLM (thin wrappers over focus_core).

The wrappers land with the integrations issue; this package exists so the layout is fixed.
"""
