"""Deterministic demo market: two brands' import files, Segment event streams and hidden ground truth.

``generate(out_dir, MarketConfig(...))`` writes

- ``eyecare/``  — 明眸 Eye Care: products.csv, crm_members.csv (Chinese CRM export), orders.csv,
  feedback.parquet and ``events/events-NNNN.jsonl``;
- ``operator/`` — Skyline Mobile: products.csv, subscribers.csv, orders.csv, cases.csv and events;
- ``_truth/preferences.parquet`` — hidden per-customer preferences and labels (never loaded by the
  platform; for evaluating analytics), ``_truth/dirt.parquet`` — every deliberately dirty import cell;
- ``manifest.json`` — everything above with paths relative to ``out_dir``.

The same config always gives byte-identical files: all randomness comes from seeded PCG64 generators
and the history window is fixed by the config, never by the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from goldkey.demo._base import (
    IMPORT_FIELDS,
    TRUTH_KEY_COLUMNS,
    BrandFiles,
    ImportFile,
    MarketConfig,
    ProgressFn,
)
from goldkey.demo.eyecare import generate_eyecare
from goldkey.demo.mobile import generate_operator

__all__ = [
    "IMPORT_FIELDS",
    "TRUTH_KEY_COLUMNS",
    "BrandFiles",
    "ImportFile",
    "MarketConfig",
    "MarketManifest",
    "generate",
    "load_truth",
]

MANIFEST_NAME = "manifest.json"
TRUTH_DIR = "_truth"
#: bumped when the generator's output changes (2: marketing consent on identify, device ids in the truth;
#: 3: the eye-care CRM file's SMS consent column)
FORMAT = "goldkey-demo-market/3"
EYECARE_CUSTOMER_SHARE = 0.6
OPERATOR_EVENT_SHARE = 0.55


@dataclass(frozen=True)
class MarketManifest:
    """Index of a generated market: config, per-brand files, truth location and counts."""

    out_dir: Path
    config: MarketConfig
    brands: list[BrandFiles]
    truth_path: Path
    counts: dict[str, int]

    def brand(self, brand: str) -> BrandFiles:
        """Return the files of ``brand`` ("eyecare" or "operator"); raise KeyError if absent."""
        for b in self.brands:
            if b.brand == brand:
                return b
        raise KeyError(brand)

    @property
    def dirt_path(self) -> Path:
        """Return the path of the Parquet log of deliberately dirty import cells."""
        return self.truth_path.parent / "dirt.parquet"

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as a JSON-safe dict with paths relative to ``out_dir``."""
        rel = self._rel
        return {
            "format": FORMAT,
            "config": self.config.to_json(),
            "brands": [
                {
                    "brand": b.brand,
                    "name": b.name,
                    "imports": [{"kind": f.kind, "path": rel(f.path), "mapping": f.mapping} for f in b.imports],
                    "event_files": [rel(p) for p in b.event_files],
                }
                for b in self.brands
            ],
            "truth_path": rel(self.truth_path),
            "counts": self.counts,
        }

    def _rel(self, p: Path) -> str:
        return Path(p).relative_to(self.out_dir).as_posix()

    def save(self) -> Path:
        """Write ``out_dir/manifest.json``; return its path."""
        path = self.out_dir / MANIFEST_NAME
        path.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
        return path

    @classmethod
    def load(cls, out_dir: Path | str) -> MarketManifest:
        """Return the manifest stored in ``out_dir/manifest.json`` with absolute paths under ``out_dir``."""
        root = Path(out_dir).resolve()
        data = orjson.loads((root / MANIFEST_NAME).read_bytes())
        if data.get("format") != FORMAT:
            raise ValueError(f"{root}: a market of format {data.get('format')!r}; this generator writes {FORMAT!r}")
        brands = [
            BrandFiles(
                brand=b["brand"],
                name=b["name"],
                imports=[ImportFile(f["kind"], root / f["path"], dict(f["mapping"])) for f in b["imports"]],
                event_files=[root / p for p in b["event_files"]],
            )
            for b in data["brands"]
        ]
        return cls(
            root,
            MarketConfig.from_json(data["config"]),
            brands,
            root / data["truth_path"],
            {k: int(v) for k, v in data["counts"].items()},
        )


def generate(
    out_dir: Path | str,
    config: MarketConfig = MarketConfig(),  # noqa: B008 - frozen
    progress: ProgressFn | None = None,
) -> MarketManifest:
    """Generate the demo market into ``out_dir`` (created if needed) and return its manifest.

    ``progress`` (optional) is called with the running number of events written so far. About 60% of
    ``config.customers`` are eye-care customers and 40% operator subscribers; the total number of events
    is within a few percent of ``config.events`` as long as there are at least ~40 events per customer.
    """
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # a half-written market never has a manifest
    n_eye = round(config.customers * EYECARE_CUSTOMER_SHARE)
    n_op = config.customers - n_eye
    # The operator goes first: its window length is rounded to whole days, the eye-care brand then
    # absorbs the difference so that the total stays close to the target.
    op = generate_operator(root / "operator", config, n_op, round(config.events * OPERATOR_EVENT_SHARE), progress, 0)
    op_events = op.counts["operator.events"]
    eye = generate_eyecare(root / "eyecare", config, n_eye, max(0, config.events - op_events), progress, op_events)

    truth_dir = root / TRUTH_DIR
    truth_dir.mkdir(exist_ok=True)
    truth = pl.concat([eye.truth, op.truth], how="diagonal_relaxed")
    truth_path = truth_dir / "preferences.parquet"
    truth.write_parquet(truth_path, statistics=False)
    dirt = pl.concat([eye.dirt, op.dirt])
    dirt.write_parquet(truth_dir / "dirt.parquet", statistics=False)

    counts: dict[str, int] = {
        "customers": config.customers,
        "events": eye.counts["eyecare.events"] + op_events,
    }
    for res in (eye, op):
        counts.update(res.counts)
    for res in (eye, op):
        b = res.files.brand
        counts[f"{b}.bad"] = sum(v for k, v in res.counts.items() if k.startswith(f"{b}.") and k.endswith(".bad"))
    manifest = MarketManifest(root, config, [eye.files, op.files], truth_path, counts)
    manifest.save()
    return manifest


def load_truth(manifest_or_path: MarketManifest | Path | str) -> pl.DataFrame:
    """Return the hidden per-customer truth table.

    Accepts a manifest, a market directory (containing manifest.json) or the Parquet file itself.
    Columns: the keys ``brand, crm_id, user_id, phone`` (as the platform sees them) and hidden
    preferences/labels such as ``prefers_lens_offer``, ``affinity_sms``, ``base_response_rate``,
    ``price_sensitivity``, ``churn_propensity``, ``data_pack_propensity``, ``true_buyer_group``.
    """
    if isinstance(manifest_or_path, MarketManifest):
        path = manifest_or_path.truth_path
    else:
        p = Path(manifest_or_path)
        path = MarketManifest.load(p).truth_path if p.is_dir() else p
    return pl.read_parquet(path)
