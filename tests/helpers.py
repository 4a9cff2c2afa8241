"""Builders the test modules share (test modules import from here, never from each other; the fixtures
built from these live in conftest.py).

- the tiny demo base: `TINY`, `tiny_records`, `build_tiny_base`;
- a learnable training task and a train stage's workspace and settings: `repeat_records`,
  `repeat_workspace`, `train_settings`, `write_params`;
- real LoRA adapters and greedy replies computed without tuneline: `save_adapter`, `reference_replies`,
  `PROMPTS`, `LINEAGE`;
- cheap MLflow registries (versions without a packaged model): `empty_registry`, `make_model`,
  `make_ab_model`, `ab_settings`, `T0`;
- a feedback store with every kind of feedback and a git + DVC repository: `fill`, `git_dvc_repo`;
- this machine's non-loopback address: `this_machines_address`.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneline.config.build_base import BuildBaseParams
from tuneline.config.loader import Config
from tuneline.feedback.store import FeedbackStore
from tuneline.jsonio import write_jsonl
from tuneline.layout import Layout
from tuneline.registry.registry import client
from tuneline.train.build_base import build_demo_base

# ---- the tiny demo base ---------------------------------------------------------------------------------

TINY = {"vocab_size": 320, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "seq_len": 32, "batch_size": 4,
        "max_position_embeddings": 256}
# Pre-training steps of the session's shared base (conftest `tiny_base`): the loss has visibly fallen,
# and a build takes a fraction of a second.
TINY_BASE_STEPS = 10
# The shared base that has learned its corpus (conftest `learned_tiny_base`): greedy replies depend on the
# prompt and end with EOS.
LEARNED_BASE_STEPS = 300

ANIMALS = ["cat", "dog", "fox", "owl", "bee"]


def tiny_records(n: int = 20) -> list[dict[str, Any]]:
    """A small, repetitive chat corpus (so a few steps of pre-training visibly lower the loss)."""
    records = []
    for i in range(n):
        animal = ANIMALS[i % len(ANIMALS)]
        messages = [
            {"role": "user", "content": f"What sound does the {animal} make?"},
            {"role": "assistant", "content": f"The {animal} makes the {animal} sound, number {i % 3}."},
        ]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": "Answer in one sentence."})
        records.append({"id": f"r{i}", "messages": messages, "category": None, "meta": {}, "source": {}})
    return records


def build_tiny_base(tmp_path: Path, steps: int = TINY_BASE_STEPS, seed: int = 0) -> Path:
    """Build a tiny demo base into `tmp_path/base` and return its directory.

    A test that needs the usual base takes the session's `tiny_base` fixture instead (built once); this
    builder is for a base of its own (another seed, a test of the build itself).
    """
    out = tmp_path / "base"
    build_demo_base(tiny_records(), BuildBaseParams(pretrain_steps=steps, lr=1e-2, **TINY), seed, out)
    return out


# ---- a learnable task, the train stage's workspace and settings --------------------------------------

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant"]


def repeat_records(n: int, offset: int = 0) -> list[dict[str, Any]]:
    """A learnable task: the answer repeats the word named in the question."""
    out = []
    for i in range(n):
        w = WORDS[(i + offset) % len(WORDS)]
        out.append({"id": f"r{offset}-{i}", "category": None, "meta": {}, "source": {}, "messages": [
            {"role": "user", "content": f"Repeat the word {w}."},
            {"role": "assistant", "content": w},
        ]})
    return out


def repeat_workspace(root: Path, train: int = 48, val: int = 12, test: int = 0) -> Layout:
    """A workspace at `root` whose processed splits hold `repeat_records` (val and test shifted, so they
    are not copies of train); no test split when `test` is 0."""
    layout = Layout(root)
    write_jsonl(layout.processed("train"), repeat_records(train))
    write_jsonl(layout.processed("val"), repeat_records(val, offset=1))
    if test:
        write_jsonl(layout.processed("test"), repeat_records(test, offset=2))
    return layout


# LoRA without dropout: two runs that must compute the same thing draw no dropout masks.
LORA_NO_DROPOUT = {"r": 4, "alpha": 8, "dropout": 0.0}


def train_settings(root: Path, base: Path, **train: Any) -> dict[str, Any]:
    """params.yaml content for a small LoRA train stage on `base`, tracked in `root/mlflow.db`; `train`
    replaces keys of the `train` section (a `lora` given replaces the whole `lora` block)."""
    return {
        "seed": 0,
        "model": {"name_or_path": str(base)},
        "train": {"lr": 0.02, "epochs": 2, "effective_batch": 8, "per_device_batch": 4, "packing": False,
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, **train},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "test"},
    }


def write_params(root: Path, cfg: dict[str, Any]) -> Path:
    """`cfg` as `root/params.yaml` (for a stage run as a command)."""
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# ---- real adapters, replies computed without tuneline --------------------------------------------------

PROMPTS = [
    [{"role": "user", "content": "What sound does the cat make?"}],
    [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "And the owl?"}],
    [{"role": "user", "content": "Tell me about the fox."}],
]
LINEAGE = {"git_commit": "0123abc", "data_hash": "d" * 64, "params_hash": "p" * 64}


def save_adapter(base: Path, out: Path, noisy: bool, alpha: int = 64, only_b: bool = False) -> Path:
    """A real peft LoRA adapter on the tiny base, saved with the tokenizer and chat template as training
    does.

    Args:
        base: the base model's directory.
        out: where the adapter goes.
        noisy: False, zero-initialised (= the base); True, large random weights (a deliberately worse
            model): every LoRA matrix drawn from N(0, 0.5).
        alpha: `lora_alpha`.
        only_b: with `noisy`, keep peft's initial A and draw only B (a smaller change).
    """
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=4,
        lora_alpha=alpha,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=not noisy or only_b,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if noisy:
        drawn = "lora_B" if only_b else "lora_"
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if drawn in name:
                    p.normal_(0.0, 0.5)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def reference_replies(base: Path, adapter: Path | None, max_new_tokens: int) -> list[str]:
    """Greedy replies to `PROMPTS` computed directly with transformers + peft (independent of tuneline's
    loader)."""
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    tok = AutoTokenizer.from_pretrained(adapter or base)
    out = []
    for messages in PROMPTS:
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            ids = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


# ---- cheap registries ------------------------------------------------------------------------------------

T0 = 1_700_006_400.0  # 2023-11-15 00:00 UTC, a day boundary


_STORE_TEMPLATE: list[Path] = []  # the session's migrated, empty store (built on first use)


def empty_registry(root: Path) -> str:
    """The URI of a new sqlite MLflow tracking + registry store `root/mlflow.db`, its schema in place.

    MLflow builds a new store's schema by running every migration (seconds on a busy 2-core machine, per
    store): it is run once per session, into a template, and each store starts as a copy of it.
    """
    if not _STORE_TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="tuneline-mlflow-template-"))
        atexit.register(shutil.rmtree, folder, True)
        cwd = os.getcwd()
        os.chdir(folder)  # the default experiment's artifact folder: here, never the test's cwd
        try:
            client(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        finally:
            os.chdir(cwd)
        _STORE_TEMPLATE.append(folder / "mlflow.db")
    db = root / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(_STORE_TEMPLATE[0]) as source, sqlite3.connect(db) as target:
        source.backup(target)
    return f"sqlite:///{db}"


def make_model(uri: str, name: str, versions: int) -> None:
    """A registered model with `versions` cheap versions (no packaged model), no tags, no aliases."""
    mc = client(uri)
    mc.create_registered_model(name)
    for i in range(versions):
        mc.create_model_version(name, source=f"/nowhere/{name}/{i + 1}")


def make_ab_model(uri: str, name: str, versions: int = 2, champion: str | None = "1",
                  challenger: str | None = "2") -> None:
    """A registered model with cheap versions (no packaged model) and the A/B aliases."""
    mc = client(uri)
    mc.create_registered_model(name)
    for i in range(versions):  # each passed the offline gate (only such a version is canaried), the
        # first with no champion to compare against, the others against the champion
        judged = "none" if i == 0 else (champion or "none")
        mc.create_model_version(name, source=f"/nowhere/{name}/{i + 1}",
                                tags={"gate.status": "promote", "gate.champion": judged})
    if champion:
        mc.set_registered_model_alias(name, "champion", champion)
    if challenger:
        mc.set_registered_model_alias(name, "challenger", challenger)


def ab_settings(tmp_path: Path, uri: str, name: str, **sections: dict[str, Any]) -> Config:
    """The config of an A/B decision on registry `uri`, model `name`, with a sqlite feedback store in
    `tmp_path`; `sections` replace whole params sections."""
    data: dict[str, Any] = {
        "tracking": {"uri": uri},
        "registry": {"model_name": name},
        "serve": {"store_url": f"sqlite:///{tmp_path / 'feedback.db'}"},
    }
    data.update(sections)
    return Config.model_validate(data)


# ---- a filled feedback store, a git + DVC repository ----------------------------------------------------

FEEDBACK_WORDS = (
    "amber basalt cedar delta ember fjord granite harbor iris juniper kelp lagoon meadow nectar orchid "
    "pebble quartz raven saffron tundra umber violet willow xenon yarrow zephyr anchor beacon canyon "
    "dune estuary falcon glacier heron island jasper kestrel lantern marble nebula oasis prairie quill "
    "reef summit thistle upland valley walnut yonder zinnia"
).split()
N_CORRECTIONS, N_POSITIVE = 20, 20


def sentence(rng: random.Random, n: int = 9) -> str:
    return " ".join(rng.sample(FEEDBACK_WORDS, n)).capitalize() + "."


def exchange(i: int, rng: random.Random, finish_reason: str = "stop") -> dict[str, Any]:
    """The `i`-th served exchange (champion and challenger alternate), its text drawn from `rng`."""
    return {
        "request_id": f"req-{i:03d}",
        "created_at": 1_735_000_000.0 + i,
        "user_hash": f"u{i % 5}",
        "variant": "champion" if i % 2 else "challenger",
        "model_name": "tuneline-demo",
        "model_version": "3" if i % 2 else "4",
        "pinned": False,
        "latency_ms": 12.5,
        "prompt_tokens": 9,
        "completion_tokens": 11,
        "finish_reason": finish_reason,
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": f"Question {i}: {sentence(rng)} Explain?"},
        ],
        "answer": f"Served answer {i}: {sentence(rng)}",
    }


def fill(store: FeedbackStore) -> dict[str, str]:
    """Exchanges with feedback of every kind; returns request id -> the kind it must export as."""
    rng = random.Random(7)
    kinds: dict[str, str] = {}
    i = 0

    def add(kind: str, finish_reason: str = "stop", **fb: Any) -> str:
        nonlocal i
        ex = exchange(i, rng, finish_reason)
        i += 1
        store.record_exchanges([ex])
        if fb:
            store.record_feedback(ex["request_id"], **fb)
        kinds[ex["request_id"]] = kind
        return ex["request_id"]

    for _ in range(N_CORRECTIONS):
        add("correction", thumb=-1, correction=f"Corrected: {sentence(rng)} {sentence(rng)}")
    for _ in range(N_POSITIVE):
        add("positive", thumb=1)
    add("positive", rating=5)  # no thumb: the rating decides (>= ab.min_rating)
    add("negative", rating=2)
    add("negative", thumb=-1, comment="wrong river")
    changed = add("negative", thumb=1)
    store.record_feedback(changed, thumb=-1)  # the LATEST feedback counts
    add("skipped", comment="nice formatting")
    add("skipped", finish_reason="length", thumb=1)
    add("none")  # never rated: not read at all
    return kinds


def git_dvc_repo(path: Path) -> Path:
    """A fresh git repository at `path` with DVC initialised in it."""
    path.mkdir(parents=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=path, check=True, env=env)
    return path


# ---- the network --------------------------------------------------------------------------------------


def this_machines_address() -> str | None:
    """A non-loopback address of this machine (a many-node run refuses a loopback master_addr)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a UDP connect only picks the route: nothing is sent
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr
