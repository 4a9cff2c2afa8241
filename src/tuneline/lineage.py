"""`tuneline lineage [VERSION]`: from a registry alias or version back to the raw files.

champion alias -> model version -> MLflow training run -> git commit (+ params and data hashes) ->
`dvc.lock` at that commit -> the processed splits and every raw file (path, md5, size) the data
stages read. Nothing is guessed: each link is read from where it is recorded, and a link that is
missing is reported as missing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tuneline.config.loader import Config
from tuneline.registry.registry import version_info


def lock_at(root: Path, commit: str) -> dict[str, Any] | None:
    """dvc.lock as committed at `commit`, or None (not a git checkout, unknown commit, no lock)."""
    try:
        done = subprocess.run(["git", "show", f"{commit}:dvc.lock"], cwd=root, capture_output=True,
                              text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return yaml.safe_load(done.stdout)


def _files(entries: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [{"path": e["path"], "md5": e.get("md5"), "size": e.get("size"), "files": e.get("nfiles")}
            for e in entries if str(e.get("path", "")).startswith(prefix)]


def git_files(root: Path, commit: str, path: str) -> list[dict[str, Any]]:
    """Files under `path` as committed at `commit`: path, git blob id, size ([] when not in git)."""
    try:
        done = subprocess.run(["git", "ls-tree", "-r", "-l", commit, "--", path], cwd=root,
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    out = []
    for line in done.stdout.splitlines():
        meta, _, name = line.partition("\t")
        _, kind, blob, size = meta.split()
        if kind == "blob":
            out.append({"path": name, "git_blob": blob, "size": int(size)})
    return out


def lineage(cfg: Config, root: Path, ref: str | None = None) -> dict[str, Any]:
    """The lineage of `ref` (a version number or alias; default: the champion alias).

    Raises:
        RegistryError: no such version or alias.
    """
    ref = ref or cfg.registry.champion_alias
    info = version_info(cfg.tracking.uri, cfg.registry.model_name, ref)
    tags, run = info["tags"], info.get("run") or {}
    commit = run.get("git_commit") or tags.get("git_commit")
    out: dict[str, Any] = {
        "model": cfg.registry.model_name, "ref": ref, "version": info["version"], "aliases": info["aliases"],
        "run_id": info["run_id"], "git_commit": commit,
        "params_hash": run.get("params_hash") or tags.get("params_hash"),
        "data_hash": run.get("data_hash") or tags.get("data_hash"),
        "gate": tags.get("gate.status"), "approval": tags.get("approval.by"),
        "eval": {k.removeprefix("eval."): v for k, v in tags.items() if k.startswith("eval.")},
        "processed": [], "raw": [], "lock": None,
    }
    lock = lock_at(root, commit) if commit else None
    if lock is None:
        out["lock"] = "dvc.lock not found at the recorded commit" if commit else "no git commit recorded"
        return out
    stages = lock.get("stages", {})
    out["lock"] = f"dvc.lock at {commit}"
    out["processed"] = _files(stages.get("train", {}).get("deps", []), "data/processed")
    out["raw"] = _files(stages.get("ingest", {}).get("deps", []), "data/raw")
    for entry in out["raw"]:  # raw data kept in git: list each file as committed
        entry["contents"] = git_files(root, commit, entry["path"])
    return out


def render(tree: dict[str, Any]) -> str:
    """The lineage as an indented text tree, for the terminal."""
    lines = [
        f"{tree['model']} {tree['ref']} -> version {tree['version']} "
        f"(aliases: {', '.join(tree['aliases']) or '-'}; gate {tree['gate'] or '-'}; "
        f"approved by {tree['approval'] or '-'})",
        f"  MLflow run {tree['run_id']}",
        f"    git commit {tree['git_commit'] or '(not recorded)'}",
        f"    params hash {tree['params_hash'] or '-'}",
        f"    data hash {tree['data_hash'] or '-'}",
        f"      {tree['lock']}",
    ]
    lines += [f"        {f['path']}  md5 {f['md5']}" for f in tree["processed"]]
    lines += ["      raw files (ingest inputs):"] if tree["raw"] else []
    for f in tree["raw"]:
        lines.append(f"        {f['path']}  md5 {f['md5']}  {f['size']} bytes"
                     + (f" ({f['files']} files)" if f.get("files") else ""))
        lines += [f"          {c['path']}  git {c['git_blob'][:12]}  {c['size']} bytes"
                  for c in f.get("contents", [])]
    if tree["eval"]:
        lines.append("  eval: " + ", ".join(f"{k} {v}" for k, v in sorted(tree["eval"].items())))
    return "\n".join(lines)
