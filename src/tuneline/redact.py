"""Credentials out of everything tuneline logs, prints or records (log lines, MLflow params, reports).

`redact` masks, in any text or nested structure of texts:

- the password of a URL's userinfo: `postgresql+psycopg://app:s3cret@db/x` -> `postgresql+psycopg://app:***@db/x`;
- the value of a secret-looking `name=value` (query strings, libpq keyword strings): `password=`,
  `sslpassword=` (libpq's client-key passphrase), `token=`,
  `api_key=`, `access_token=`, `client_secret=`, `key=`, `sig=`, ... (`max_tokens=` is not one);
- the value of every environment variable whose name contains KEY, SECRET, TOKEN or PASSWORD (and each
  comma-separated item of it: `TUNELINE_API_KEYS=a,b`), wherever it appears. Values shorter than
  `MIN_SECRET_CHARS` are left alone: `TOKENIZERS_PARALLELISM=false` is not a secret.

`RedactingFilter` applies it to every record a logging handler emits, so a log line is redacted even
when its call site forgot to.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
MIN_SECRET_CHARS = 6
SECRET_ENV_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD")

# scheme://user:password@host (user may be empty: redis://:pw@host; an unescaped @ in the password is
# kept inside it: the host starts after the last @).
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<secret>[^/?#\s]+)(?=@[^@/?#\s]*(?:[/?#\s]|$))")
# name=value where the name (the part after the last separator) names a secret.
_SECRET_NAME = (r"(?:[A-Za-z0-9]*[_\-.])*(?:password|sslpassword|passwd|pwd|secret|token|api[_\-]?key|apikey|"
                r"access[_\-]?key|private[_\-]?key|key|sig|signature|credentials?|auth)")
_ASSIGNMENT = re.compile(rf"(?P<head>(?<![A-Za-z0-9_\-.]){_SECRET_NAME}=)(?P<secret>[^&#\s'\",;]+)",
                         re.IGNORECASE)


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values (and comma-separated items) of secret-named environment variables, longest first."""
    env = os.environ if environ is None else environ
    values: set[str] = set()
    for name, value in env.items():
        if any(word in name.upper() for word in SECRET_ENV_WORDS) and value:
            for item in [value, *value.split(",")]:
                item = item.strip()
                if len(item) >= MIN_SECRET_CHARS:
                    values.add(item)
    return sorted(values, key=len, reverse=True)  # a key that contains another is masked whole


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with URL passwords, secret `name=value` values and secret env values masked."""
    for value in secret_env_values(environ):
        text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: m["head"] + MASK, text)
    return _ASSIGNMENT.sub(lambda m: m["head"] + MASK, text)


def redact(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`value` with credentials masked: a string, or (recursively) the strings of a dict / list / tuple.

    Other values (numbers, None, paths as objects) are returned unchanged.
    """
    if isinstance(value, str):
        return redact_text(value, environ)
    if isinstance(value, Mapping):
        return {k: redact(v, environ) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v, environ) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message (arguments merged in) and exception text, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when it formats the record
            return True
        if record.exc_info:
            # Handlers render exc_info themselves (rich draws its own traceback): hand them text instead.
            message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = redact_text(message), None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a `RedactingFilter` to every handler of `logger` (default: the root logger), once each."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
