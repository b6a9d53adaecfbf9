"""`xgenmm-fast generate | chat | eval` on a tiny model saved to disk, and the VLMEvalKit-style class."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from xgenmm_fast.cli import main
from xgenmm_fast.inference.generate import GenerationConfig, Generator


def _greedy(loaded, images, question, history=(), n=6):
    gen = Generator(*loaded)
    request, _ = gen.chat_request(images, question, history)
    cfg = GenerationConfig(max_new_tokens=n, stop_token_ids=gen.default_stop_token_ids(), stop_strings=("<|end|>",))
    return gen.generate([request], cfg)[0].text


def test_generate_streams_the_answer(model_dir, image_paths, loaded, capsys):
    args = ["generate", "--model", model_dir, "--image", image_paths[0], "--image", image_paths[1],
            "--prompt", "What is in the image?", "--max-new-tokens", "6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out == _greedy(loaded, image_paths[:2], "What is in the image?") + "\n"
    # sampling with a seed: reproducible
    assert main(args + ["--temperature", "0.9", "--top-p", "0.9", "--top-k", "20", "--seed", "3"]) == 0
    a = capsys.readouterr().out
    assert main(args + ["--temperature", "0.9", "--top-p", "0.9", "--top-k", "20", "--seed", "3"]) == 0
    assert capsys.readouterr().out == a


def test_chat_reads_stdin_with_images_history_and_commands(model_dir, image_paths, loaded, capsys, monkeypatch):
    script = (f"What is in the image?\n/image {image_paths[1]}\nAnd this one?\n/image /no/such.png\n"
              "/reset\nHello\n/quit\nnever asked\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["chat", "--model", model_dir, "--image", image_paths[0], "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.split("\n")
    a1 = _greedy(loaded, image_paths[:1], "What is in the image?")
    h1 = [("<image>\nWhat is in the image?", a1.strip())]
    a2 = _greedy(loaded, image_paths[:2], "And this one?", h1)
    a3 = _greedy(loaded, image_paths[:1], "Hello")  # after /reset: the start image, no history
    assert lines == [a1, a2, a3, ""]
    assert "image 2 added" in captured.err and "not added" in captured.err and "reset" in captured.err


def test_chat_as_a_subprocess_with_piped_input(model_dir, image_paths):
    proc = subprocess.run([sys.executable, "-m", "xgenmm_fast.cli", "chat", "--model", model_dir,
                           "--max-new-tokens", "4"], input=f"/image {image_paths[2]}\nHi\n", text=True,
                          capture_output=True, timeout=120, check=False, env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "image 1 added" in proc.stderr


@pytest.fixture(scope="module")
def questions(tmp_path_factory, image_paths, loaded):
    """Open questions whose answers are the model's own greedy answers (so they must score 1), a wrong
    one, and multiple-choice ones; images relative to the JSONL file."""
    root = tmp_path_factory.mktemp("eval")
    for p in image_paths:
        os.symlink(p, root / os.path.basename(p))
    names = [os.path.basename(p) for p in image_paths]
    model, tok = loaded
    gen = Generator(model, tok)
    rows = []
    for i, (imgs, q) in enumerate([([names[0]], "What is in the image?"), ([], "Who are you?"),
                                   (names[:2], "Compare the pictures."), ([names[2]], "How many shapes?")]):
        req, _ = gen.chat_request([str(root / n) for n in imgs], q)
        cfg = GenerationConfig(max_new_tokens=8, stop_token_ids=gen.default_stop_token_ids(),
                               stop_strings=("<|end|>",))
        answer = gen.generate([req], cfg)[0].text.strip()
        rows.append({"id": f"open{i}", "image": imgs if len(imgs) != 1 else imgs[0], "question": q,
                     "answer": answer, "category": "own"})
    rows.append({"id": "wrong", "question": "Why is the sky blue?", "answer": "Rayleigh scattering!"})
    rows.append({"id": "mc1", "image": names[0], "question": "What colour?", "choices": ["red", "blue", "green"],
                 "answer": "B"})
    rows.append({"id": "mc2", "question": "Which shape?", "choices": ["circle", "square"], "answer": "square"})
    path = root / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_eval_writes_results(model_dir, questions, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["eval", "--model", model_dir, "--questions", questions, "--out", str(out), "--batch-size", "3",
                 "--max-new-tokens", "8", "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == model_dir and res["num_items"] == 7 and res["seconds"] > 0 and res["date"]
    items = {r["id"]: r for r in res["items"]}
    assert all(items[f"open{i}"]["correct"] for i in range(4)) and not items["wrong"]["correct"]
    assert res["count_by_type"] == {"multiple_choice": 2, "open": 5}
    assert res["accuracy_by_type"]["open"] == pytest.approx(4 / 5)
    assert res["accuracy_by_category"]["own"] == 1.0
    assert items["mc1"]["answer_letter"] == "B" and items["mc2"]["answer_letter"] == "B"
    mc_ok = sum(items[k]["correct"] for k in ("mc1", "mc2"))
    assert res["accuracy"] == pytest.approx((4 + mc_ok) / 7)
    assert json.loads(capsys.readouterr().out)["accuracy"] == res["accuracy"]
    # batching does not change answers
    out1 = tmp_path / "b1.json"
    assert main(["eval", "--model", model_dir, "--questions", questions, "--out", str(out1), "--batch-size", "1",
                 "--max-new-tokens", "8", "--no-progress"]) == 0
    assert [r["prediction"] for r in json.loads(out1.read_text())["items"]] == [r["prediction"] for r in res["items"]]


def test_eval_reports_a_bad_line(model_dir, tmp_path, capsys):
    q = tmp_path / "bad.jsonl"
    q.write_text('{"question": "ok?", "answer": "yes"}\n{"question": "no answer"}\n')
    assert main(["eval", "--model", model_dir, "--questions", str(q), "--no-progress"]) == 2
    assert f"{q}:2" in capsys.readouterr().err


def test_vlmeval_style_model_answers_a_message_with_an_image(model_dir, image_paths, loaded):
    from xgenmm_fast.inference.vlmeval import XGenMMFast
    m = XGenMMFast(model_dir, max_new_tokens=6)
    assert m.INTERLEAVE and not m.use_custom_prompt("MMBench_DEV_EN")
    msg = [{"type": "image", "value": image_paths[0]}, {"type": "text", "value": "What is in the image?"}]
    answer = m.generate(msg, dataset="MMBench_DEV_EN")
    assert isinstance(answer, str) and answer == _greedy(loaded, image_paths[:1], "What is in the image?").strip()
    assert m.generate([image_paths[0], "What is in the image?"]) == answer  # VLMEvalKit's list-of-str form
    assert m.generate_batch([msg, [{"type": "text", "value": "Hi"}]])[0] == answer
    with pytest.raises(ValueError, match="not supported"):
        m.generate([{"type": "video", "value": "x.mp4"}])


def test_ops_lists_every_op_with_its_backend_in_columns(capsys):
    from xgenmm_fast import ops
    assert main(["ops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    report = ops.report()
    rows = lines[:len(report)]
    assert [r.split()[0] for r in rows] == list(report)
    assert [r.split()[1] for r in rows] == list(report.values())
    assert len({r.index(" (available: ") for r in rows}) == 1, rows  # one column, however long the op name
    assert lines[len(report)].startswith("attention kernel settings:")


def test_a_reader_that_goes_away_is_no_error():
    """`xgenmm-fast ops | head -1`: the reader closes the pipe early; the command stops without a message."""
    p = subprocess.Popen([sys.executable, "-m", "xgenmm_fast.cli", "ops"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the command has printed anything (its imports take a while)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert err == "", err
