"""Where a model is loaded from: `model.name_or_path` resolved against the workspace."""

from __future__ import annotations

from pathlib import Path

from tuneline.config.loader import Config
from tuneline.layout import Layout


def resolve_model_path(cfg: Config, layout: Layout) -> str:
    """`model.name_or_path` relative to the layout root when it exists there, else as given (hub id)."""
    given = Path(cfg.model.name_or_path).expanduser()
    local = given if given.is_absolute() else layout.root / given
    return str(local) if local.exists() else cfg.model.name_or_path
