"""The inference server: OpenAI-compatible API, A/B routing, batching, streaming, hot reload of aliases."""
