"""The MLflow model registry side of tuneline: register a candidate, read a version back, lineage.

Every candidate is logged as an `AdapterModel` pyfunc into the MLflow run that trained it, becomes a
new version of the registered model and takes the `challenger` alias. Its version tags carry the
lineage (git_commit, data_hash, params_hash, copied from the training run unless given) and whatever
the caller adds (eval metrics, the gate's result). Aliases, never stages: MLflow 3 deprecated stages.

All calls take the tracking URI explicitly (`sqlite:///mlflow.db`, `http://host:port`, ...); the
registry URI is the same. MLflow's model logging reads the process-wide tracking URI, so it runs
inside `using_tracking_uri`, which restores the previous setting afterwards.

Imports: mlflow (~4.7 s measured with `python -X importtime`) and `registry.model` (torch and
transformers, ~2.5 s) load inside the functions that use them: `promote/__init__` imports this module
through `aliases`, and the pure gate, the status words and the config's `registry.lock_url` check
(`promote.locks`) import that package, so every `tuneline` command would pay them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tuneline
from tuneline.errors import TunelineError
from tuneline.registry.base_ref import BaseRef

logger = logging.getLogger(__name__)

LINEAGE_TAGS = ("git_commit", "data_hash", "params_hash")
MODEL_ARTIFACT = "model"  # the logged model's name inside the run


class RegistryError(TunelineError):
    """The registry refused or failed an operation (unknown model / version / alias, lock timeout)."""


def client(uri: str) -> Any:
    """An `MlflowClient` whose tracking and registry URIs are both `uri`."""
    import mlflow  # lazy: mlflow ~4.7 s, module note

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at `uri`; restore both (and the env
    variables MLflow mirrors them into) on exit."""
    import mlflow  # lazy: mlflow ~4.7 s, module note
    from mlflow.tracking._model_registry import utils as registry_utils  # lazy: mlflow ~4.7 s
    from mlflow.tracking._tracking_service import utils as tracking_utils  # lazy: mlflow ~4.7 s

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def in_experiment(experiment_id: str) -> Iterator[None]:
    """Make `experiment_id` MLflow's process-wide experiment (its env variable), restored on exit.

    MLflow 3 files a logged model under the active experiment, not its run's: without this, the model
    lands in the store's `Default` experiment, whose artifacts live in `./mlruns` of whichever directory
    created the store, instead of beside the training run's.
    """
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def aliases_of(uri: str, model_name: str) -> dict[str, str]:
    """{alias: version} of the registered model, read in one call (a consistent snapshot); {} when the
    model is not registered yet."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow ~4.7 s, module note

    try:
        # Stores return the versions as ints; everything in tuneline passes versions as strings.
        return {k: str(v) for k, v in client(uri).get_registered_model(model_name).aliases.items()}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def resolve_version(uri: str, model_name: str, version_or_alias: str | int) -> str:
    """The version number (as a string) that a version number or an alias names.

    Raises:
        RegistryError: no such alias on the model.
    """
    ref = str(version_or_alias)
    if ref.isdigit():
        return ref
    version = aliases_of(uri, model_name).get(ref)
    if version is None:
        raise RegistryError(f"registered model {model_name!r} has no alias {ref!r}")
    return str(version)


def _code_package(into: Path) -> Path:
    """A copy of the tuneline package (sources only), shipped with each version as `code_paths`, so the
    pickled `AdapterModel` unpickles on a host without tuneline installed."""
    dst = into / "tuneline"
    shutil.copytree(
        Path(tuneline.__file__).parent, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dst


def register_candidate(
    uri: str,
    model_name: str,
    run_id: str,
    base_dir: str | Path,
    adapter_dir: str | Path,
    tags: dict[str, Any] | None = None,
    *,
    copy_base: bool = False,
    challenger_alias: str = "challenger",
    max_new_tokens: int = 128,
    dtype: str = "auto",
) -> str:
    """Log base + adapter as a pyfunc into `run_id`, register it as a new version, alias it challenger.

    Args:
        uri: MLflow tracking (and registry) URI.
        model_name: registered model name (created when missing).
        run_id: the MLflow run that trained the adapter; the model is logged into it.
        base_dir: the base model: a local directory or a hub id.
        adapter_dir: adapter directory (adapter weights + config, tokenizer with chat template).
        tags: version tags (eval metrics, gate result, ...); values are stored as strings. The run's
            git_commit / data_hash / params_hash tags are added unless given here.
        copy_base: also copy the base into the version (air-gapped serving); by default the version
            records a reference only (directory + content hash, or hub id + revision; see
            `model.model_artifacts`).
        challenger_alias: the alias the new version takes.
        max_new_tokens: the pyfunc's default generation budget.
        dtype: the precision the pyfunc loads the model in ("auto": bf16 on a bf16 GPU, else fp32).

    Returns:
        The new version number, as a string.
    """
    from tuneline.registry.model import model_artifacts  # lazy: torch+transformers, ~2.5 s; module note

    mc = client(uri)
    run = mc.get_run(run_id)
    version_tags = {k: run.data.tags[k] for k in LINEAGE_TAGS if k in run.data.tags}
    version_tags.update({k: str(v) for k, v in (tags or {}).items()})
    artifacts, config = model_artifacts(base_dir, adapter_dir, copy_base)
    version_tags.update(BaseRef.from_config(config).to_tags())  # the base, visible in the registry UI
    config.update(max_new_tokens=max_new_tokens, dtype=dtype)
    info = _log_model(uri, run_id, run.info.experiment_id, artifacts, config, max_new_tokens)
    _ensure_registered_model(mc, model_name)
    # MLflow's sqlite registry resolves `models:/<model id>` sources through the process-wide tracking
    # URI, not the client's, so the global URI must point at this store here too.
    with using_tracking_uri(uri):
        mv = mc.create_model_version(
            model_name, source=info.model_uri, run_id=run_id, tags=version_tags, model_id=info.model_id
        )
    mc.set_registered_model_alias(model_name, challenger_alias, mv.version)
    logger.info("registry: %s version %s registered from run %s (alias %s)", model_name, mv.version, run_id,
                challenger_alias)
    return str(mv.version)


def _log_model(uri: str, run_id: str, experiment_id: str, artifacts: dict[str, str], config: dict[str, Any],
               max_new_tokens: int) -> Any:
    """Log the `AdapterModel` pyfunc (with a copy of the tuneline sources) into `run_id`; MLflow's
    `ModelInfo` of it."""
    import mlflow  # lazy: mlflow ~4.7 s, module note
    from mlflow.models import Model, ModelSignature  # lazy: mlflow ~4.7 s, module note
    from mlflow.types import ParamSchema, ParamSpec  # lazy: mlflow ~4.7 s, module note

    from tuneline.registry.model import AdapterModel, pip_requirements  # lazy: torch+transformers, ~2.5 s

    # Only params: the input is free-form conversations (validated by the model itself).
    signature = ModelSignature(
        inputs=None, params=ParamSchema([ParamSpec("max_new_tokens", "long", max_new_tokens)])
    )
    with (
        tempfile.TemporaryDirectory(prefix="tuneline-code-") as tmp,
        using_tracking_uri(uri),
        in_experiment(experiment_id),
        warnings.catch_warnings(),
    ):
        # No input example on purpose: MLflow would load the whole base model to validate it.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=AdapterModel(),
            artifacts=artifacts,
            model_config=config,
            code_paths=[str(_code_package(Path(tmp)))],
            pip_requirements=pip_requirements(),
            signature=signature,
        )


def _ensure_registered_model(mc: Any, model_name: str) -> None:
    """Create the registered model unless it exists (another promoter may create it meanwhile)."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow ~4.7 s, module note

    try:
        mc.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def load_version(uri: str, model_name: str, version_or_alias: str | int) -> Any:
    """Load a registered version (by number or alias) as an MLflow `PyFuncModel`.

    Raises:
        RegistryError: the alias does not exist.
    """
    import mlflow  # lazy: mlflow ~4.7 s, module note

    version = resolve_version(uri, model_name, version_or_alias)
    with using_tracking_uri(uri):
        return mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")


def set_version_tags(uri: str, model_name: str, version: str | int, tags: dict[str, Any]) -> None:
    """Set tags on a version (values stored as strings), e.g. eval metrics or the gate's decision."""
    mc = client(uri)
    for key, value in tags.items():
        mc.set_model_version_tag(model_name, str(version), key, str(value))


def version_tags(uri: str, model_name: str, version: str | int) -> dict[str, str]:
    """The tags of one version.

    Raises:
        RegistryError: no such model or version.
    """
    from mlflow.exceptions import MlflowException  # lazy: mlflow ~4.7 s, module note

    try:
        return dict(client(uri).get_model_version(model_name, str(version)).tags)
    except MlflowException as exc:
        raise RegistryError(f"{model_name} version {version}: {exc}") from exc


def run_exists(uri: str, run_id: str) -> bool:
    """Whether the tracking store at `uri` holds the run `run_id`."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow ~4.7 s, module note

    try:
        client(uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def version_info(uri: str, model_name: str, version_or_alias: str | int) -> dict[str, Any]:
    """Lineage of a version: number, aliases, tags, run id, source, and the training run's lineage tags.

    Returns:
        {"name", "version", "aliases", "tags", "run_id", "model_id", "source", "status",
        "created_ms", "run": {"status", "git_commit", "data_hash", "params_hash"}}.
    """
    version = resolve_version(uri, model_name, version_or_alias)
    mc = client(uri)
    mv = mc.get_model_version(model_name, version)
    run: dict[str, Any] = {}
    if mv.run_id:
        r = mc.get_run(mv.run_id)
        run = {"status": r.info.status, **{k: r.data.tags.get(k) for k in LINEAGE_TAGS}}
    # The sqlite store does not echo model_id back; the source `models:/<model_id>` carries it.
    model_id = mv.model_id or (
        mv.source.removeprefix("models:/") if mv.source.startswith("models:/") else None
    )
    return {
        "name": model_name,
        "version": str(mv.version),
        "aliases": sorted(mv.aliases),
        "tags": dict(mv.tags),
        "run_id": mv.run_id,
        "model_id": model_id,
        "source": mv.source,
        "status": mv.status,
        "created_ms": mv.creation_timestamp,
        "run": run,
    }


def parity_check(
    uri: str,
    model_name: str,
    version_or_alias: str | int,
    base_dir: str | Path,
    adapter_dir: str | Path,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Train/serve parity: greedy replies of the registered version vs the same files loaded in process.

    Returns:
        {"parity": bool, "rows": int, "mismatches": [{"index", "in_process", "registry"}]}.
    """
    from tuneline.registry.model import generate_replies, load_adapter_model  # lazy: torch, ~2.5 s

    model, chat = load_adapter_model(base_dir, adapter_dir, dtype=dtype)
    local = [r["text"] for r in generate_replies(model, chat, conversations, max_new_tokens)]
    served = load_version(uri, model_name, version_or_alias).predict(
        conversations, params={"max_new_tokens": max_new_tokens}
    )
    mismatches = [
        {"index": i, "in_process": a, "registry": b}
        for i, (a, b) in enumerate(zip(local, served, strict=True))
        if a != b
    ]
    return {"parity": not mismatches, "rows": len(conversations), "mismatches": mismatches}
