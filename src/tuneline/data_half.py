"""The whole data half in one call: `tuneline data --input ... --output DIR` and the workspace report.

Same library code as the DVC stages: the stages run one after another on a private workspace under
DIR/work, then the final splits, every rejected row and the funnel report are gathered into DIR.

DIR is tuneline's: it must be new, empty or an earlier `tuneline data` output (`tuneline.outdirs`), and it
must neither hold an input nor lie inside one, so clearing DIR/work for a fresh run never deletes user files.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from tuneline.config import Config
from tuneline.config.ingest import Source
from tuneline.data.readers import display_path
from tuneline.data.report import build_report, render_html
from tuneline.errors import DataValidationError, InputFileError
from tuneline.jsonio import atomic_write, dumps, read_jsonl, write_json, write_text
from tuneline.layout import SPLITS, Layout
from tuneline.outdirs import check_disjoint, claim_dir, fresh_dir
from tuneline.stages import DATA_STAGES, run_stage

log = logging.getLogger(__name__)


def run_data(inputs: list[Path], output: Path, cfg: Config) -> str:
    """Run every data stage on `inputs`; write DIR/{train,val,test,rejected}.jsonl and DIR/report.{json,html}.

    Raises:
        InputFileError: an input path does not exist.
        OutputPathError: `output` holds an input or lies inside one, is a file, or is a non-empty directory
            tuneline did not write (nothing is deleted or written then).
        DataValidationError: a contract failed (after the report has been written, so it shows why).
    """
    missing = [display_path(Path(p)) for p in inputs if not Path(p).exists()]
    if missing:
        raise InputFileError(f"input not found: {', '.join(missing)}")
    check_disjoint(inputs, output)
    cfg = cfg.model_copy(deep=True)
    cfg.ingest.sources = [Source(path=Path(p)) for p in inputs]
    claim_dir(output, "--output")
    work = output / "work"
    fresh_dir(work, "--output")  # a run never mixes with a previous one's intermediate files
    layout = Layout(work)
    failure: DataValidationError | None = None
    for stage in DATA_STAGES:
        try:
            run_stage(stage, cfg, layout)
        except DataValidationError as exc:
            failure = exc
            break
    for split in SPLITS:
        src = layout.processed(split)
        if src.exists():
            shutil.copyfile(src, output / f"{split}.jsonl")
        else:
            (output / f"{split}.jsonl").unlink(missing_ok=True)
    gather_rejected(layout, output / "rejected.jsonl")
    report = write_report(layout, cfg, output / "report.json", output / "report.html")
    if failure is not None:
        raise failure
    return summary_line(report, output)


def gather_rejected(layout: Layout, dest: Path) -> int:
    """Concatenate every stage's rejected rows (each already carries stage, reason and source)."""
    n = 0
    with atomic_write(dest) as fh:
        for stage in DATA_STAGES:
            for row in read_jsonl(layout.rejected(stage)):
                fh.write(dumps(row) + "\n")
                n += 1
    return n


def write_report(layout: Layout, cfg: Config, json_path: Path, html_path: Path) -> dict[str, Any]:
    """Build the data report of `layout` and write it as JSON and as the HTML page."""
    report = build_report(layout, cfg, DATA_STAGES)
    write_json(json_path, report)
    write_text(html_path, render_html(report))
    return report


def workspace_report(layout: Layout, cfg: Config) -> Path:
    """reports/data.json and reports/data.html for the DVC workspace (after `dvc repro`)."""
    path = layout.report("data", "html")
    write_report(layout, cfg, layout.report("data"), path)
    return path


def summary_line(report: dict[str, Any], output: Path) -> str:
    splits = report["splits"]
    ledger = report["ledger"]
    return (
        f"{ledger['raw_rows']} raw rows -> train {splits['train']['rows']}, val {splits['val']['rows']}, "
        f"test {splits['test']['rows']} ({ledger['rejected']} rejected, {ledger['augmented']} augmented); "
        f"ledger {'balanced' if ledger['balanced'] else 'NOT BALANCED'}. Report: {output / 'report.html'}"
    )
