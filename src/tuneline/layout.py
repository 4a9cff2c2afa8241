"""Where each stage reads and writes, relative to a workspace root (the repo, or `tuneline data`'s work dir).

Paths given in params.yaml (sources, schema, eval sets) are relative to the current directory instead.

    data/raw/                          raw sources (immutable; DVC-tracked for user data)
    data/interim/<stage>.jsonl         ingest, clean, dedup outputs
    data/interim/split/<split>.jsonl   split output (before augmentation)
    data/processed/<split>.jsonl       final train / val / test (augment output)
    data/rejected/<stage>.jsonl        every row a stage dropped, with its reason
    reports/<stage>.json|.html         per-stage counts (DVC metrics) and pages
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    def interim(self, stage: str) -> Path:
        return self.root / "data" / "interim" / f"{stage}.jsonl"

    def split_file(self, split: str) -> Path:
        return self.root / "data" / "interim" / "split" / f"{split}.jsonl"

    def processed(self, split: str) -> Path:
        return self.root / "data" / "processed" / f"{split}.jsonl"

    def rejected(self, stage: str) -> Path:
        return self.root / "data" / "rejected" / f"{stage}.jsonl"

    def report(self, stage: str, ext: str = "json") -> Path:
        return self.root / "reports" / f"{stage}.{ext}"
