"""Scan a dataset or mixture without training: which records would fail, and why, file by file.

    xgenmm-fast validate train.yaml            # a config with a `data:` section
    xgenmm-fast validate data/mix.yaml         # or a mixture YAML, a .json/.jsonl file, or a folder of them
    xgenmm-fast validate dpo.yaml              # a DPO config (it has a `dpo:` section): preference records
    xgenmm-fast validate prefs.json --preference [--format rlaif_v]

Config: the training config (training/config.py) is read as `xgenmm-fast train` reads it; only these
keys matter here, other keys are ignored::

    data:
      data_path: data/mix.yaml      # .json / .jsonl file, folder of them, or mixture YAML
      image_path_map: paths.yaml    # optional: YAML {prefix: replacement}, or the original's .py dict file
                                    #   (paths.py, or paths.py#IMAGE_FOLDER_DICT_GCP when it holds several)
      tokenizer: /models/xgenmm     # optional: HF tokenizer directory; absent -> the tiny offline tokenizer
                                    #   (every check runs, but token counts are only approximate)
      max_text_tokens: 2048         # text kept before image tokens are inserted (SPEC §4)
      max_tokens: 4096              # packing budget per row in stream tokens (training's default if absent)
    model:
      config: ...                   # preset name, config.json or checkpoint directory: tile size, anyres
      init: tiny                    #   grids, latents per tile (config first, else init; a bare
                                    #   `model: NAME` works too; default: the released model)
    train:
      seed: 42                      # mixture sampling seed, as training uses it
    dpo:                            # present (a DPO config): the records are preference pairs
      format: auto                  #   (data/preference.py: canonical, vlfeedback, rlaif_v, llava_rlhf)

Paths are taken as written (relative ones from the current directory), as training does; file names
inside a mixture YAML are relative to the YAML, and image paths as described in sources.py.
Command-line options override the file.

What is checked, per record (sources.load_records for the records; sft_dataset.SFTDataset for the rest,
so the verdicts are the ones training would reach):
- errors (the record would come back as a BadSample): roles or their order, chat markers in text, empty
  answers, ``<image>`` count problems (text-only records with ``<image>``; multi-image records whose tag
  count differs), a truncation that leaves no labelled token or cuts an ``<image>``, image files missing,
  empty or unreadable, and with ``check_images="decode"`` images whose pixels do not decode;
- warnings (the record trains, cut): text longer than ``max_text_tokens`` ("would be truncated") and a
  stream longer than ``max_tokens`` ("would be truncated to the budget").
Preference data (``preference=True``; data/preference.py) is checked as `xgenmm-fast dpo` reads it:
records converted from their format, the prompt + each answer tokenized, images as above; lengths are
a pair's (prompt twice, both answers).
A mixture is checked as training would load it (the sampled records, each distinct record once); with
``all_records=True`` every record of every listed file is checked. Files that cannot be read at all
(missing, invalid JSON, ...) are reported as file errors. Exit code: 0 when nothing is bad, else 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .chat import DEFAULT_MAX_LENGTH, RecordError, tokenize_conversation
from .sft_dataset import DEFAULT_IO_WORKERS, SFTDataset, image_error_reason
from .sources import (
    ALL_SAMPLES,
    DEFAULT_SEED,
    DataFileSpec,
    DataSourceError,
    load_data_file,
    load_path_map,
    resolve_data_spec,
)

CHECK_IMAGES = ("decode", "header")
ERROR, WARNING = "error", "warning"


@dataclass
class RecordIssue:
    index: int  # position in its file
    sample_id: str
    severity: str  # ERROR or WARNING
    reason: str


@dataclass
class FileReport:
    path: str
    records: int = 0  # distinct records checked
    sampled: int | None = None  # records a mixture takes from this file (None: the whole file)
    images_checked: int = 0  # distinct image files checked
    error: str | None = None  # the file itself could not be read
    issues: list[RecordIssue] = field(default_factory=list)

    @property
    def bad(self) -> int:
        return sum(1 for i in self.issues if i.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for i in self.issues if i.severity == WARNING)

    @property
    def ok(self) -> int:
        return self.records - self.bad


@dataclass
class ValidationReport:
    data_spec: str
    files: list[FileReport]
    check_images: str
    max_text_tokens: int
    max_tokens: int | None
    notes: list[str] = field(default_factory=list)  # e.g. "tiny tokenizer: approximate lengths"
    distinct_images: int = 0  # image files checked, each counted once across all files

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def bad(self) -> int:
        return sum(f.bad for f in self.files)

    @property
    def warnings(self) -> int:
        return sum(f.warnings for f in self.files)

    @property
    def images_checked(self) -> int:
        return self.distinct_images

    @property
    def file_errors(self) -> int:
        return sum(1 for f in self.files if f.error is not None)

    @property
    def ok(self) -> bool:
        """True when no record is bad and every file could be read."""
        return self.bad == 0 and self.file_errors == 0

    def totals(self) -> dict:
        return {"files": len(self.files), "file_errors": self.file_errors, "records": self.records,
                "ok": self.records - self.bad, "bad": self.bad, "warnings": self.warnings,
                "images_checked": self.images_checked}

    def format(self, max_lines_per_file: int | None = None) -> str:
        """Readable text: a summary, then per file its counts and one line per bad record / warning
        (``file:index id=... reason``)."""
        t = self.totals()
        head = (f"validate {self.data_spec}: {t['files']} file(s), {t['records']} records: {t['ok']} ok, "
                f"{t['bad']} bad, {t['warnings']} warning(s), {t['images_checked']} images checked "
                f"({self.check_images}); max_text_tokens={self.max_text_tokens}, max_tokens={self.max_tokens}")
        lines = [head]
        lines += [f"note: {n}" for n in self.notes]
        for f in self.files:
            if f.error is not None:
                lines.append(f"== {f.path}: FILE ERROR: {f.error}")
                continue
            sampled = f" (mixture takes {f.sampled})" if f.sampled is not None else ""
            lines.append(f"== {f.path}: {f.records} records{sampled}, {f.ok} ok, {f.bad} bad, "
                         f"{f.warnings} warning(s), {f.images_checked} images")
            issues = sorted(f.issues, key=lambda i: (i.severity != ERROR, i.index))
            shown = issues if max_lines_per_file is None else issues[:max_lines_per_file]
            for i in shown:
                tag = "" if i.severity == ERROR else "warning: "
                lines.append(f"{f.path}:{i.index} id={i.sample_id!r} {tag}{i.reason}")
            if len(shown) < len(issues):
                lines.append(f"... {len(issues) - len(shown)} more in {f.path}")
        lines.append("OK" if self.ok else "FAILED: bad records or unreadable files found")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "data_spec": self.data_spec,
            "check_images": self.check_images,
            "max_text_tokens": self.max_text_tokens,
            "max_tokens": self.max_tokens,
            "notes": list(self.notes),
            "totals": self.totals(),
            "files": [
                {"path": f.path, "records": f.records, "sampled": f.sampled, "ok": f.ok, "bad": f.bad,
                 "warnings": f.warnings, "images_checked": f.images_checked, "error": f.error,
                 "issues": [{"index": i.index, "id": i.sample_id, "severity": i.severity, "reason": i.reason}
                            for i in f.issues]}
                for f in self.files
            ],
        }


def _decode_check(paths: list[str], workers: int) -> dict[str, str | None]:
    """path -> None when its pixels decode, else the reason."""
    from .image_io import load_image

    def one(p):
        try:
            load_image(p)
            return p, None
        except Exception as e:  # noqa: BLE001 -- any decoder failure makes the image bad
            return p, image_error_reason(p, e)[1]

    if workers <= 1 or len(paths) < 2:
        return dict(one(p) for p in paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, paths))


def validate_dataset(data_spec, path_map=None, tokenizer=None, info=None, config=None,
                     max_text_tokens: int = DEFAULT_MAX_LENGTH, max_tokens: int | None = None,
                     check_images: str = "decode", seed: int = DEFAULT_SEED, base_dir=None,
                     all_records: bool = False, io_workers: int = DEFAULT_IO_WORKERS,
                     preference: bool | None = False, format: str = "auto") -> ValidationReport:
    """Check ``data_spec`` (sources.load_records specs) record by record; see the module docstring.

    tokenizer/info: a prepared tokenizer (None: the tiny offline one, with a note in the report);
    config: XGenMMConfig-like (None: the released model's geometry); preference/format: the records are
    DPO preference pairs in that format (data/preference.py), None: decided by the first record's keys.
    Never raises for bad data or unreadable
    data files; raises ValueError for bad arguments.
    """
    if check_images not in CHECK_IMAGES:
        raise ValueError(f"check_images must be one of {CHECK_IMAGES}, got {check_images!r}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    notes: list[str] = []
    if tokenizer is None:
        tokenizer, info = _tiny_tokenizer()
        notes.append("no tokenizer given: the tiny offline tokenizer was used, token counts are approximate")
    elif info is None:
        from .tokenizer import prepare_tokenizer

        info = prepare_tokenizer(tokenizer)
    if config is None:
        from ..config import released_config

        config = released_config()
    spec_name = str(data_spec) if not isinstance(data_spec, dict) else "data_path mapping"
    report = ValidationReport(spec_name, [], check_images, int(max_text_tokens), max_tokens, notes)
    try:
        files = resolve_data_spec(data_spec, base_dir)
    except DataSourceError as e:
        report.files.append(FileReport(path=spec_name, error=str(e)))
        return report
    try:
        pm = load_path_map(path_map, base_dir)
    except DataSourceError as e:
        report.files.append(FileReport(path=str(path_map), error=f"image path map: {e}"))
        return report

    # Load every file; each distinct record once.
    records, owners = [], []  # owners[k]: FileReport of records[k]
    for fs in files:
        fr = FileReport(path=fs.path, sampled=None if fs.n_samples == ALL_SAMPLES else fs.n_samples)
        report.files.append(fr)
        load_spec = DataFileSpec(fs.path, ALL_SAMPLES, fs.mixture) if all_records else fs
        try:
            loaded = load_data_file(load_spec, pm, seed)
        except DataSourceError as e:
            fr.error = str(e)
            continue
        seen = set()
        for r in loaded:
            if r.index not in seen:
                seen.add(r.index)
                records.append(r)
                owners.append(fr)
        fr.records = len(seen)
    if not records:
        return report

    if preference is None:  # decide from the first record's keys
        from .preference import looks_like_preference

        preference = looks_like_preference(records[0].data)
        if preference:
            report.notes.append("the records look like preference pairs (chosen/rejected, ...): checked as DPO "
                                "data (--preference or a config with a `dpo:` section says so explicitly)")
    if preference:
        from .preference import canonicalize_records

        records = canonicalize_records(records, pm, format)
    if preference:
        from .preference import PreferenceDataset

        ds = PreferenceDataset(records, tokenizer, info, config, max_text_tokens=max_text_tokens, format=format,
                               io_workers=io_workers)
    else:
        ds = SFTDataset(records, tokenizer, info, config, max_text_tokens=max_text_tokens, io_workers=io_workers)
    lengths = ds.estimate_lengths()
    decoded: dict[str, str | None] = {}
    if check_images == "decode":
        paths = sorted({p for k, r in enumerate(records) if k not in ds.bad_records for p in r.image_paths})
        decoded = _decode_check(paths, io_workers)

    images_per_file: dict[int, set] = {}  # id(FileReport) -> image files read for its records
    for k, (rec, fr) in enumerate(zip(records, owners)):
        images_per_file.setdefault(id(fr), set()).update(p for p in rec.image_paths if p in ds.image_headers)
        if k in ds.bad_records:
            fr.issues.append(RecordIssue(rec.index, rec.sample_id, ERROR, ds.bad_records[k]))
            continue
        failed = [(j, decoded[p]) for j, p in enumerate(rec.image_paths) if decoded.get(p)]
        if failed:
            j, reason = failed[0]
            n = len(rec.image_paths)
            fr.issues.append(RecordIssue(rec.index, rec.sample_id, ERROR,
                                         reason if n == 1 else f"image {j + 1} of {n}: {reason}"))
            continue
        if k in ds.truncated_records and preference:
            fr.issues.append(RecordIssue(rec.index, rec.sample_id, WARNING,
                                         f"prompt + an answer is longer than max_text_tokens={max_text_tokens}: "
                                         "the answer would be truncated"))
        elif k in ds.truncated_records:
            full = _full_text_length(rec.data, tokenizer, info)
            fr.issues.append(RecordIssue(rec.index, rec.sample_id, WARNING,
                                         f"text is {full} tokens > max_text_tokens={max_text_tokens}: "
                                         "would be truncated"))
        if max_tokens is not None and lengths[k] > max_tokens:
            what = "pair stream length (prompt twice + both answers)" if preference else "stream length"
            fr.issues.append(RecordIssue(rec.index, rec.sample_id, WARNING,
                                         f"{what} {lengths[k]} tokens (text + image tokens) > "
                                         f"max_tokens={max_tokens}: would be truncated to the budget"))
    for fr in report.files:
        fr.images_checked = len(images_per_file.get(id(fr), ()))
    report.distinct_images = len(set().union(*images_per_file.values()))
    return report


def _full_text_length(record, tokenizer, info) -> int | str:
    try:
        return len(tokenize_conversation(record, tokenizer, info, max_length=1 << 30, allow_empty=True).input_ids)
    except RecordError:
        return "?"


def _tiny_tokenizer():
    from .tokenizer import build_tiny_tokenizer, load_tokenizer

    with tempfile.TemporaryDirectory(prefix="xgenmm_tiny_tok_") as d:
        return load_tokenizer(build_tiny_tokenizer(d))


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def add_validate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="YAML config with a `data:` section, or a data spec: a .json/.jsonl "
                                       "file, a folder of them, or a mixture YAML (data_path: {file: n})")
    parser.add_argument("--tokenizer", help="tokenizer directory (overrides data.tokenizer)")
    parser.add_argument("--image-path-map", help="YAML {prefix: replacement} or .py dict file[#NAME]")
    parser.add_argument("--model", help="preset name, config.json or checkpoint dir for tile size, grids, latents")
    parser.add_argument("--max-text-tokens", type=int, help=f"default {DEFAULT_MAX_LENGTH}")
    parser.add_argument("--max-tokens", type=int, help="packing budget per row; longer streams get a warning")
    parser.add_argument("--check-images", choices=CHECK_IMAGES, default=None,
                        help="decode: decode every image fully (default); header: read file headers only")
    parser.add_argument("--seed", type=int, help=f"mixture sampling seed (default {DEFAULT_SEED})")
    parser.add_argument("--all-records", action="store_true",
                        help="check every record of every file, not only those a mixture samples")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON ('-' for stdout)")
    parser.add_argument("--max-lines", type=int, default=None, help="issue lines shown per file")
    parser.add_argument("--io-workers", type=int, default=DEFAULT_IO_WORKERS, help="threads reading images")
    parser.add_argument("--preference", action="store_true", default=None,
                        help="DPO preference records (implied by a config with a `dpo:` section)")
    parser.add_argument("--format", default=None, help="preference record format: auto (default), canonical, "
                                                       "vlfeedback, rlaif_v, llava_rlhf")
    return parser


@dataclass
class DataSection:
    """What `validate` reads from a config (module docstring)."""

    data_path: object
    image_path_map: object = None
    tokenizer: str | None = None
    max_text_tokens: int = DEFAULT_MAX_LENGTH
    max_tokens: int | None = None
    seed: int = DEFAULT_SEED
    model: str | None = None  # preset name, config.json or checkpoint directory
    notes: list[str] = field(default_factory=list)
    preference: bool | None = None  # DPO preference records (a `dpo:` section: True); None: by the records' keys
    format: str = "auto"  # their format (dpo.format)


def _training_default(name: str, fallback):
    """The training config's default for data.<name>, so both commands read a config the same way."""
    try:
        from ..training.config import DataSection as TrainingDataSection
    except ImportError:  # pragma: no cover -- training extras missing: validate still works
        return fallback
    return getattr(TrainingDataSection, name, fallback)


def read_data_section(path) -> DataSection:
    """A config YAML with a `data:` section, a mixture YAML, or a data file/folder -> DataSection."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config or data path {str(p)!r} does not exist")
    if p.is_dir() or p.suffix.lower() not in (".yaml", ".yml"):
        return DataSection(data_path=str(p))
    import yaml

    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if isinstance(cfg, dict) and "data_path" in cfg and "data" not in cfg:
        return DataSection(data_path=str(p))  # a mixture YAML
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data"), dict):
        raise ValueError(f"{p}: expected a config with a `data:` mapping (or a mixture YAML with `data_path:`)")
    data = cfg["data"]
    if not data.get("data_path"):
        raise ValueError(f"{p}: `data:` has no `data_path` (a data file, folder of them, or mixture YAML)")

    def positive_int(section, key, default):
        v = section.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{p}: {key} must be a positive integer, got {v!r}")
        return v

    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    seed = train.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{p}: train.seed must be an integer, got {seed!r}")
    sec = DataSection(
        data_path=data["data_path"],
        image_path_map=data.get("image_path_map") or None,
        tokenizer=data.get("tokenizer") or None,
        max_text_tokens=positive_int(data, "max_text_tokens", _training_default("max_text_tokens",
                                                                                DEFAULT_MAX_LENGTH)),
        max_tokens=positive_int(data, "max_tokens", _training_default("max_tokens", None)),
        seed=seed,
    )
    sec.model = _model_spec(cfg.get("model"), sec.notes)
    if isinstance(cfg.get("dpo"), dict):
        sec.preference = True
        sec.format = str(cfg["dpo"].get("format", "auto"))
    return sec


def _model_spec(model, notes: list[str]) -> str | None:
    """`model:` of a training config ({config, init}) or a bare preset / path -> what XGenMMConfig.resolve takes."""
    if isinstance(model, dict):
        cands = [model.get("config"), model.get("init")]
    else:
        cands = [model]
    from ..config import PRESETS

    for c in cands:
        if isinstance(c, str) and c and (c in PRESETS or os.path.isdir(c) or c.lower().endswith(".json")):
            return c
    if any(isinstance(c, str) and c for c in cands):
        notes.append(f"model {model!r} names no preset, config.json or checkpoint directory: the released "
                     "model's geometry (384-px tiles, 128 latents) was assumed")
    return None


def run_validate(args) -> int:
    """The `validate` command: print the report; exit code 0 when nothing is bad, 1 otherwise."""
    from ..config import XGenMMConfig

    try:
        sec = read_data_section(args.config)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok_dir = getattr(args, "tokenizer", None) or sec.tokenizer
    model = getattr(args, "model", None) or sec.model
    tokenizer = info = None
    try:
        if tok_dir:
            from .tokenizer import load_tokenizer

            tokenizer, info = load_tokenizer(tok_dir)
        config = XGenMMConfig.resolve(model) if model else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    arg = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)
    report = validate_dataset(
        sec.data_path,
        path_map=arg("image_path_map", sec.image_path_map),
        tokenizer=tokenizer, info=info, config=config,
        max_text_tokens=arg("max_text_tokens", sec.max_text_tokens),
        max_tokens=arg("max_tokens", sec.max_tokens),
        check_images=arg("check_images", "decode"),
        seed=arg("seed", sec.seed),
        all_records=bool(getattr(args, "all_records", False)),
        io_workers=arg("io_workers", DEFAULT_IO_WORKERS),
        preference=arg("preference", sec.preference),
        format=arg("format", sec.format),
    )
    report.notes.extend(sec.notes)
    print(report.format(getattr(args, "max_lines", None)))
    dest = getattr(args, "json", None)
    if dest:
        text = json.dumps(report.to_dict(), indent=2)
        if dest == "-":
            print(text)
        else:
            Path(dest).write_text(text + "\n", encoding="utf-8")
    return 0 if report.ok else 1


def main(argv=None) -> int:
    parser = add_validate_args(argparse.ArgumentParser(prog="xgenmm-fast validate", description=__doc__.split("\n")[0]))
    return run_validate(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
