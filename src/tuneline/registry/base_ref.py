"""The base model a registered version was trained on: a reference to it, and its resolution on load.

A real base is gigabytes; copying it into every version's MLflow artifacts would store it again per
promotion. A version therefore refers to its base (`registry.copy_base: false`, the default):

- a local directory: its absolute path and a content hash (`base_sha256`). Loading recomputes the hash
  and refuses, naming both hashes, when the directory now holds something else: a version never
  silently runs on a different base than the one it was evaluated on.
- a Hugging Face hub id: the id and the revision. The revision is the commit the local hub cache
  resolved when the version was registered (what training loaded), else the branch name. Loading
  fetches exactly that revision (`huggingface_hub.snapshot_download`, which uses the cache first).

`registry.copy_base: true` copies the base into the version as well (air-gapped serving); the
reference is still recorded, for lineage.

The reference lives in the pyfunc's model config, flat keys (`base_kind`, `base_model_path` +
`base_sha256`, or `base_hub_id` + `base_revision`), readable from the MLmodel file by every loader
(the pyfunc, the server, the evaluate stage's champion) through `registered_base`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneline.errors import TunelineError

logger = logging.getLogger(__name__)

# What makes a base behave as it does: weights, configs, tokenizer files, chat templates, and the
# modelling code of trust_remote_code checkpoints. READMEs, licences and VCS files are left out.
HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".tiktoken", ".txt", ".jinja", ".py")
_CHUNK = 8 * 2**20
# (absolute path, size, mtime_ns) -> sha256 of the file: a base is hashed at registration and again at
# each load in the same process (promote's parity check, the server's reloads); read it once.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


class BaseModelError(TunelineError):
    """A version's base cannot be found, or is not the base the version was registered with."""


@dataclass(frozen=True)
class BaseRef:
    """Where a version's base model is: a local directory (with its content hash) or a hub id + revision."""

    kind: Literal["path", "hub"]
    location: str  # absolute directory, or the hub id
    sha256: str | None = None  # content hash of the directory (kind "path")
    revision: str | None = None  # hub revision (kind "hub")

    def to_config(self) -> dict[str, str]:
        """The flat keys stored in the pyfunc's model config."""
        if self.kind == "path":
            out = {"base_kind": "path", "base_model_path": self.location}
            if self.sha256:
                out["base_sha256"] = self.sha256
            return out
        return {"base_kind": "hub", "base_hub_id": self.location, "base_revision": self.revision or "main"}

    def to_tags(self) -> dict[str, str]:
        """Version tags that show the base in the registry UI (`base.path` + `base.sha256`, or
        `base.hub_id` + `base.revision`)."""
        if self.kind == "path":
            return {"base.path": self.location, "base.sha256": self.sha256 or ""}
        return {"base.hub_id": self.location, "base.revision": self.revision or "main"}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BaseRef | None:
        """The reference in a model config; None when there is none. A version registered before hashes
        were recorded has a `base_model_path` only: a path reference without a hash."""
        if config.get("base_kind") == "hub" or config.get("base_hub_id"):
            return cls("hub", str(config["base_hub_id"]), revision=str(config.get("base_revision") or "main"))
        if config.get("base_model_path"):
            return cls("path", str(config["base_model_path"]), sha256=config.get("base_sha256") or None)
        return None

    def describe(self) -> str:
        if self.kind == "path":
            return f"{self.location} (sha256 {(self.sha256 or 'not recorded')[:12]})"
        return f"{self.location}@{self.revision or 'main'}"


def hashed_files(base_dir: Path) -> list[Path]:
    """The files `base_sha256` covers, sorted by their path relative to `base_dir` (hidden ones skipped)."""
    files = []
    for path in base_dir.rglob("*"):
        rel = path.relative_to(base_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.name.endswith(HASHED_SUFFIXES):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(base_dir).as_posix())


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def base_sha256(base_dir: str | Path) -> str:
    """Content hash of a base model directory: sha256 over each weight / config / tokenizer file's
    relative name and content hash, in name order (deterministic; independent of paths and mtimes).

    Raises:
        BaseModelError: not a directory, or no model file in it.
    """
    root = Path(base_dir)
    if not root.is_dir():
        raise BaseModelError(f"base model directory {root} does not exist")
    files = hashed_files(root)
    if not files:
        raise BaseModelError(f"base model directory {root} holds no weights, config or tokenizer file")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _cached_commit(repo_id: str, revision: str) -> str | None:
    """The commit `revision` of `repo_id` resolves to in the local hub cache (what from_pretrained
    loaded), or None when the cache does not have it."""
    from huggingface_hub import try_to_load_from_cache  # lazy: hub API (httpx, anyio) 0.2-1 s

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(found, str):
        return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def reference_base(base: str | Path, revision: str = "main") -> BaseRef:
    """The reference a new version records for `base`: a local directory (hashed) or a hub id.

    Args:
        base: the base as training resolved it (`resolve_model_path`): an existing directory, or a hub id.
        revision: the hub revision training asked for; pinned to its commit when the local cache has it.
    """
    path = Path(base).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        return BaseRef("path", str(resolved), sha256=base_sha256(resolved))
    commit = _cached_commit(str(base), revision)
    if commit is None:
        logger.warning(
            "registry: %s@%s is not in the local hub cache; the version refers to the revision name, "
            "which the hub may move", base, revision,
        )
    return BaseRef("hub", str(base), revision=commit or revision)


def resolve_base(ref: BaseRef) -> BaseRef:
    """Check a reference before loading: a directory must still hold the base it was registered with.

    Returns:
        The reference, unchanged (a hub reference is loaded by id + revision as recorded).

    Raises:
        BaseModelError: the directory is missing, or its content hash differs (both hashes named).
    """
    if ref.kind == "hub":
        return ref
    if not Path(ref.location).is_dir():
        raise BaseModelError(f"base model path {ref.location} is not on this host")
    if ref.sha256 is None:
        logger.warning("registry: base %s has no recorded hash (an older version); loaded unchecked",
                       ref.location)
        return ref
    found = base_sha256(ref.location)
    if found != ref.sha256:
        raise BaseModelError(
            f"base model {ref.location} changed since the version was registered: registered sha256 "
            f"{ref.sha256}, found {found}. Restore that base, or register a new version on this one"
        )
    return ref


def local_base_dir(ref: BaseRef) -> str:
    """A directory holding the referenced base (a hub revision is fetched, or found in the hub cache).

    Raises:
        BaseModelError: the hub revision can be neither found in the cache nor downloaded.
    """
    if ref.kind == "path":
        return ref.location
    from huggingface_hub import snapshot_download  # lazy: hub API (httpx, anyio) 0.2-1 s

    try:
        return snapshot_download(ref.location, revision=ref.revision)
    except Exception as exc:  # offline, unknown repo or revision, gated model: one clear message
        raise BaseModelError(
            f"base model {ref.describe()}: cannot fetch it from the hub or its local cache: {exc}"
        ) from None


def registered_base(config: dict[str, Any], copied: str | Path | None = None) -> str:
    """The directory to load a registered version's base from: its copied artifact when it has one,
    else its reference, checked (`resolve_base`) and made local (`local_base_dir`).

    Raises:
        BaseModelError: no base recorded, the base is missing, or it is not the registered one.
    """
    if copied is not None and Path(copied).is_dir():
        return str(copied)
    ref = BaseRef.from_config(config)
    if ref is None:
        raise BaseModelError("the version has neither a `base` artifact nor a base reference in its config")
    return local_base_dir(resolve_base(ref))


def clear_hash_cache() -> None:
    """Forget the per-file hashes (tests; a host whose clock makes mtimes unreliable)."""
    _FILE_HASHES.clear()

