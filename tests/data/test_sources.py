"""Loading LLaVA records from files, folders and mixtures; the image-path prefix map."""
from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

from xgenmm_fast.data.sources import (
    DEFAULT_SEED,
    DataFileNotFoundError,
    DataSourceError,
    ImagePathMap,
    SourceRecord,
    as_source_records,
    load_path_map,
    load_records,
    resolve_data_spec,
)

from ._records import record, write_json, write_jsonl


def _ids(records):
    return [r.data["id"] for r in records]


def _make(tmp_path, name, n, prefix=None):
    prefix = prefix or name.split(".")[0]
    recs = [record(f"{prefix}{i}") for i in range(n)]
    return (write_jsonl if name.endswith(".jsonl") else write_json)(tmp_path / name, recs)


# ------------------------------------------------------------------------------------------- files


def test_json_file_records_remember_file_and_index(tmp_path):
    f = _make(tmp_path, "a.json", 3)
    recs = load_records(f)
    assert _ids(recs) == ["a0", "a1", "a2"]
    assert all(isinstance(r, SourceRecord) for r in recs)
    assert [(r.source, r.index) for r in recs] == [(str(f), 0), (str(f), 1), (str(f), 2)]
    assert recs[1].sample_id == "a1" and recs[1].location == f"{f}:1"


def test_jsonl_file_skips_blank_lines(tmp_path):
    f = write_jsonl(tmp_path / "b.jsonl", [record("x"), record("y")], blank_lines=True)
    recs = load_records(f)
    assert _ids(recs) == ["x", "y"] and [r.index for r in recs] == [0, 1]


def test_folder_loads_json_and_jsonl_sorted(tmp_path):
    _make(tmp_path, "b.jsonl", 2)
    _make(tmp_path, "a.json", 2)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    _make(tmp_path / "sub", "c.json", 1)  # not recursive
    recs = load_records(tmp_path)
    assert _ids(recs) == ["a0", "a1", "b0", "b1"]
    assert [os.path.basename(r.source) for r in recs] == ["a.json", "a.json", "b.jsonl", "b.jsonl"]


def test_record_without_id_is_named_by_location(tmp_path):
    f = write_json(tmp_path / "a.json", [{"conversations": []}])
    assert load_records(f)[0].sample_id == f"{f}:0"


# ------------------------------------------------------------------------------------------- mixtures


def test_mixture_over_and_under_sampling_sizes_and_determinism(tmp_path):
    _make(tmp_path, "big.json", 20)
    _make(tmp_path, "small.jsonl", 3)
    _make(tmp_path, "whole.json", 4)
    _make(tmp_path, "whole2.json", 2)
    mix = tmp_path / "mix.yaml"
    mix.write_text("data_path:\n  big.json: 5\n  small.jsonl: 7\n  whole.json: all\n  whole2.json: -1\n")
    recs = load_records(mix)
    ids = _ids(recs)
    assert len(recs) == 5 + 7 + 4 + 2
    big, small, whole = ids[:5], ids[5:12], ids[12:]
    assert len(set(big)) == 5 and all(i.startswith("big") for i in big)  # without replacement
    assert all(i.startswith("small") for i in small) and max(Counter(small).values()) > 1  # with replacement
    assert whole == ["whole0", "whole1", "whole2", "whole3", "whole20", "whole21"]  # whole files, in order
    # the original's rule: a fresh random.Random(42) per file, sample / choices over the file's records
    assert [r.index for r in recs[:5]] == random.Random(DEFAULT_SEED).sample(range(20), k=5)
    assert [r.index for r in recs[5:12]] == random.Random(DEFAULT_SEED).choices(range(3), k=7)
    assert _ids(load_records(mix)) == ids  # deterministic
    assert _ids(load_records(mix, seed=7)) != ids
    # a file's subset does not depend on the other entries of the mixture
    mix2 = tmp_path / "mix2.yaml"
    mix2.write_text("data_path:\n  whole.json: 2\n  big.json: 5\n")
    assert _ids(load_records(mix2))[2:] == big


def test_mixture_n_equal_to_size_takes_every_record(tmp_path):
    _make(tmp_path, "a.json", 6)
    mix = tmp_path / "m.yml"
    mix.write_text("data_path:\n  a.json: 6\n")
    assert sorted(_ids(load_records(mix))) == sorted(f"a{i}" for i in range(6))


def test_mixture_mapping_inline_with_base_dir(tmp_path):
    _make(tmp_path, "a.json", 4)
    recs = load_records({"a.json": 2}, base_dir=tmp_path)
    assert len(recs) == 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("just a string\n", "needs a top-level 'data_path"),
        ("other: 1\n", "needs a top-level 'data_path"),
        ("data_path: [a.json]\n", "must be a non-empty mapping"),
        ("data_path: {}\n", "must be a non-empty mapping"),
        ("data_path:\n  a.json: lots\n", "count 'lots'"),
        ("data_path:\n  a.json: -3\n", "count -3"),
        ("data_path:\n  a.json: true\n", "count True"),
        ("data_path:\n  a.txt: 3\n", "not a .json or .jsonl"),
        ("data_path: {a.json: 1\n", "invalid YAML"),
    ],
)
def test_malformed_mixture_errors_name_the_yaml(tmp_path, text, match):
    _make(tmp_path, "a.json", 2)
    mix = tmp_path / "mix.yaml"
    mix.write_text(text)
    with pytest.raises(DataSourceError, match=match) as e:
        load_records(mix)
    assert str(mix) in str(e.value)


def test_mixture_pointing_at_missing_json_names_both(tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text("data_path:\n  gone.json: 3\n")
    assert len(resolve_data_spec(mix)) == 1  # listing does not open the files
    with pytest.raises(DataFileNotFoundError) as e:
        load_records(mix)
    assert str(mix) in str(e.value) and "gone.json" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_sampling_from_an_empty_file_is_an_error(tmp_path):
    write_json(tmp_path / "e.json", [])
    with pytest.raises(DataSourceError, match="empty"):
        load_records({"e.json": 2}, base_dir=tmp_path)


# ------------------------------------------------------------------------------------------- file errors


def test_missing_file_and_folder_errors(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="nope.json"):
        load_records(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no \\*.json"):
        load_records(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataSourceError, match="unknown kind"):
        load_records(tmp_path / "x.csv")


def test_invalid_json_names_file_line_and_column(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n  {"id": "a"},\n  {"id": "b",,}\n]\n')
    with pytest.raises(DataSourceError) as e:
        load_records(f)
    assert f"{f}:3:" in str(e.value) and "line 3" in str(e.value)


def test_invalid_jsonl_line_names_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(record("a")) + "\n{oops\n")
    with pytest.raises(DataSourceError, match=r"bad.jsonl:2:2: invalid JSON on line 2"):
        load_records(f)


def test_top_level_not_a_list(tmp_path):
    f = tmp_path / "obj.json"
    f.write_text('{"id": "a"}')
    with pytest.raises(DataSourceError, match="top level is a JSON dict, expected a list"):
        load_records(f)


def test_not_utf8(tmp_path):
    f = tmp_path / "latin.json"
    f.write_bytes('[{"id": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(DataSourceError, match="not UTF-8"):
        load_records(f)


# ------------------------------------------------------------------------------------------- path map


def test_unmatched_paths_relative_to_their_json_absolute_kept(tmp_path):
    sub = tmp_path / "sets" / "one"
    f = write_json(sub / "d.json", [record("r", image="img/x.png"), record("s", image="/abs/y.png"),
                                    record("t", image=["a.png", "b/c.png"])])
    recs = load_records(f)
    assert recs[0].image_paths == (str(sub / "img" / "x.png"),)
    assert recs[1].image_paths == ("/abs/y.png",)
    assert recs[2].image_paths == (str(sub / "a.png"), str(sub / "b" / "c.png"))


def test_yaml_path_map_first_prefix_wins_in_table_order(tmp_path):
    pm = tmp_path / "maps" / "paths.yaml"
    pm.parent.mkdir()
    pm.write_text("coco/: /data/coco/\ncoco/train/: /never/\nshare_textvqa: /data/stv\nrel/: local/\n")
    f = write_json(tmp_path / "d.json", [
        record("a", image="coco/train/1.jpg"),
        record("b", image="share_textvqa/2.jpg"),
        record("c", image="textvqa/3.jpg"),  # no prefix matches (the original's substring test would)
        record("d", image="rel/4.jpg"),
    ])
    recs = load_records(f, path_map=pm)
    assert recs[0].image_paths == ("/data/coco/train/1.jpg",)
    assert recs[1].image_paths == ("/data/stv/2.jpg",)
    assert recs[2].image_paths == (str(tmp_path / "textvqa" / "3.jpg"),)
    assert recs[3].image_paths == (str(pm.parent.resolve() / "local" / "4.jpg"),)  # relative to the map


def test_python_dict_path_map_is_parsed_not_executed(tmp_path):
    marker = tmp_path / "executed"
    py = tmp_path / "data_paths.py"
    py.write_text(
        "import os\n"
        f"open({str(marker)!r}, 'w').write('x')\n"
        "IMAGE_FOLDER_DICT_GCP = {\n"
        "    'allava_laion': '/datasets/allava_laion',\n"
        "    'coco/train2017': '/datasets/coco/train2017',\n"
        "}\n"
    )
    pm = load_path_map(str(py))
    assert pm.entries == (("allava_laion", "/datasets/allava_laion"), ("coco/train2017", "/datasets/coco/train2017"))
    assert not marker.exists()
    assert pm.resolve("coco/train2017/000.jpg") == "/datasets/coco/train2017/000.jpg"


def test_python_path_map_several_dicts_need_a_name(tmp_path):
    py = tmp_path / "paths.py"
    py.write_text("A = {'x/': '/a/'}\nB: dict = {'x/': '/b/'}\n")
    with pytest.raises(DataSourceError, match="several dict assignments"):
        load_path_map(str(py))
    assert load_path_map(f"{py}#B").resolve("x/1.png") == "/b/1.png"
    with pytest.raises(DataSourceError, match="no top-level dict assignment named 'C'"):
        load_path_map(f"{py}#C")


def test_python_path_map_with_code_in_the_dict_is_refused(tmp_path):
    py = tmp_path / "paths.py"
    py.write_text("ROOT = '/r'\nD = {'x': ROOT + '/x'}\n")
    with pytest.raises(DataSourceError, match=r"paths.py:2: D is not a plain literal dict"):
        load_path_map(str(py))


def test_path_map_errors(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="gone.yaml"):
        load_path_map(str(tmp_path / "gone.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(DataSourceError, match="expected a mapping"):
        load_path_map(str(bad))
    bad.write_text("a: 3\n")
    with pytest.raises(DataSourceError, match="must map a non-empty string prefix to a string"):
        load_path_map(str(bad))
    with pytest.raises(DataSourceError, match="expected a .yaml/.yml mapping or a .py"):
        load_path_map(str(tmp_path / "x.txt"))


def test_inline_mapping_and_in_memory_records():
    pm = ImagePathMap.from_mapping({"a/": "/A/", "a/b/": "/never/"})
    assert pm.resolve("a/b/c.png", "/json/dir") == "/A/b/c.png"
    assert pm.resolve("z.png", "/json/dir") == "/json/dir/z.png"
    recs = as_source_records([record("m", image="x.png")])
    assert recs[0].image_paths == ("x.png",) and recs[0].source == "<records>" and recs[0].index == 0
