"""A registered version refers to its base (path + content hash, or hub id + revision) instead of
copying it; loading resolves the reference and refuses a base that changed.

Regressions covered: every promote copied the whole base into the version's MLflow artifacts (GBs per
version for a real model); a hub-id base failed at promote with MLflow's "No such artifact" (the copy
was made from `Path(hub_id).resolve()`, a directory that does not exist); a referenced base directory
whose content changed was loaded silently.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import PROMPTS, empty_registry, reference_replies, save_adapter
from tuneline.registry.base_ref import (
    BaseModelError,
    BaseRef,
    base_sha256,
    reference_base,
    registered_base,
    resolve_base,
)
from tuneline.registry.registry import load_version, register_candidate, version_info
from tuneline.serve.models import ServeError, download_version
from tuneline.tracking import end_run, start_run

HUB_ID = "tuneline-test/tiny-base"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def files(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base_ref")
    return {"base": tiny_base, "adapter": save_adapter(tiny_base, root / "adapter", noisy=True)}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A fresh sqlite registry in tmp_path and one finished training run."""
    monkeypatch.chdir(tmp_path)  # the sqlite store puts artifacts under ./mlruns
    uri = empty_registry(tmp_path)
    run = start_run(uri, "tuneline", {"git_commit": "abc"}, {}, "train")
    end_run(uri, run, "FINISHED")
    return uri, run


def mlmodel_config(uri: str, version: str, into: Path) -> tuple[dict[str, Any], Path]:
    files = download_version_dir(uri, version, into)
    flavor = yaml.safe_load((files / "MLmodel").read_text())["flavors"]["python_function"]
    return flavor, files


def download_version_dir(uri: str, version: str, into: Path) -> Path:
    import mlflow

    from tuneline.registry.registry import using_tracking_uri

    with using_tracking_uri(uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/demo/{version}",
                                                        dst_path=str(into)))


# ---- the content hash ----


def test_hash_is_deterministic_and_covers_only_model_files(tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "config.json").write_text('{"hidden_size": 8}')
    (a / "model.safetensors").write_bytes(b"\x00weights" * 1000)
    (a / "tokenizer.json").write_text('{"vocab": {}}')
    (a / "sub" / "chat_template.jinja").write_text("{{ messages }}")
    (a / "README.md").write_text("about the model")
    (a / ".cache").mkdir()
    (a / ".cache" / "x.json").write_text("{}")
    b = tmp_path / "b"
    shutil.copytree(a, b)  # new mtimes, another path: the same content hash
    first = base_sha256(a)
    assert len(first) == 64 and base_sha256(b) == first
    (b / "README.md").write_text("edited")
    (b / ".cache" / "x.json").write_text('{"y": 1}')
    assert base_sha256(b) == first  # documentation and hidden caches do not change the model
    (b / "sub" / "chat_template.jinja").write_text("{{ other }}")
    assert base_sha256(b) != first
    (b / "sub" / "chat_template.jinja").write_text("{{ messages }}")
    (b / "model.safetensors").write_bytes(b"\x01weights" * 1000)  # same size, other bytes
    assert base_sha256(b) != first
    (b / "model.safetensors").rename(b / "model-00001.safetensors")  # names are part of the hash
    (a / "model.safetensors").rename(a / "model-00002.safetensors")
    assert base_sha256(a) != base_sha256(b)
    with pytest.raises(BaseModelError, match="does not exist"):
        base_sha256(tmp_path / "missing")


def test_path_reference_resolves_and_refuses_a_changed_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"a": 1}')
    ref = reference_base(base)
    assert ref == BaseRef("path", str(base.resolve()), sha256=base_sha256(base))
    assert BaseRef.from_config(ref.to_config()) == ref
    assert resolve_base(ref) == ref and registered_base(ref.to_config()) == str(base.resolve())
    (base / "config.json").write_text('{"a": 2}')
    with pytest.raises(BaseModelError) as err:
        resolve_base(ref)
    assert ref.sha256 in str(err.value) and base_sha256(base) in str(err.value)
    shutil.rmtree(base)
    with pytest.raises(BaseModelError, match="not on this host"):
        registered_base(ref.to_config())


# ---- registered versions ----


def test_version_refers_to_its_base_and_refuses_it_once_changed(
    files: dict[str, Path], store: tuple[str, str], tmp_path: Path
) -> None:
    uri, run = store
    base = tmp_path / "base"
    shutil.copytree(files["base"], base)
    version = register_candidate(uri, "demo", run, base, files["adapter"], max_new_tokens=5)
    flavor, local = mlmodel_config(uri, version, tmp_path / "dl")
    assert set(flavor["artifacts"]) == {"adapter"}  # the base was not copied
    assert not (local / "artifacts" / "base").exists()
    assert flavor["config"]["base_sha256"] == base_sha256(files["base"])
    expected = reference_replies(files["base"], files["adapter"], 5)
    assert load_version(uri, "demo", version).predict(PROMPTS) == expected

    # the base directory now holds another model (same file names): never loaded silently
    config = base / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 0.5'))
    changed = base_sha256(base)
    assert changed != flavor["config"]["base_sha256"]
    with pytest.raises(BaseModelError) as err:
        load_version(uri, "demo", version)
    assert flavor["config"]["base_sha256"] in str(err.value) and changed in str(err.value)
    with pytest.raises(ServeError) as served:
        download_version(uri, "demo", version, "champion", tmp_path / "serve")
    assert flavor["config"]["base_sha256"] in str(served.value) and changed in str(served.value)


def test_copy_base_stays_an_option(files: dict[str, Path], store: tuple[str, str], tmp_path: Path) -> None:
    uri, run = store
    version = register_candidate(uri, "demo", run, files["base"], files["adapter"], copy_base=True)
    flavor, local = mlmodel_config(uri, version, tmp_path / "dl")
    assert set(flavor["artifacts"]) == {"adapter", "base"}
    assert base_sha256(local / flavor["artifacts"]["base"]["path"]) == flavor["config"]["base_sha256"]


@pytest.fixture
def hub_cache(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face hub cache (the layout huggingface_hub writes) holding the tiny base as
    HUB_ID at COMMIT, with `main` pointing at it; no network."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(files["base"], repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_base_is_recorded_by_id_and_revision_and_loads(
    files: dict[str, Path], store: tuple[str, str], hub_cache: Path, tmp_path: Path
) -> None:
    uri, run = store
    version = register_candidate(uri, "demo", run, HUB_ID, files["adapter"], max_new_tokens=5)
    flavor, _ = mlmodel_config(uri, version, tmp_path / "dl")
    assert set(flavor["artifacts"]) == {"adapter"}
    config = flavor["config"]
    # `main` pinned to the commit the local cache resolved (what training loaded)
    assert (config["base_kind"], config["base_hub_id"], config["base_revision"]) == ("hub", HUB_ID, COMMIT)
    tags = version_info(uri, "demo", version)["tags"]
    assert (tags["base.hub_id"], tags["base.revision"]) == (HUB_ID, COMMIT)
    ref = BaseRef.from_config(config)
    assert resolve_base(ref) is ref and (ref.location, ref.revision) == (HUB_ID, COMMIT)
    snapshot = hub_cache / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / COMMIT
    assert Path(registered_base(config)) == snapshot
    expected = reference_replies(files["base"], files["adapter"], 5)
    assert load_version(uri, "demo", version).predict(PROMPTS) == expected
    served = download_version(uri, "demo", version, "champion", tmp_path / "serve")
    assert served.base_dir == snapshot


def test_hub_base_not_cached_registers_unpinned_and_fails_clearly_on_load(
    files: dict[str, Path], store: tuple[str, str], hub_cache: Path, tmp_path: Path
) -> None:
    uri, run = store
    version = register_candidate(uri, "demo", run, "tuneline-test/elsewhere", files["adapter"])
    flavor, _ = mlmodel_config(uri, version, tmp_path / "dl")
    assert (flavor["config"]["base_hub_id"], flavor["config"]["base_revision"]) == (
        "tuneline-test/elsewhere", "main")
    with pytest.raises(BaseModelError, match="tuneline-test/elsewhere@main: cannot fetch"):
        load_version(uri, "demo", version)


def test_hub_base_can_be_copied_for_air_gapped_serving(
    files: dict[str, Path], store: tuple[str, str], hub_cache: Path, tmp_path: Path
) -> None:
    uri, run = store
    version = register_candidate(uri, "demo", run, HUB_ID, files["adapter"], copy_base=True)
    flavor, local = mlmodel_config(uri, version, tmp_path / "dl")
    assert set(flavor["artifacts"]) == {"adapter", "base"}
    assert base_sha256(local / flavor["artifacts"]["base"]["path"]) == base_sha256(files["base"])
    assert flavor["config"]["base_revision"] == COMMIT


def test_a_base_inside_the_workspace_is_copied_into_the_version(tmp_path: Path) -> None:
    """`models/base` is a pipeline output: `dvc exp run -S model.name_or_path=<other>` replaces it, and a
    champion that only referred to it could no longer be loaded to compare against."""
    from tuneline.promote.promote import must_copy_base

    workspace, outside = tmp_path / "ws", tmp_path / "models" / "qwen"
    (workspace / "models" / "base").mkdir(parents=True)
    outside.mkdir(parents=True)
    assert must_copy_base(False, workspace / "models" / "base", workspace)
    assert not must_copy_base(False, outside, workspace)  # a user's model: referenced, not copied
    assert not must_copy_base(False, "Qwen/Qwen2.5-0.5B-Instruct", workspace)  # a hub id
    assert must_copy_base(True, outside, workspace)
