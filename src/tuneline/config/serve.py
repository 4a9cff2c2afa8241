"""`serve` section: the OpenAI-compatible server, its canary split, limits and the feedback store."""

from typing import Literal

from pydantic import Field

from tuneline.config.base import Section


class ServeParams(Section):
    host: str = Field("127.0.0.1", description="Interface to listen on; off loopback an API key is required.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    canary_share: float = Field(
        0.1, ge=0, le=1, description="Share of users routed to the challenger (sticky per user)."
    )
    user_header: str = Field(
        "X-User-Id", description="Header with the user id for sticky routing (else the `user` field)."
    )
    store_url: str = Field(
        "sqlite:///feedback.db",
        description="Feedback store: SQLAlchemy URL; sqlite (embedded) or postgresql+psycopg://... .",
    )
    store_local_dir: str | None = Field(
        None,
        description="Folder for exchanges the store refused (<db>.quarantine.jsonl, with the reason) or did "
        "not commit before shutdown (<db>.spill-*.jsonl, written at the next start). null: beside a sqlite "
        "store's file, else ./feedback-local.",
    )
    api_keys_env: str = Field(
        "TUNELINE_API_KEYS", description="Environment variable with the accepted API keys (comma-separated)."
    )
    allow_open_off_loopback: bool = Field(
        False, description="Serve without API keys on a non-loopback host (never do this in production)."
    )
    default_max_tokens: int = Field(128, ge=1, description="Reply budget when a request names none.")
    max_tokens_limit: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    max_request_bytes: int = Field(65536, ge=1024, description="Largest request body accepted (413 above).")
    max_prompt_tokens: int = Field(
        2048, ge=1, description="Longest rendered prompt accepted, in tokens (400 above)."
    )
    max_batch_size: int = Field(8, ge=1, description="Requests generated together (same variant and budget).")
    batch_wait_ms: int = Field(5, ge=0, description="How long the batcher waits for more requests to join.")
    max_queue: int = Field(1024, ge=1, description="Requests waiting for generation before 503 (overload).")
    log_content: bool = Field(
        False, description="Write prompts and answers into the plain log (the store always keeps them)."
    )
    backend_url: str | None = Field(
        None,
        description="null: generate in this process; else an OpenAI-compatible backend serving the adapters "
        "as `champion` / `challenger` (vLLM, see `tuneline serve --print-vllm`), e.g. http://gpu:8001/v1.",
    )
    backend_api_key_env: str = Field(
        "TUNELINE_BACKEND_API_KEY", description="Environment variable with the backend's API key, if any."
    )
    reload_s: float = Field(
        30, ge=0, description="Poll the registry aliases this often and serve moved versions (0: never)."
    )
    device: str = Field("auto", description="auto (cuda when present) | cpu | cuda | cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model precision: auto = bf16 on a bf16 GPU, else fp32."
    )
