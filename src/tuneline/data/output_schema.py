"""Structured outputs: load `task.output_schema` once and explain why an assistant output misses it.

`task.output_schema` is either one JSON Schema file (every row's assistant outputs are structured) or a
mapping {category: file} (only rows of those categories are; the rest, rows without a category included,
are free text). `load_output_schemas` turns either into an `OutputSchemas`, which answers "which
validator, if any, judges this row?" the same way for `clean`, `validate_raw`, `validate_splits` and
`evaluate`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.errors import ConfigError
from tuneline.records import assistant_outputs

KEY = "task.output_schema"


def load_output_schema(path: Path | str, key: str = KEY) -> Any:
    """A jsonschema validator for one schema file.

    Args:
        path: the JSON Schema file.
        key: the setting it comes from, for error messages (`task.output_schema.<category>` for one
            category of the mapping form).

    Raises:
        ConfigError: the file is missing, not JSON, or not a valid JSON Schema (naming the key and file).
    """
    import jsonschema  # lazy: jsonschema ~1.2 s; only when an output schema is configured

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: schema file not found: {path}")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}: {path} is not readable JSON: {exc}") from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{key}: {path} is not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


@dataclass(frozen=True)
class OutputSchemas:
    """The validators of `task.output_schema`.

    Attributes:
        every_row: the validator of the single-file form (every row is structured), else None.
        by_category: category -> validator (the mapping form); empty for the single-file form.
        files: what was loaded, for reports: {"*": file} or {category: file}.
    """

    every_row: Any | None = None
    by_category: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def for_category(self, category: Any) -> Any | None:
        """The validator judging a row of `category` (None: the row is free text)."""
        if self.every_row is not None:
            return self.every_row
        if category is None or category == "":
            return None
        return self.by_category.get(str(category))

    def for_record(self, record: Mapping[str, Any]) -> Any | None:
        """The validator judging `record`'s assistant outputs (None: free text)."""
        return self.for_category(record.get("category"))

    @property
    def categories(self) -> list[str] | None:
        """The structured categories, sorted; None when every row is structured."""
        return None if self.every_row is not None else sorted(self.by_category)

    def setting(self) -> str | dict[str, str]:
        """The setting as reports show it: the file, or {category: file}."""
        return self.files["*"] if self.every_row is not None else dict(self.files)

    def describe(self) -> str:
        """Which rows are structured and by which file, for expectation texts and logs."""
        if self.every_row is not None:
            return f"assistant outputs of every record parse as JSON and match {self.files['*']}"
        pairs = ", ".join(f"{c}: {self.files[c]}" for c in sorted(self.files))
        return (f"assistant outputs of records of the categories with a schema ({pairs}) parse as JSON and "
                "match their schema")


def load_output_schemas(setting: Path | str | Mapping[str, Path | str] | None) -> OutputSchemas | None:
    """Validators for a `task.output_schema` value: a file for every row, or {category: file}.

    Returns:
        None when the setting is None (free text everywhere).

    Raises:
        ConfigError: a file is missing, unreadable or not a JSON Schema; the message names the file and,
            in the mapping form, its category (`task.output_schema.<category>`).
    """
    if setting is None:
        return None
    if isinstance(setting, Mapping):
        by_category = {str(c): load_output_schema(p, f"{KEY}.{c}") for c, p in setting.items()}
        return OutputSchemas(by_category=by_category, files={str(c): str(p) for c, p in setting.items()})
    return OutputSchemas(every_row=load_output_schema(setting), files={"*": str(setting)})


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
    """None when every assistant output of `record` validates; else the first problem, with its turn.

    `validator` may be one jsonschema validator, or an `OutputSchemas` (the record's category picks its
    validator; a free-text record has no problem).
    """
    if isinstance(validator, OutputSchemas):
        validator = validator.for_record(record)
        if validator is None:
            return None
    try:
        outputs = assistant_outputs(record)
    except (KeyError, TypeError):
        return "messages are malformed"
    for turn, text in enumerate(outputs, start=1):
        why = output_error(text, validator)
        if why is not None:
            return f"assistant turn {turn}: {why}"
    return None
