"""Drift: population stability index (PSI) of features and predictions against a baseline.

Numeric values are binned by the baseline's quantiles (``bins`` bins; tied edges merge), so each
baseline bin holds about the same share; categorical values by category (the union of both
sides). PSI = sum over bins of (current - baseline) * ln(current / baseline), with empty bins
floored at 1e-4 so the index stays finite. Levels: < 0.1 none, < 0.25 moderate, else significant;
fewer than ``drift_min_samples`` on either side leaves the entry uncomputed.

A baseline is a set of samples per feature (and per "prediction:<name>"): registered for a model
version from training data (samples, or a file of training rows) or captured from a past window
of served traffic. Samples are read (and kept) uniformly sampled down to ``drift_max_samples``.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infermesh_chassis.errors import FailedPrecondition, InvalidArgument, NotFound
from infermesh_monitor.schema import PREDICTION_NAMES, PREDICTION_VALUES
from infermesh_monitor.settings import AnalysisSettings
from infermesh_monitor.stats import micros
from infermesh_monitor.store import Store, json_rows

__all__ = ["Bin", "DriftEntry", "DriftQueries", "Samples", "level", "psi"]

PREDICTION_PREFIX = "prediction:"
_EPSILON = 1e-4
_FORMATS = {
    ".parquet": "Parquet",
    ".csv": "CSVWithNames",
    ".tsv": "TSVWithNames",
    ".jsonl": "JSONEachRow",
    ".ndjson": "JSONEachRow",
    ".json": "JSONEachRow",
}


@dataclass(slots=True)
class Samples:
    """Samples of one feature or prediction output: numbers or categories."""

    numbers: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    count: int = 0
    """How many values there were before sampling down."""

    @property
    def numeric(self) -> bool:
        """Whether the values are numbers."""
        return bool(self.numbers) or not self.categories


@dataclass(frozen=True, slots=True)
class Bin:
    """One bin of a comparison."""

    lower: float
    upper: float
    category: str
    baseline_fraction: float
    current_fraction: float


@dataclass(frozen=True, slots=True)
class DriftEntry:
    """PSI of one name."""

    name: str
    psi: float
    level: str
    baseline_count: int
    current_count: int
    bins: list[Bin]


def level(value: float, computed: bool) -> str:
    """ "unspecified", "none", "moderate" or "significant"."""
    if not computed or math.isnan(value):
        return "unspecified"
    if value < 0.1:
        return "none"
    return "moderate" if value < 0.25 else "significant"


def _psi_terms(baseline: np.ndarray, current: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    b = np.maximum(baseline / max(1, baseline.sum()), _EPSILON)
    c = np.maximum(current / max(1, current.sum()), _EPSILON)
    return float(np.sum((c - b) * np.log(c / b))), baseline / max(1, baseline.sum()), current / max(1, current.sum())


def psi(baseline: Samples, current: Samples, bins: int) -> tuple[float, list[Bin]]:
    """PSI of ``current`` against ``baseline`` and the bins behind it."""
    if baseline.numeric and current.numeric:
        base = np.asarray(baseline.numbers, dtype=float)
        cur = np.asarray(current.numbers, dtype=float)
        base, cur = base[~np.isnan(base)], cur[~np.isnan(cur)]
        if base.size == 0 or cur.size == 0:
            return math.nan, []
        inner = np.unique(np.quantile(base, np.linspace(0, 1, bins + 1))[1:-1])
        b_counts = np.bincount(np.searchsorted(inner, base, side="right"), minlength=len(inner) + 1)
        c_counts = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(inner) + 1)
        value, b_frac, c_frac = _psi_terms(b_counts.astype(float), c_counts.astype(float))
        edges = [-math.inf, *inner.tolist(), math.inf]
        return value, [
            Bin(edges[i], edges[i + 1], "", float(b_frac[i]), float(c_frac[i])) for i in range(len(edges) - 1)
        ]
    categories = sorted(set(baseline.categories) | set(current.categories))
    index = {category: i for i, category in enumerate(categories)}
    b_counts = np.bincount([index[c] for c in baseline.categories], minlength=len(categories)).astype(float)
    c_counts = np.bincount([index[c] for c in current.categories], minlength=len(categories)).astype(float)
    value, b_frac, c_frac = _psi_terms(b_counts, c_counts)
    return value, [Bin(0.0, 0.0, cat, float(b_frac[i]), float(c_frac[i])) for i, cat in enumerate(categories)]


_WINDOW = (
    "time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC') AND time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')"
)


class DriftQueries:
    """Baselines and drift reports (see the module docstring)."""

    def __init__(self, store: Store, settings: AnalysisSettings) -> None:
        self._store = store
        self._settings = settings

    async def window_samples(self, model: str, version: int, start_s: float, end_s: float) -> dict[str, Samples]:
        """Samples of every feature and prediction of ``model``/``version`` served in the window."""
        params = {
            "model": model,
            "version": version,
            "start": micros(start_s),
            "end": micros(end_s),
            "n": self._settings.drift_max_samples,
        }
        where = f"model = {{model:String}} AND model_version = {{version:Int64}} AND {_WINDOW}"
        out: dict[str, Samples] = {}
        rows = await self._store.rows(
            f"""SELECT feature, numeric, count(), groupArraySample({{n:UInt64}}, 1)(value),
                    groupArraySample({{n:UInt64}}, 1)(category)
                FROM feature_samples WHERE {where} GROUP BY feature, numeric""",
            params,
        )
        for name, numeric, count, values, categories in rows:
            samples = out.setdefault(name, Samples())
            samples.count += int(count)
            if numeric:
                samples.numbers.extend(float(v) for v in values if v is not None)
            else:
                samples.categories.extend(categories)
        rows = await self._store.rows(
            f"""SELECT p.1, count(), groupArraySample({{n:UInt64}}, 1)(p.2) FROM inference_events
                ARRAY JOIN arrayZip({PREDICTION_NAMES}, {PREDICTION_VALUES}) AS p
                WHERE {where} AND status_code = 0 GROUP BY p.1""",
            params,
        )
        for name, count, values in rows:
            out[PREDICTION_PREFIX + name] = Samples([float(v) for v in values if v is not None], [], int(count))
        return out

    async def registered_baseline(self, model: str, version: int) -> str:
        """The id of the baseline registered last for ``model``/``version``; NotFound when none."""
        rows = await self._store.rows(
            "SELECT argMax(baseline_id, registered) FROM baselines FINAL"
            " WHERE model = {model:String} AND model_version = {version:Int64} HAVING count() > 0",
            {"model": model, "version": version},
        )
        if not rows:
            raise NotFound(f"no drift baseline is registered for {model} version {version}")
        return str(rows[0][0])

    async def baseline_samples(self, baseline_id: str) -> dict[str, Samples]:
        """The samples of a stored baseline; NotFound when it does not exist."""
        rows = await self._store.rows(
            """SELECT name, numeric, count(), groupArray(value), groupArray(category)
               FROM baseline_samples WHERE baseline_id = {id:String} GROUP BY name, numeric""",
            {"id": baseline_id},
        )
        if not rows:
            raise NotFound(f"drift baseline {baseline_id!r} does not exist")
        out: dict[str, Samples] = {}
        for name, numeric, count, values, categories in rows:
            samples = out.setdefault(name, Samples())
            samples.count += int(count)
            if numeric:
                samples.numbers.extend(float(v) for v in values if v is not None)
            else:
                samples.categories.extend(categories)
        return out

    def report(
        self, baseline: dict[str, Samples], current: dict[str, Samples], names: Iterable[str], bins: int
    ) -> tuple[list[DriftEntry], list[DriftEntry]]:
        """Feature entries and prediction entries for ``names`` (all names on either side when empty)."""
        wanted = set(names)
        features: list[DriftEntry] = []
        predictions: list[DriftEntry] = []
        for name in sorted(set(baseline) | set(current)):
            is_prediction = name.startswith(PREDICTION_PREFIX)
            if wanted and not is_prediction and name not in wanted:
                continue
            b, c = baseline.get(name, Samples()), current.get(name, Samples())
            b_n, c_n = len(b.numbers) + len(b.categories), len(c.numbers) + len(c.categories)
            computed = min(b_n, c_n) >= self._settings.drift_min_samples
            value, bin_list = psi(b, c, bins) if computed else (math.nan, [])
            entry = DriftEntry(name, value, level(value, computed), b.count or b_n, c.count or c_n, bin_list)
            (predictions if is_prediction else features).append(entry)
        return features, predictions

    async def register(
        self,
        *,
        model: str,
        version: int,
        baseline_id: str,
        description: str,
        samples: dict[str, Samples],
        source: str,
    ) -> dict[str, int]:
        """Store ``samples`` as ``baseline_id`` (replacing an older baseline of that id)."""
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(baseline_id.encode()).digest()[:8], "little"))
        limit = self._settings.drift_max_samples
        rows = []
        counts: dict[str, int] = {}
        for name, sample in samples.items():
            numeric = sample.numeric
            values: list[float] | list[str] = sample.numbers if numeric else sample.categories
            if len(values) > limit:
                keep = rng.choice(len(values), limit, replace=False)
                values = [values[i] for i in sorted(keep)]  # type: ignore[assignment]
            counts[name] = len(values)
            for value in values:
                number, category = (float(value), "") if numeric else (math.nan, str(value))
                rows.append(
                    {
                        "baseline_id": baseline_id,
                        "name": name,
                        "value": None if math.isnan(number) else number,
                        "category": category,
                        "numeric": numeric,
                    }
                )
        if not rows:
            raise InvalidArgument("the baseline has no samples")
        await self._store.command("DELETE FROM baseline_samples WHERE baseline_id = {id:String}", {"id": baseline_id})
        await self._store.insert(
            "baseline_samples", json_rows(rows), "JSONEachRow", {"input_format_null_as_default": 1}
        )
        await self._store.insert(
            "baselines",
            json_rows(
                [
                    {
                        "baseline_id": baseline_id,
                        "model": model,
                        "model_version": version,
                        "source": source,
                        "description": description,
                        "samples": len(rows),
                        "registered": time.time(),
                    }
                ]
            ),
            "JSONEachRow",
        )
        return counts

    async def file_samples(self, uri: str, sha256: str) -> dict[str, Samples]:
        """Samples of every column of a file of training rows (local path, file:// or http(s)://)."""
        parsed = urllib.parse.urlparse(uri)
        with tempfile.TemporaryDirectory() as tmp:
            if parsed.scheme in ("http", "https"):
                path = Path(tmp) / (Path(parsed.path).name or "baseline")
                try:
                    urllib.request.urlretrieve(uri, path)
                except OSError as exc:
                    raise FailedPrecondition(f"cannot download {uri}: {exc}") from None
            elif parsed.scheme in ("", "file"):
                path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else uri)
            else:
                raise InvalidArgument(
                    f"unsupported baseline uri scheme {parsed.scheme!r} (local path, file:// or http(s)://)"
                )
            if not path.is_file():
                raise FailedPrecondition(f"baseline file {path} does not exist")
            fmt = _FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise InvalidArgument(f"baseline file {path.name}: unknown extension (one of {sorted(_FORMATS)})")
            if sha256:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest != sha256.lower():
                    raise FailedPrecondition(f"baseline file {path.name}: SHA-256 {digest} does not match {sha256}")
            names, types, rows = await self._store.read_file(path, fmt, self._settings.drift_max_samples)
        out: dict[str, Samples] = {}
        for i, (name, type_) in enumerate(zip(names, types, strict=True)):
            numeric = any(t in type_ for t in ("Int", "Float", "Decimal", "Bool"))
            values = [row[i] for row in rows if row[i] is not None]
            out[name] = (
                Samples([float(v) for v in values], [], len(values))
                if numeric
                else Samples([], [str(v) for v in values], len(values))
            )
        return out
