"""`tuneline evaluate`: base, champion and candidate on the same held-out rows, in one run.

The held-out **test** split (never used for training or checkpoint selection) and, with
`evaluate.include_eval_sets`, every fixed set under `split.eval_dir` (each reported on its own):

- loss and perplexity on every test row (teacher-forced, assistant tokens only, token-weighted);
- greedy generations through the same chat template and EOS as training on a seeded sample of
  `evaluate.max_rows` rows: exact match, ROUGE-L, the never-stopping share of the rows whose reference
  fits `evaluate.max_new_tokens` (the others are counted in `never_stop_excluded`: no reply could have
  stopped there), and the JSON metrics over the rows `task.output_schema` covers (every row for one file,
  the rows of its categories for a {category: file} mapping); overall and per category.

Variants: `base` (no adapter), `candidate` (models/adapter) and `champion` (the registry's
`registry.champion_alias`, when one exists). The report records what was compared: the champion's
version and adapter sha256 (`champion_version`, `champion_adapter_sha256`; None without a champion)
and the candidate's (`candidate_adapter_sha256`), so promote judges only against the champion the
evaluation saw. Writes `reports/evaluate.json` (DVC metrics, no
timings), `reports/evaluate_headline.json` (the before / after headline: per-category table and the
answers where base and candidate differ most, which the run report shows too) and
`reports/review.html` (the headline, then sampled prompts side by side, for human review), and logs an
MLflow run (tag `train_run_id` links it to the training run) with every metric, the per-row table
and the review page.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tuneline.config.ingest import IngestParams, Source
from tuneline.config.loader import Config
from tuneline.data.ingest import ingest_sources
from tuneline.data.output_schema import OutputSchemas, load_output_schemas
from tuneline.errors import InputFileError
from tuneline.evaluate.headline import build_headline
from tuneline.evaluate.metrics import compare, score_rows
from tuneline.evaluate.review import write_review
from tuneline.jsonio import write_json
from tuneline.layout import Layout
from tuneline.lm.source import resolve_model_path
from tuneline.registry.base_ref import registered_base
from tuneline.registry.registry import aliases_of, client, using_tracking_uri
from tuneline.splits import read_split
from tuneline.tracking import adapter_sha256, end_run, log_metrics, start_run

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048


def _adapter_dir(cfg: Config, layout: Layout) -> Path:
    out = layout.root / cfg.train.output_dir
    if not (out / "adapter_config.json").is_file() and not (out / "config.json").is_file():
        raise InputFileError(f"{out}: no trained model; run the train stage first (`dvc repro train`)")
    return out


def _max_length(adapter: Path) -> int:
    summary = adapter / "train_summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text(encoding="utf-8")).get("max_length") or DEFAULT_MAX_LENGTH)
    return DEFAULT_MAX_LENGTH


def sample_rows(records: list[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of at most `limit` records (0 = all), in file order."""
    if not limit or len(records) <= limit:
        return records
    keep = set(random.Random(seed).sample(range(len(records)), limit))
    return [r for i, r in enumerate(records) if i in keep]


def eval_sets(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """The fixed eval sets under split.eval_dir, by file (any format ingest reads)."""
    eval_dir = cfg.split.eval_dir
    if not cfg.evaluate.include_eval_sets or eval_dir is None or not Path(eval_dir).is_dir():
        return {}

    params = IngestParams(sources=[Source(path=Path(eval_dir))], category_field=cfg.ingest.category_field)
    records, rejected, _, _ = ingest_sources(params)
    if rejected:
        logger.warning("evaluate: %d eval-set rows could not be read (see their files)", len(rejected))
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(str(r["source"]["file"]), []).append(r)
    return out


def score_variant(
    name: str, model_dir: tuple[str, str | None], sets: dict[str, list[dict[str, Any]]], cfg: Config,
    max_length: int, schema: OutputSchemas | None,
) -> dict[str, Any]:
    """Loss on the whole test split, generation metrics on each sampled set, for one variant."""
    from tuneline.evaluate.loss import loss_and_perplexity  # lazy: torch ~9 s; CLI imports this
    from tuneline.lm.generate import generate  # lazy: torch ~9 s; CLI imports this
    from tuneline.lm.load import load_variant  # lazy: torch ~9 s (lm.load)

    e = cfg.evaluate
    # Every variant renders with the candidate's tokenizer and options: the base is asked exactly what
    # the candidate is asked.
    model, chat = load_variant(model_dir[0], model_dir[1], trust_remote_code=cfg.model.trust_remote_code,
                               tokenizer_from=model_dir[2] if len(model_dir) > 2 else None)
    out: dict[str, Any] = {"sets": {}, "rows": {}}
    for set_name, records in sets.items():
        sampled = sample_rows(records, e.max_rows, cfg.seed)
        rows = generate(model, chat, sampled, e.max_new_tokens, e.batch_size)
        scored = score_rows(rows, schema, e.max_new_tokens)
        if set_name == "test":
            loss = loss_and_perplexity(model, chat, records, max_length, e.batch_size)
            scored["overall"]["loss"], scored["overall"]["perplexity"] = loss["loss"], loss["perplexity"]
            scored["loss_rows"], scored["loss_tokens"] = loss["rows"], loss["tokens"]
            scored["unrenderable_rows"] = len(loss["rejected"])
        out["sets"][set_name] = scored
        out["rows"][set_name] = rows
    logger.info("evaluate: %s scored", name)
    return out


def run(cfg: Config, layout: Layout, champion: tuple[str, str | None] | None = None) -> dict[str, Any]:
    """The `evaluate` stage; see the module docstring.

    Args:
        champion: (base path, adapter path) of the champion to compare against; None looks it up in the
            registry (`registry.champion_alias`) and skips it when there is none. A champion given by
            path is no registry version (champion_version None), so promote will not judge against it.

    Raises:
        InputFileError: the test split or the trained model is missing.
        ConfigError: a `task.output_schema` file is missing or unusable (naming its category and file).
    """
    from tuneline.lm.generate import split_prompts  # lazy: torch ~9 s (lm.generate)

    test = read_split(layout, "test")
    sets = {"test": test, **eval_sets(cfg)}
    _, no_answer = split_prompts(test)
    adapter = _adapter_dir(cfg, layout)
    base = resolve_model_path(cfg, layout)
    schema = load_output_schemas(cfg.task.output_schema)  # before any model loads: a bad file fails fast
    evidence: dict[str, str | None] = {"champion_version": None, "champion_adapter_sha256": None}
    with tempfile.TemporaryDirectory(prefix="tuneline-champion-") as tmp:
        if champion is None:
            found = _registry_champion(cfg, Path(tmp))
            if found is not None:
                champion, evidence = found
        variants: dict[str, tuple[str, str | None, str | None]] = {
            "base": (base, None, str(adapter)), "candidate": (base, str(adapter), None)}
        if champion is not None:
            variants["champion"] = champion
        max_length = _max_length(adapter)
        results = {name: score_variant(name, where, sets, cfg, max_length, schema)
                   for name, where in variants.items()}
    overall = {name: r["sets"]["test"]["overall"] for name, r in results.items()}
    report = {
        "test_rows": len(test),
        "generated_rows": overall["candidate"].get("rows"),
        "rows_without_answer": len(no_answer),
        "max_new_tokens": cfg.evaluate.max_new_tokens,
        "champion": _describe(champion),
        **evidence,
        "candidate_adapter_sha256": adapter_sha256(adapter),
        "variants": overall,
        "per_category": {name: r["sets"]["test"]["per_category"] for name, r in results.items()},
        "comparison": compare(overall["base"], overall["candidate"], overall.get("champion")),
        "eval_sets": {s: {name: r["sets"][s]["overall"] for name, r in results.items()}
                      for s in sets if s != "test"},
    }
    samples = _review_samples(results, cfg.evaluate.review_samples, cfg.seed)
    headline = build_headline(overall, report["per_category"],
                              {name: r["rows"]["test"] for name, r in results.items()},
                              {name: r["sets"]["test"]["per_row"] for name, r in results.items()})
    write_json(layout.report("evaluate_headline"), headline)
    write_review(samples, layout.report("review", "html"), "tuneline review: base / champion / candidate",
                 summary=overall, headline=headline)
    write_json(layout.report("evaluate"), report)
    _log_mlflow(cfg, layout, report, results)
    logger.info("evaluate: rouge_l base %.3f -> candidate %.3f; loss %.3f -> %.3f",
                overall["base"].get("rouge_l") or 0, overall["candidate"].get("rouge_l") or 0,
                overall["base"].get("loss") or 0, overall["candidate"].get("loss") or 0)
    return report


def _describe(champion: tuple[str, str | None] | None) -> str | None:
    return None if champion is None else str(champion[1] or champion[0])


def _review_samples(results: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    by_variant = {name: {row["id"]: row for row in r["rows"]["test"]} for name, r in results.items()}
    per_row = {name: r["sets"]["test"]["per_row"] for name, r in results.items()}
    ids = list(by_variant["candidate"])
    picked = sample_rows([{"id": i} for i in ids], n, seed) if n else []
    samples = []
    for item in picked:
        row = by_variant["candidate"][item["id"]]
        samples.append({
            "id": row["id"], "category": row.get("category"), "prompt": row["prompt"],
            "reference": row["reference"],
            "outputs": {name: rows.get(row["id"], {}).get("prediction") for name, rows in by_variant.items()},
            "scores": {name: scores.get(row["id"], {}) for name, scores in per_row.items()},
        })
    return samples


def _registry_champion(
    cfg: Config, tmp: Path
) -> tuple[tuple[str, str | None], dict[str, str | None]] | None:
    """The champion's (base, adapter), downloaded from the registry, and which champion that is
    ({"champion_version", "champion_adapter_sha256"}, the sha from its version tag); None when there is
    none."""
    import mlflow  # lazy: mlflow ~10 s; the CLI imports this module

    reg = cfg.registry
    version = aliases_of(cfg.tracking.uri, reg.model_name).get(reg.champion_alias)
    if version is None:
        logger.info("evaluate: no %s in the registry yet; comparing base and candidate", reg.champion_alias)
        return None
    with using_tracking_uri(cfg.tracking.uri):  # `models:/` resolves through the process-wide registry URI
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{reg.model_name}/{version}", dst_path=str(tmp)))
    flavor = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))["flavors"]["python_function"]
    # An artifact keeps its source directory's name (artifacts/<name>): the MLmodel maps key -> path.
    paths = {key: local / entry["path"] for key, entry in (flavor.get("artifacts") or {}).items()}
    # the copied base when the version has one, else its reference, checked against its content hash
    base = registered_base(flavor.get("config") or {}, paths.get("base"))
    # Read by version number, like the download: both name the same version even if the alias moves now.
    sha = client(cfg.tracking.uri).get_model_version(reg.model_name, version).tags.get("adapter_sha256")
    logger.info("evaluate: champion is %s version %s", reg.model_name, version)
    return (base, str(paths["adapter"])), {"champion_version": version, "champion_adapter_sha256": sha}


def _log_mlflow(cfg: Config, layout: Layout, report: dict[str, Any], results: dict[str, Any]) -> None:
    run_facts = layout.report("train_run")
    tags = {"stage": "evaluate"}
    if run_facts.is_file():
        tags["train_run_id"] = str(json.loads(run_facts.read_text(encoding="utf-8")).get("mlflow_run_id"))
    run_id = start_run(cfg.tracking.uri, cfg.tracking.experiment, tags,
                       {"evaluate." + k: str(v) for k, v in cfg.evaluate.model_dump(mode="json").items()},
                       "evaluate")
    metrics = {f"{variant}.{k}": float(v) for variant, scores in report["variants"].items()
               for k, v in scores.items() if isinstance(v, int | float) and v is not None}
    log_metrics(cfg.tracking.uri, run_id, metrics, step=0)
    import mlflow  # lazy: mlflow ~10 s; the CLI imports this module

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    table = [{"variant": name, **row} for name, r in results.items() for row in r["rows"]["test"]]
    client.log_dict(run_id, table, "eval_table.json")
    client.log_artifact(run_id, str(layout.report("review", "html")))
    client.log_artifact(run_id, str(layout.report("evaluate_headline")))
    client.log_artifact(run_id, str(layout.report("evaluate")))
    end_run(cfg.tracking.uri, run_id, "FINISHED")
    report_ids = layout.report("evaluate_run")
    write_json(report_ids, {"mlflow_run_id": run_id, "train_run_id": tags.get("train_run_id")})
