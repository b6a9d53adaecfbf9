"""validate_dataset / the `validate` command: per-file reports of records that would fail."""
from __future__ import annotations

import argparse
import json

import pytest

from xgenmm_fast.data.validate import add_validate_args, read_data_section, run_validate, validate_dataset

from ._records import (
    BAD_FOUND_BY_HEADER,
    BAD_TRUNC_JPEG,
    EXPECTED_REASONS,
    GOOD_IDS,
    GOOD_LONG,
    MAX_TEXT_TOKENS,
    make_image,
    planted_dataset,
    record,
    small_config,
    write_json,
)
from ._tok import tiny


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny(tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return planted_dataset(root) | {"root": root}


def _validate(spec, tok, **kw):
    kw.setdefault("max_text_tokens", MAX_TEXT_TOKENS)
    return validate_dataset(spec, tokenizer=tok[0], info=tok[1], config=small_config(), **kw)


def _issues(report):
    """{id: (file, index, severity, reason)}; several issues of one record are listed in order."""
    out = {}
    for f in report.files:
        for i in f.issues:
            out.setdefault(i.sample_id, []).append((f.path, i.index, i.severity, i.reason))
    return out


def test_reports_each_planted_bad_record_under_its_file(planted, tok):
    report = _validate(planted["root"], tok)  # the folder: a.json and b.jsonl
    issues = _issues(report)
    for rid, expected in EXPECTED_REASONS.items():
        (path, index, _, reason), = [x for x in issues[rid] if x[2] == "error"]
        assert (path, index) == planted["ids"][rid], rid
        assert expected in reason, (rid, reason)
    assert not any(sev == "error" for rid in GOOD_IDS for *_, sev, _ in issues.get(rid, []))
    t = report.totals()
    assert t == {"files": 2, "file_errors": 0, "records": 12, "ok": 5, "bad": 7, "warnings": 1,
                 "images_checked": 6}
    a, b = report.files
    assert (a.records, a.bad, a.ok, b.records, b.bad, b.ok) == (7, 4, 3, 5, 3, 2)
    assert not report.ok


def test_over_length_text_is_a_warning(planted, tok):
    report = _validate(planted["root"], tok)
    (_, _, severity, reason), = _issues(report)[GOOD_LONG]
    assert severity == "warning" and "would be truncated" in reason and f"max_text_tokens={MAX_TEXT_TOKENS}" in reason


def test_budget_warning(planted, tok):
    report = _validate(planted["root"], tok, max_tokens=40)
    budget = [i for f in report.files for i in f.issues if "truncated to the budget" in i.reason]
    assert budget and all(i.severity == "warning" for i in budget)
    assert {i.sample_id for i in budget} <= set(GOOD_IDS)


def test_header_mode_does_not_decode(planted, tok):
    report = _validate(planted["root"], tok, check_images="header")
    bad = {rid for rid, xs in _issues(report).items() if any(x[2] == "error" for x in xs)}
    assert bad == set(BAD_FOUND_BY_HEADER)  # the truncated JPEG's header is fine
    assert BAD_TRUNC_JPEG not in bad


def test_format_and_json(planted, tok):
    report = _validate(planted["root"], tok)
    text = report.format()
    for rid in EXPECTED_REASONS:
        path, index = planted["ids"][rid]
        line = next(x for x in text.splitlines() if x.startswith(f"{path}:{index} id={rid!r} "))
        assert EXPECTED_REASONS[rid] in line
    assert "12 records: 5 ok, 7 bad, 1 warning(s), 6 images checked (decode)" in text
    assert text.splitlines()[-1].startswith("FAILED")
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["totals"]["bad"] == 7
    assert sum(len(f["issues"]) for f in d["files"]) == 8
    short = report.format(max_lines_per_file=1)
    assert "... 3 more in" in short


def test_clean_mixture_is_ok_and_counts_distinct_records(tmp_path, tok):
    make_image(tmp_path / "img" / "x.png")
    write_json(tmp_path / "a.json", [record("a0", image="img/x.png"), record("a1")])
    (tmp_path / "mix.yaml").write_text("data_path:\n  a.json: 9\n")
    report = _validate(tmp_path / "mix.yaml", tok)
    assert report.ok and report.totals()["records"] == 2 and report.files[0].sampled == 9
    assert "(mixture takes 9)" in report.format() and report.format().endswith("OK")


def test_unreadable_files_are_file_errors(tmp_path, tok):
    write_json(tmp_path / "a.json", [record("a0")])
    (tmp_path / "broken.json").write_text("[{")
    (tmp_path / "mix.yaml").write_text("data_path:\n  a.json: 1\n  broken.json: 1\n  gone.json: 2\n")
    report = _validate(tmp_path / "mix.yaml", tok)
    errors = {f.path.rsplit("/", 1)[-1]: f.error for f in report.files if f.error}
    assert set(errors) == {"broken.json", "gone.json"}
    assert "invalid JSON" in errors["broken.json"] and "does not exist" in errors["gone.json"]
    assert report.totals()["records"] == 1 and not report.ok
    assert "FILE ERROR" in report.format()
    missing = _validate(tmp_path / "nothing.json", tok)
    assert not missing.ok and missing.file_errors == 1


def _cli(argv):
    return run_validate(add_validate_args(argparse.ArgumentParser()).parse_args([str(a) for a in argv]))


def test_cli_training_config(planted, tok, tmp_path, capsys, monkeypatch):
    tok_dir = tok[0].name_or_path
    root = planted["root"]
    # a training config; images addressed through a path map; paths relative to the current directory
    write_json(root / "mapped" / "m.json", [record("m0", image="IMG/red.png"), record("m1", image="IMG/gone.png")])
    (root / "map.yaml").write_text(f"IMG/: {root / 'images'}/\n")
    cfg = root / "train.yaml"
    cfg.write_text(
        "model:\n"
        "  init: tiny\n"
        "  freeze_vision: true\n"
        "data:\n"
        "  data_path: mapped/m.json\n"
        "  image_path_map: map.yaml\n"
        f"  tokenizer: {tok_dir}\n"
        f"  max_text_tokens: {MAX_TEXT_TOKENS}\n"
        "  num_workers: 4    # a training key: ignored here\n"
        "train:\n"
        "  seed: 7\n"
    )
    monkeypatch.chdir(root)
    sec = read_data_section(cfg)
    assert (sec.data_path, sec.image_path_map, sec.model, sec.seed) == ("mapped/m.json", "map.yaml", "tiny", 7)
    assert sec.max_tokens == 4096  # the training config's default budget
    out_json = tmp_path / "r.json"
    assert _cli([cfg, "--json", out_json]) == 1
    out = capsys.readouterr().out
    assert "mapped/m.json:1 id='m1' image file not found" in out
    assert "gone.png" in out
    assert json.loads(out_json.read_text())["totals"]["bad"] == 1
    # a bare data file, no tokenizer: the tiny one is built, with a note
    write_json(tmp_path / "clean.json", [record("c0")])
    assert _cli([tmp_path / "clean.json", "--max-text-tokens", 64]) == 0
    out = capsys.readouterr().out
    assert "tiny offline tokenizer" in out and out.rstrip().endswith("OK")


def test_cli_bad_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  max_tokens: 8\n")
    assert _cli([cfg]) == 2
    assert "no `data_path`" in capsys.readouterr().err
    assert _cli([tmp_path / "nope.yaml"]) == 2
    cfg.write_text("data:\n  data_path: x.json\n  max_tokens: -1\n")
    assert _cli([cfg]) == 2
    assert "max_tokens must be a positive integer" in capsys.readouterr().err


def test_model_section_without_a_usable_config_is_noted(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  init: weights.pt\ndata:\n  data_path: x.json\n")
    sec = read_data_section(cfg)
    assert sec.model is None and "released model's geometry" in sec.notes[0]
    cfg.write_text("model:\n  init: weights.pt\n  config: tiny_wide\ndata:\n  data_path: x.json\n")
    assert read_data_section(cfg).model == "tiny_wide"
