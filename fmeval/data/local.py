"""A user dataset opened for a run: checked, split, decoded (or read from the cache).

:class:`LocalDataset` answers what every mode asks of a MedMNIST dataset
(``flag``, ``size``, ``task``, ``info.labels``, ``md5``, ``labels(split)``,
``split(split).images``, ``describe()``, ``warnings``), so the pipeline and the
modes take it unchanged. Its ``md5`` is a content hash (SHA-256 of classes,
labels and decoded pixels of every split), the feature cache's key for it.

:func:`build` is the one path from a :class:`~fmeval.data.scan.Manifest` to
that object: problems of the manifest, the split, then the pixels (decoded in
worker processes on first use, read memory-mapped afterwards). Any error stops
it before anything is written; ``write=False`` (``fmeval data check``) never
writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmeval.data import arraycache
from fmeval.data.card import CardInfo, DatasetCard
from fmeval.data.checks import CheckReport, capped, check_classes, check_leakage, check_pixels
from fmeval.data.decode import RESIZE_RULE, VOLUME_RULE, decode_all, stack, stack_shape
from fmeval.data.info import SPLITS, is_multilabel
from fmeval.data.npz import Split
from fmeval.data.scan import Manifest
from fmeval.data.splits import SplitPlan, assign_splits, split_json
from fmeval.errors import DataError


@dataclass(frozen=True)
class SourceOptions:
    """How a user dataset is split and how strict its checks are (run options)."""

    split_ratios: tuple[float, ...] | None = None
    group_by: str | None = None
    split_seed: int = 0
    strict_leakage: bool = False

    def plan(self) -> SplitPlan:
        kw = {"ratios": tuple(self.split_ratios)} if self.split_ratios else {}
        return SplitPlan(seed=self.split_seed, group_by=self.group_by, **kw)


@dataclass
class LocalDataset:
    info: CardInfo
    size: int
    path: Path
    kind: str  # folder | manifest | hf-dataset
    card: DatasetCard
    card_file: str | None
    content_hash: str
    split_record: dict
    checks: CheckReport
    images: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    label_arrays: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    decoded_now: bool = False  # False: read from the decoded-array cache
    origin: str | None = None  # a hub dataset's hf-dataset:<owner/name>[@rev][/<config>]
    md5_policy: str = "off"

    @property
    def flag(self) -> str:
        return self.info.flag

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def md5(self) -> str:
        return self.content_hash

    md5_verified = None  # no official file to compare with

    def labels(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}.")
        return self.label_arrays[name]

    def split(self, name: str) -> Split:
        return Split(images=self.images[name], labels=self.labels(name))

    def describe(self) -> dict:
        return {
            "flag": self.flag, "size": self.size, "task": self.task, "classes": list(self.info.labels),
            "path": str(self.path), "md5": self.content_hash, "md5_verified": None,
            "source": self.kind, "content_hash": self.content_hash, "card": self.card_file,
            "modality": self.card.modality, "license": self.card.license, "split": self.split_record,
            "preprocessing": VOLUME_RULE if self.info.is_volume else RESIZE_RULE, "checks": self.checks.as_dict(),
            **({"origin": self.origin} if self.origin else {}),
            **{f"n_{s}": len(self.label_arrays[s]) for s in SPLITS},
        }


def _identity(manifest: Manifest, codes: np.ndarray) -> tuple[list[tuple[str, bytes]], list[str]]:
    """What keys the decoded arrays, as (name, bytes) blocks: every file's relative path, size and
    mtime_ns (in-memory sources: their fingerprint), then labels, splits and groups; and the
    missing-file lines. Blocks, not rows: hashing 10,000 rows one by one cost more than stat'ing them."""
    blocks, missing = [], []
    if manifest.payload is not None:
        blocks.append(("fingerprint", str(manifest.fingerprint).encode()))
    else:
        stats = manifest.stats
        if stats is None:  # a manifest: stat every file it names
            stats = np.zeros((len(manifest.paths), 2), dtype=np.int64)
            for i, rel in enumerate(manifest.paths):
                try:
                    st = os.stat(manifest.file(i))
                except OSError:
                    missing.append(f"{manifest.where[i]}: file {rel} not found.")
                    continue
                stats[i] = st.st_size, st.st_mtime_ns
        blocks.append(("paths", "\0".join(manifest.paths).encode("utf-8", "surrogateescape")))
        blocks.append(("stats", np.ascontiguousarray(stats, dtype=np.int64).tobytes()))
    blocks.append(("labels", np.ascontiguousarray(manifest.labels, np.int64).tobytes()))
    blocks.append(("splits", np.ascontiguousarray(codes, np.int64).tobytes()))
    if manifest.groups is not None:
        blocks.append(("groups", "\0".join(manifest.groups).encode("utf-8", "surrogateescape")))
    return blocks, missing


def content_digest(task: str, classes, labels: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps({"task": task, "classes": list(classes)}).encode())
    for s in SPLITS:
        h.update(s.encode())
        h.update(np.ascontiguousarray(labels[s], dtype=np.int64).tobytes())
        h.update(repr(images[s].shape).encode())
        h.update(memoryview(np.ascontiguousarray(images[s])).cast("B"))
    return h.hexdigest()


def build(manifest: Manifest, card: DatasetCard, *, kind: str, path: Path, card_file: str | None, size: int,
          options: SourceOptions, write: bool = True, notes: tuple[str, ...] = (),
          origin: str | None = None) -> LocalDataset:
    """Check, split and decode (or read back) a manifest; raise one multi-line DataError on any error."""
    report = CheckReport(errors=list(manifest.problems), warnings=list(manifest.notes))
    multilabel = is_multilabel(card.medmnist_task)
    assignment, record = None, {}
    if options.group_by and manifest.groups is None:
        report.errors.append(f"--group-by {options.group_by}: the {kind} has no such column (only manifests have columns).")
    try:
        assignment, record = assign_splits(manifest.splits, manifest.labels, multilabel, options.plan(),
                                           manifest.groups if options.group_by else None)
    except DataError as exc:
        report.errors.append(str(exc))
    codes = np.full(len(manifest.paths), -1)
    if assignment is not None:
        for k, s in enumerate(SPLITS):
            codes[assignment[s]] = k
    identity, missing = _identity(manifest, codes)
    report.errors += missing
    prep = {"size": size, "rule": RESIZE_RULE, "volume_rule": VOLUME_RULE, "task": card.task, "classes": list(card.classes),
            "split": record.get("sha256"), "strict_leakage": options.strict_leakage}
    key = arraycache.manifest_key(identity, prep)
    hit = arraycache.load(key) if (assignment is not None and not report.errors) else None
    if hit is not None:
        images, meta = hit
        report = CheckReport(**{k: meta["checks"][k2] for k, k2 in
                                (("errors", "errors"), ("warnings", "warnings"), ("duplicates", "cross_split_duplicates"))})
        channels, digest = meta["channels"], meta["content_hash"]
        record["file"] = meta.get("split_file")
    else:
        parts, channels = _decode(manifest, card, assignment, report, size, options, path)
    if report.errors:
        raise DataError(_summary(path, report))
    warnings = [*notes, *report.warnings]  # notes (e.g. "no card") are this run's, never cached
    labels = {s: manifest.labels[assignment[s]] for s in SPLITS}
    if hit is None:
        ndim = manifest.ndim
        with arraycache.Writer(key, enabled=write) as out:  # straight into the cache files: no second copy
            images = {s: stack(parts[s], channels, size, ndim, out=out.array(s, stack_shape(len(parts[s]), channels,
                                                                                              size, ndim)))
                      for s in SPLITS}
            digest = content_digest(card.task, card.classes, labels, images)
            record["file"] = _write_split(card.name, assignment, record) if write else None
            out.commit({"checks": report.as_dict(), "channels": channels, "content_hash": digest,
                        "split_file": record["file"]})
        if write:
            images = arraycache.load(key)[0]  # memory-mapped, as every later run reads it
    info = card.info(n_channels=channels, size=size, ndim=manifest.ndim)
    return LocalDataset(info=info, size=size, path=path, kind=kind, card=card, card_file=card_file,
                        content_hash=digest, split_record=record, checks=report, images=images,
                        label_arrays=labels, warnings=warnings, decoded_now=hit is None, origin=origin)


def _decode(manifest, card, assignment, report, size, options, path):
    """Decode every readable row; add pixel, class and leakage findings to ``report``."""
    if manifest.payload is not None:
        files, todo = manifest.payload, list(range(len(manifest.payload)))
    else:
        files = [manifest.file(i) for i in range(len(manifest.paths))]
        todo = [i for i, f in enumerate(files) if os.path.exists(f)]
    decoded_some = decode_all([files[i] for i in todo], size, f"decoding {card.name}")
    errors, warnings, channels = check_pixels([manifest.where[i] for i in todo], decoded_some)
    report.errors += errors
    report.warnings += warnings
    if assignment is None or report.errors or len(todo) != len(files):
        return None, channels
    decoded = decoded_some  # every row exists
    labels = {s: manifest.labels[assignment[s]] for s in SPLITS}
    report.warnings += check_classes(labels, card.classes, is_multilabel(card.medmnist_task))
    count, line = check_leakage({s: [decoded[i].pixel_hash for i in assignment[s]] for s in SPLITS},
                                {s: [manifest.where[i] for i in assignment[s]] for s in SPLITS})
    report.duplicates = count
    if line:
        (report.errors if options.strict_leakage else report.warnings).append(
            line + (" (--strict-leakage)" if options.strict_leakage else " Pass --strict-leakage to refuse such data."))
    if report.errors:
        return None, channels
    return {s: [decoded[i] for i in assignment[s]] for s in SPLITS}, channels


def _write_split(name: str, assignment: dict[str, np.ndarray], record: dict) -> str:
    """The split as an index file named by its SHA-256 (the record's ``sha256``)."""
    from fmeval.io import atomic_write_text

    target = arraycache.cache_root() / "splits" / f"{name}-{record['sha256'][:16]}.json"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, split_json(assignment))
    return str(target)


def _summary(path: Path, report: CheckReport) -> str:
    n = len(report.errors)
    return f"{path}: {n} problem(s) found, nothing was cached or run:\n  " + "\n  ".join(capped(report.errors))
