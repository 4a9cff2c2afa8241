"""Credentials never reach a log line, an MLflow param or tag, `config show`, or an error message.

Fault covered: the server logged the raw serve.store_url, password included, and the training run's
MLflow params / train_run.json recorded URLs as given."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import empty_registry
from tuneline.config import dump_config, load_config
from tuneline.feedback.store import FeedbackStore, StoreError
from tuneline.redact import MASK, install_log_redaction, redact
from tuneline.serve.server import startup_line

PASSWORD = "hunter2-" + "pw"  # not spelled whole in a source line a traceback could print
STORE_URL = f"postgresql+psycopg://app:{PASSWORD}@db.internal:5432/feedback"


def test_redact_masks_url_passwords_secret_parameters_and_secret_env_values() -> None:
    env = {"TUNELINE_API_KEYS": "key-one-123,key-two-456", "HF_TOKEN": "hf_abcdefghij",
           "TOKENIZERS_PARALLELISM": "false", "HOME": "/root"}
    assert redact(STORE_URL, env) == f"postgresql+psycopg://app:{MASK}@db.internal:5432/feedback"
    assert redact("redis://:pw@cache/0", env) == f"redis://:{MASK}@cache/0"
    assert redact("postgresql://u:p@ss@host/db", env) == f"postgresql://u:{MASK}@host/db"  # unescaped @
    assert redact("http://gpu:8001/v1?api_key=abc&x=1&access_token=t0k", env) == \
        f"http://gpu:8001/v1?api_key={MASK}&x=1&access_token={MASK}"
    assert redact("host=db password=s3cret user=app", env) == f"host=db password={MASK} user=app"
    assert redact("Bearer key-two-456 from hf_abcdefghij", env) == f"Bearer {MASK} from {MASK}"
    # Not secrets: token counts, short env values, URLs without a password, plain paths.
    for text in ("max_tokens=6 prompt_tokens=3", "false", "sqlite:///feedback.db", "http://u@h/x", "/root/x"):
        assert redact(text, env) == text
    nested = redact({"serve": {"store_url": STORE_URL, "port": 8000}, "list": [STORE_URL]}, env)
    assert PASSWORD not in str(nested) and nested["serve"]["port"] == 8000


def test_server_startup_line_masks_the_store_password() -> None:
    cfg = load_config(None, [f"serve.store_url={STORE_URL}",
                             f"serve.backend_url=http://gpu:8001/v1?api_key={PASSWORD}"])
    state = SimpleNamespace(models=SimpleNamespace(model_name="m", versions={"champion": "3"}), api_keys=[])
    line = startup_line(cfg, state, "127.0.0.1", 8000)
    assert PASSWORD not in line and f"app:{MASK}@db.internal" in line and "api_key=***" in line


def test_config_show_masks_credentials() -> None:
    shown = dump_config(load_config(None, [f"serve.store_url={STORE_URL}"]))
    assert PASSWORD not in shown and f"app:{MASK}@db.internal" in shown


def test_every_log_line_is_redacted_once_the_cli_set_up_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    install_log_redaction()  # what the CLI's logging set-up does (here on pytest's capture handler)
    log = logging.getLogger("tuneline.anything")
    log.info("opening %s", STORE_URL)
    try:
        raise RuntimeError(f"cannot connect to {STORE_URL}")
    except RuntimeError:
        log.exception("store failed")
    assert "opening postgresql+psycopg://app:***@db.internal" in caplog.text
    assert "RuntimeError: cannot connect" in caplog.text and PASSWORD not in caplog.text


def test_store_errors_do_not_show_the_password() -> None:
    with pytest.raises(StoreError) as bad:
        FeedbackStore(f"postgresql+psycopg://app:{PASSWORD}@db:notaport/feedback")
    assert "not a database URL" in str(bad.value) and PASSWORD not in str(bad.value)


def test_mlflow_params_and_tags_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from tuneline.tracking import end_run, start_run

    monkeypatch.chdir(tmp_path)
    uri = empty_registry(tmp_path)
    params = {"serve.store_url": STORE_URL, "lr": "0.001"}
    run = start_run(uri, "tuneline", {"source": STORE_URL}, params, "r")
    end_run(uri, run, "FINISHED", {"backend": f"http://gpu/v1?token={PASSWORD}"})
    data = mlflow.MlflowClient(tracking_uri=uri).get_run(run).data
    assert data.params["lr"] == "0.001" and data.params["serve.store_url"].startswith("postgresql+psycopg://app:")
    assert PASSWORD not in str(data.params) and PASSWORD not in str(data.tags)


def test_lines_uvicorn_logs_itself_are_redacted() -> None:
    """uvicorn sets up handlers of its own (not the root's): they must redact too."""
    import io

    from tuneline.serve.server import uvicorn_config

    uvicorn_config(lambda scope, receive, send: None, "127.0.0.1", 0)
    handlers = logging.getLogger("uvicorn").handlers  # uvicorn.error propagates to them, not to the root
    assert handlers, "uvicorn configured no handler of its own"
    stream = io.StringIO()
    for handler in handlers:
        handler.setStream(stream)
    logging.getLogger("uvicorn.error").error("cannot reach postgresql://app:s3cret-pass@db:5432/feedback")
    assert "s3cret-pass" not in stream.getvalue() and "db:5432" in stream.getvalue()
