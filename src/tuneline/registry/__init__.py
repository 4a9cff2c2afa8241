"""MLflow model registry: candidates as pyfunc versions (base + LoRA adapter), lineage, loading back."""

from tuneline.registry.registry import (
    RegistryError,
    aliases_of,
    load_version,
    parity_check,
    register_candidate,
    set_version_tags,
    version_info,
)

__all__ = [
    "RegistryError",
    "aliases_of",
    "load_version",
    "parity_check",
    "register_candidate",
    "set_version_tags",
    "version_info",
]
