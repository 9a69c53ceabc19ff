"""Model providers: the embedded engine, Ollama, Anthropic, OpenAI and compatibles."""
