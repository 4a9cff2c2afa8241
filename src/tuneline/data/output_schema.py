"""Structured outputs: load `task.output_schema` once and explain why an assistant output misses it.

Shared by `clean` (drops rows whose outputs fail), `validate_raw` and `validate_splits` (measure it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneline.errors import ConfigError
from tuneline.records import assistant_outputs


def load_output_schema(path: Path | str) -> Any:
    """A jsonschema validator for the `task.output_schema` file.

    Raises:
        ConfigError: the file is missing, not JSON, or not a valid JSON Schema (naming the file).
    """
    import jsonschema

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task.output_schema: schema file not found: {path}")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"task.output_schema: {path} is not readable JSON: {exc}") from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"task.output_schema: {path} is not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


def output_error(content: Any, validator: Any) -> str | None:
    """Why one assistant output does not satisfy the schema (None when it does)."""
    if isinstance(content, str):
        try:
            value = json.loads(content)
        except json.JSONDecodeError as exc:
            return f"output is not JSON: {exc.msg} at char {exc.pos}"
    else:
        value = content
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"output fails the schema at {where}: {error.message}"


def record_output_error(record: dict[str, Any], validator: Any) -> str | None:
    """None when every assistant output of `record` validates; else the first problem, with its turn."""
    try:
        outputs = assistant_outputs(record)
    except (KeyError, TypeError):
        return "messages are malformed"
    for turn, text in enumerate(outputs, start=1):
        why = output_error(text, validator)
        if why is not None:
            return f"assistant turn {turn}: {why}"
    return None
