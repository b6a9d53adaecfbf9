"""Where SFT records come from: LLaVA-format files, folders, mixtures, and the image-path prefix map.

Data specs (``load_records(spec)``; the training config's ``data.data_path`` takes the same values):

- a JSON file holding a list of records (``*.json``);
- a JSONL file, one record per line, blank lines skipped (``*.jsonl``);
- a folder: every ``*.json`` / ``*.jsonl`` directly inside it (not recursive), in sorted name order;
- a mixture YAML (``*.yaml`` / ``*.yml``) in the original's format::

      data_path:
        /data/llava_665k.json: 665298     # n == file size: every record (in a seeded random order)
        relative/ocr.json: 20000          # n < size: sampled WITHOUT replacement
        relative/small.jsonl: 50000       # n > size: sampled WITH replacement
        other.json: all                   # or -1: the whole file, in file order

  Relative file names are resolved against the YAML's directory. Each file is sampled with its own
  ``random.Random(seed)`` (default seed 42), exactly as the original did (``random.Random(42).sample``
  when n <= size, ``.choices`` when n > size), so a file's subset does not depend on the other entries.
  A mapping ``{file: n, ...}`` can also be passed directly (e.g. inline in a training config).

Every loaded record is a ``SourceRecord`` that remembers its file and its 0-based index in that file
(position in the JSON list, or among the non-blank lines of a JSONL file), so every later error can say
``file:index``. Records are kept as loaded: malformed ones are reported later, per record, by
``SFTDataset`` / ``validate_dataset``, never here.

Image paths (``ImagePathMap``): a table ``{prefix: replacement}``; the FIRST entry, in table order,
whose prefix starts the path wins and that prefix is replaced once (``replacement + path[len(prefix):]``).
Difference from the original (``get_image_fullpath``): it tested ``prefix in path`` (a substring
anywhere) and then ``path.replace(prefix, replacement)`` (every occurrence), so "textvqa" also matched
"share_textvqa/..." unless listed after it; and a path that matched no entry, or did not exist, ended
the whole run with ``exit(0)``. Here a path that matches no prefix is kept if absolute and, if
relative, resolved against the directory of the JSON file it came from; a relative replacement is
resolved against the map's own directory (the map file's, or ``base_dir``). A path that does not exist
is not an error at load time: the dataset flags that record bad, naming the record and the path.

A map is read from a YAML mapping file, or from the original's Python file
(``IMAGE_FOLDER_DICT_GCP = {...}``): that file is parsed with ``ast`` and only the dict literal is
evaluated (``ast.literal_eval``); nothing in it is executed. A file with several dict assignments needs
the name: ``paths.py#IMAGE_FOLDER_DICT_GCP``.
"""
from __future__ import annotations

import ast
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SEED = 42  # the original's random.Random(42) for mixture sampling
JSON_SUFFIX, JSONL_SUFFIX = ".json", ".jsonl"
DATA_SUFFIXES = (JSON_SUFFIX, JSONL_SUFFIX)
YAML_SUFFIXES = (".yaml", ".yml")
PYTHON_SUFFIX = ".py"
ALL_SAMPLES = -1  # mixture count meaning "the whole file, in file order" (also written "all")


class DataSourceError(ValueError):
    """A data file, folder, mixture or path map that cannot be read; the message names the file."""


class DataFileNotFoundError(DataSourceError, FileNotFoundError):
    """A data file, folder, mixture or path map that does not exist."""


# ---------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record as loaded, with where it came from and its image paths already mapped."""

    data: Any  # the JSON value (a dict for a well-formed record)
    source: str  # the file it was read from
    index: int  # 0-based position in that file
    image_paths: tuple[str, ...] = ()  # resolved paths; () for text-only records or a malformed "image"

    @property
    def sample_id(self) -> str:
        """The record's "id" when it has one, else ``file:index``."""
        if isinstance(self.data, dict) and self.data.get("id") is not None:
            return str(self.data["id"])
        return self.location

    @property
    def location(self) -> str:
        return f"{self.source}:{self.index}"


def raw_image_paths(record) -> list[str]:
    """The record's "image" entry as a list of str; [] when absent or malformed (validation reports it)."""
    if not isinstance(record, dict):
        return []
    img = record.get("image")
    if isinstance(img, str):
        return [img]
    if isinstance(img, list) and img and all(isinstance(x, str) for x in img):
        return list(img)
    return []


def make_record(data, source, index: int, path_map: ImagePathMap | None = None) -> SourceRecord:
    """Wrap one JSON record; its image paths are mapped (``path_map``) or resolved against the file's dir."""
    source = str(source)
    base = os.path.dirname(os.path.abspath(source))
    pm = path_map if path_map is not None else ImagePathMap()
    paths = tuple(pm.resolve(p, base) for p in raw_image_paths(data))
    return SourceRecord(data=data, source=source, index=index, image_paths=paths)


def as_source_records(records: Iterable, source: str = "<records>") -> list[SourceRecord]:
    """SourceRecords as they are; plain dicts are wrapped (source ``source``, index = position), their
    image paths kept as written."""
    out = []
    for i, r in enumerate(records):
        if isinstance(r, SourceRecord):
            out.append(r)
        else:
            out.append(SourceRecord(data=r, source=source, index=i, image_paths=tuple(raw_image_paths(r))))
    return out


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise DataFileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise DataSourceError(f"{what} {str(path)!r} is a directory, expected a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataSourceError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise DataSourceError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None


def read_json_records(path) -> list:
    """The record list of a JSON file (top level must be a list) or a JSONL file (one value per line)."""
    path = Path(path)
    text = _read_text(path, "data file")
    if path.suffix.lower() == JSONL_SUFFIX:
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataSourceError(f"{path}:{lineno}:{e.colno}: invalid JSON on line {lineno}: {e.msg}") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataSourceError(f"{path}:{e.lineno}:{e.colno}: invalid JSON (line {e.lineno}, column {e.colno}): "
                              f"{e.msg}") from None
    if not isinstance(data, list):
        raise DataSourceError(f"{path}: top level is a JSON {type(data).__name__}, expected a list of records "
                              "(LLaVA format)")
    return data


def _resolve(path, base_dir) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


# ---------------------------------------------------------------------------------------------------
# Data specs: file, folder, mixture
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFileSpec:
    """One data file to read, and how many records to take from it (ALL_SAMPLES: the whole file)."""

    path: str
    n_samples: int = ALL_SAMPLES
    mixture: str | None = None  # the mixture YAML that listed it, for error messages


def _parse_count(value, key, where: str) -> int:
    if isinstance(value, str) and value.strip().lower() == "all":
        return ALL_SAMPLES
    if isinstance(value, bool) or not isinstance(value, int) or value < ALL_SAMPLES:
        raise DataSourceError(f"{where}: entry {key!r} has count {value!r}; expected a non-negative integer, "
                              f"-1 or 'all'")
    return value


def parse_mixture(mapping, where: str, base_dir=None) -> list[DataFileSpec]:
    """``{json_file: n, ...}`` -> DataFileSpecs, relative names against ``base_dir``."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise DataSourceError(f"{where}: 'data_path' must be a non-empty mapping {{json_file: n_samples, ...}}, "
                              f"got {type(mapping).__name__} {mapping!r:.80}")
    out = []
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise DataSourceError(f"{where}: data file names must be strings, got {key!r}")
        n = _parse_count(value, key, where)
        p = _resolve(key, base_dir)
        if p.suffix.lower() not in DATA_SUFFIXES:
            raise DataSourceError(f"{where}: entry {key!r} is not a .json or .jsonl file")
        out.append(DataFileSpec(str(p), n, where))
    return out


def read_mixture_yaml(path) -> list[DataFileSpec]:
    """A mixture YAML (``data_path: {json_file: n, ...}``) -> DataFileSpecs. Files are not opened here."""
    import yaml

    path = Path(path)
    text = _read_text(path, "mixture file")
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise DataSourceError(f"{path}{at}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(cfg, dict) or "data_path" not in cfg:
        got = f"keys {list(cfg)}" if isinstance(cfg, dict) else type(cfg).__name__
        raise DataSourceError(f"{path}: a mixture YAML needs a top-level 'data_path: {{json_file: n_samples, ...}}'"
                              f" mapping, got {got}")
    return parse_mixture(cfg["data_path"], str(path), path.parent)


def resolve_data_spec(spec, base_dir=None) -> list[DataFileSpec]:
    """A data spec (module docstring) -> the data files it names, in load order. Nothing is read but
    folder listings and the mixture YAML."""
    if isinstance(spec, DataFileSpec):
        return [spec]
    if isinstance(spec, Mapping):
        return parse_mixture(spec, "data_path mapping", base_dir)
    if isinstance(spec, (list, tuple)):
        return [f for s in spec for f in resolve_data_spec(s, base_dir)]
    if not isinstance(spec, (str, os.PathLike)):
        raise DataSourceError(f"data spec must be a path or a {{file: n}} mapping, got {type(spec).__name__}")
    p = _resolve(spec, base_dir)
    if not p.exists():
        raise DataFileNotFoundError(f"data path {str(p)!r} does not exist")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataSourceError(f"data folder {str(p)!r} holds no *.json or *.jsonl files")
        return [DataFileSpec(str(f)) for f in files]
    suffix = p.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return read_mixture_yaml(p)
    if suffix in DATA_SUFFIXES:
        return [DataFileSpec(str(p))]
    raise DataSourceError(f"data path {str(p)!r}: unknown kind (expected a .json/.jsonl file, a folder of them, "
                          "or a .yaml mixture)")


def sample_records(records: Sequence, n: int, seed: int = DEFAULT_SEED, where: str = "") -> list[int]:
    """Indices of the records a mixture entry takes (the original's rule, module docstring)."""
    if n == ALL_SAMPLES:
        return list(range(len(records)))
    idx = list(range(len(records)))
    if n > len(records):
        if not records:
            raise DataSourceError(f"{where}: the file is empty, cannot sample {n} records from it")
        return random.Random(seed).choices(idx, k=n)
    return random.Random(seed).sample(idx, k=n)


def load_data_file(file: DataFileSpec | str, path_map: ImagePathMap | None = None,
                   seed: int = DEFAULT_SEED) -> list[SourceRecord]:
    """One data file's records (sampled as the spec says), image paths mapped."""
    if not isinstance(file, DataFileSpec):
        file = DataFileSpec(str(file))
    try:
        raw = read_json_records(file.path)
    except DataFileNotFoundError as e:
        if file.mixture:
            raise DataFileNotFoundError(f"{file.mixture}: {e}") from None
        raise
    picked = sample_records(raw, file.n_samples, seed, file.path)
    return [make_record(raw[i], file.path, i, path_map) for i in picked]


def load_records(spec, path_map=None, seed: int = DEFAULT_SEED, base_dir=None) -> list[SourceRecord]:
    """All records of a data spec (module docstring), in file order, each remembering its file and index.

    ``path_map``: an ImagePathMap, a ``{prefix: replacement}`` mapping, or a path-map file (see
    ``load_path_map``). Raises DataSourceError (DataFileNotFoundError for missing files) naming the file.
    """
    pm = load_path_map(path_map, base_dir)
    out: list[SourceRecord] = []
    for f in resolve_data_spec(spec, base_dir):
        out.extend(load_data_file(f, pm, seed))
    return out


# ---------------------------------------------------------------------------------------------------
# Image path prefix map
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePathMap:
    """``(prefix, replacement)`` pairs in table order; the first prefix that starts a path wins."""

    entries: tuple[tuple[str, str], ...] = ()
    base_dir: str | None = None  # relative replacements are resolved against this (the map file's dir)
    source: str | None = None  # file it was read from (for messages)

    @classmethod
    def from_mapping(cls, mapping, base_dir=None, source: str | None = None) -> ImagePathMap:
        where = source or "image path map"
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise DataSourceError(f"{where}: expected a mapping {{prefix: replacement, ...}}, "
                                  f"got {type(mapping).__name__}")
        entries = []
        for k, v in mapping.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise DataSourceError(f"{where}: entry {k!r}: {v!r} must map a non-empty string prefix to a string")
            entries.append((k, v))
        return cls(tuple(entries), None if base_dir is None else str(base_dir), source)

    def map(self, path: str) -> str | None:
        """The path with the first matching prefix replaced, or None when no prefix matches."""
        for prefix, repl in self.entries:
            if path.startswith(prefix):
                out = os.path.expanduser(repl + path[len(prefix):])
                if not os.path.isabs(out) and self.base_dir is not None:
                    out = os.path.join(self.base_dir, out)
                return out
        return None

    def resolve(self, path: str, json_dir: str | None = None) -> str:
        """Mapped path; unmatched relative paths are joined to ``json_dir`` (the record's file's directory)."""
        mapped = self.map(path)
        if mapped is not None:
            return mapped
        if not os.path.isabs(path) and json_dir is not None:
            return os.path.join(json_dir, path)
        return path

    def __len__(self) -> int:
        return len(self.entries)


def _python_dict_map(path: Path, name: str | None) -> dict:
    text = _read_text(path, "image path map")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise DataSourceError(f"{path}:{e.lineno}:{e.offset}: not valid Python: {e.msg}") from None
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            continue
        if isinstance(value, ast.Dict):
            found[target] = value
    if name is not None:
        if name not in found:
            raise DataSourceError(f"{path}: no top-level dict assignment named {name!r} "
                                  f"(found: {', '.join(found) or 'none'})")
        node = found[name]
    elif len(found) == 1:
        name, node = next(iter(found.items()))
    elif not found:
        raise DataSourceError(f"{path}: no top-level `NAME = {{...}}` dict assignment found")
    else:
        raise DataSourceError(f"{path}: several dict assignments ({', '.join(found)}); name one as "
                              f"'{path}#NAME'")
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError) as e:
        raise DataSourceError(f"{path}:{node.lineno}: {name} is not a plain literal dict of strings "
                              f"(only literals are read, nothing is executed): {e}") from None
    return value


def read_path_map_file(spec) -> ImagePathMap:
    """A path-map file: YAML mapping (``.yaml``/``.yml``) or Python dict file (``.py``, ``file.py#NAME``)."""
    text = str(spec)
    name = None
    if "#" in text and text.rsplit("#", 1)[0].lower().endswith(PYTHON_SUFFIX):
        text, name = text.rsplit("#", 1)
    path = Path(os.path.expanduser(text))
    if path.suffix.lower() == PYTHON_SUFFIX:
        mapping = _python_dict_map(path, name)
    elif path.suffix.lower() in YAML_SUFFIXES:
        import yaml

        raw = _read_text(path, "image path map")
        try:
            mapping = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise DataSourceError(f"{path}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    else:
        raise DataSourceError(f"image path map {str(path)!r}: expected a .yaml/.yml mapping or a .py dict file")
    return ImagePathMap.from_mapping(mapping, base_dir=path.parent.resolve(), source=str(path))


def load_path_map(spec, base_dir=None) -> ImagePathMap:
    """None -> empty map; an ImagePathMap as is; a mapping (relative replacements against ``base_dir``);
    a path to a map file (relative to ``base_dir``)."""
    if spec is None:
        return ImagePathMap()
    if isinstance(spec, ImagePathMap):
        return spec
    if isinstance(spec, Mapping):
        return ImagePathMap.from_mapping(spec, base_dir=base_dir)
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if base_dir is not None and not os.path.isabs(os.path.expanduser(s)):
            s = os.path.join(str(base_dir), s)
        return read_path_map_file(s)
    raise DataSourceError(f"image path map must be a file path or a mapping, got {type(spec).__name__}")
