"""Follow the registry: when `champion` or `challenger` move, serve the new versions without a restart.

A promotion (by the gate or `tuneline ab decide`), a rollback or a retired challenger changes the
aliases in MLflow; the server polls them every `serve.reload_s` seconds. New versions are downloaded on
the watcher's thread, then their adapters are attached on the generation thread between two batches
(`Batcher.call`), so no request ever sees a half-loaded model. The routing experiment is derived from
the served versions, so users are reshuffled for a new challenger automatically. A version that cannot
share the loaded base is refused (logged; `/health` shows the error) and the old versions keep serving.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from tuneline.registry.registry import aliases_of
from tuneline.serve.models import challenger_problem, download_version

logger = logging.getLogger(__name__)


class AliasWatcher:
    """A daemon thread that applies alias changes to the served models."""

    def __init__(self, uri: str, model_name: str, aliases: dict[str, str], models: Any, batcher: Any,
                 interval_s: float, with_challenger: bool, cache_dir: Path | None = None) -> None:
        self.uri = uri
        self.model_name = model_name
        self.aliases = aliases
        self.models = models
        self.batcher = batcher
        self.interval_s = interval_s
        self.with_challenger = with_challenger
        self.cache_dir = cache_dir
        self.last_error: str | None = None
        self.skipped: str | None = None  # why the current challenger is not served, if it is not
        self.reloads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneline-alias-watcher", daemon=True)
        self._thread.start()

    def wanted(self) -> dict[str, str]:
        """variant -> version the aliases name now."""
        current = aliases_of(self.uri, self.model_name)
        out = {}
        champion = current.get(self.aliases["champion"])
        if champion is not None:
            out["champion"] = champion
        challenger = current.get(self.aliases["challenger"]) if self.with_challenger else None
        if challenger is not None and challenger != champion:
            problem = challenger_problem(self.uri, self.model_name, challenger)
            if problem is None:
                out["challenger"] = challenger
            elif problem != self.skipped:
                logger.warning("serve: not serving the challenger: %s", problem)
            self.skipped = problem
        return out

    def check(self) -> bool:
        """One poll: apply a change if there is one. Returns True when the served versions changed."""
        wanted = self.wanted()
        if not wanted.get("champion") or wanted == self.models.versions:
            return False
        files = [download_version(self.uri, self.model_name, version, variant, self._dir())
                 for variant, version in wanted.items()]
        before = dict(self.models.versions)

        def apply() -> None:  # on the generation thread: the count moves right after the versions
            self.models.apply(files)
            self.reloads += 1

        self.batcher.call(apply).result(timeout=600)
        logger.warning("serve: aliases moved: now %s (was %s)", _describe(wanted), _describe(before))
        return True

    def _dir(self) -> Path:
        if self.cache_dir is None:
            self.cache_dir = Path(tempfile.mkdtemp(prefix="tuneline-serve-"))
        return self.cache_dir

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
                self.last_error = None
            except Exception as exc:  # the registry may be briefly unreachable: keep serving, retry
                message = f"{exc.__class__.__name__}: {exc}"
                if message != self.last_error:
                    logger.error("serve: cannot follow the registry aliases: %s", message)
                self.last_error = message

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _describe(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} v{v}" for k, v in versions.items()) or "nothing"
