"""Text-level generation with the tokenizer: stop strings, streaming, chat prompts and history."""
from __future__ import annotations

import pytest

from xgenmm_fast.data.chat import build_prompt
from xgenmm_fast.inference.generate import GenerationConfig, Generator


@pytest.fixture(scope="module")
def gen(loaded):
    return Generator(*loaded)


@pytest.fixture(scope="module")
def requests_(gen, image_paths):
    return [gen.chat_request(image_paths[:1], "What is in the image?")[0],
            gen.chat_request([], "Hello! How can I help you today?")[0],
            gen.chat_request(image_paths, "Describe the picture in detail.")[0]]


def _collect(gen, requests, config):
    pieces: dict[int, list[str]] = {}
    outs = gen.generate(requests, config, on_text=lambda i, p: pieces.setdefault(i, []).append(p))
    return outs, pieces


def test_chat_request_follows_the_template(gen, image_paths):
    request, sent = gen.chat_request(image_paths[:2], "Compare them.", history=[])
    assert sent == "<image>\n<image>\nCompare them."
    turns = [{"from": "human", "value": sent}]
    assert list(request.input_ids) == list(gen.tokenizer(build_prompt(turns)).input_ids)
    assert request.input_ids[0] == gen.tokenizer.bos_token_id and len(request.images) == 2
    # a later turn adding a third image tags only that one
    _, sent2 = gen.chat_request(image_paths, "And this?", history=[(sent, "ok")])
    assert sent2 == "<image>\nAnd this?"
    with pytest.raises(ValueError, match="2 <image> tags but 1 images"):
        gen.chat_request(image_paths[:1], "<image> <image>")


def test_streaming_pieces_concatenate_to_the_text(gen, requests_):
    cfg = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=1.3, seed=4,
                           stop_token_ids=gen.default_stop_token_ids())
    outs, pieces = _collect(gen, requests_, cfg)
    for i, o in enumerate(outs):
        assert "".join(pieces.get(i, [])) == o.text
        ids = [t for t in o.token_ids if t not in gen.default_stop_token_ids()]
        assert o.text == gen.tokenizer.decode(ids, skip_special_tokens=True)
    # the iterator form yields the same pieces, and every sequence's last event carries its finish reason
    stream = gen.stream(requests_, cfg)
    events = list(stream)
    for i, o in enumerate(stream.outputs):
        mine = [e for e in events if e.index == i]
        assert "".join(e.text for e in mine) == o.text == outs[i].text
        assert [e.token_id for e in mine] == o.token_ids
        assert mine[-1].finish_reason == o.finish_reason and all(e.finish_reason is None for e in mine[:-1])


def test_stop_strings_cut_the_text_and_end_generation(gen, requests_):
    base = gen.generate(requests_, GenerationConfig(max_new_tokens=20))
    text = base[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    k = text.find(stop)
    assert len(stop) == 3 and k > 0
    outs, pieces = _collect(gen, requests_, GenerationConfig(max_new_tokens=20, stop_strings=(stop,)))
    o = outs[0]
    assert o.finish_reason == "stop_string" and o.text == text[:k]
    assert "".join(pieces[0]) == o.text  # nothing of the stop string (or past it) was streamed
    assert len(o.token_ids) < 20 and o.token_ids == base[0].token_ids[:len(o.token_ids)]
    for b, o2 in zip(base[1:], outs[1:]):  # other rows: unchanged unless they also hit the string
        if stop not in b.text:
            assert o2.token_ids == b.token_ids and o2.text == b.text


def test_stop_ids_from_the_tokenizer(gen, requests_):
    end = gen.tokenizer.convert_tokens_to_ids("<|end|>")
    assert end in gen.default_stop_token_ids()
    base = gen.generate(requests_, GenerationConfig(max_new_tokens=12))
    stop = base[2].token_ids[4]
    outs = gen.generate(requests_, GenerationConfig(max_new_tokens=12, stop_token_ids=(stop,)))
    assert outs[2].token_ids[-1] == stop and outs[2].finish_reason == "stop_token"
    assert outs[2].text == gen.tokenizer.decode(outs[2].token_ids[:-1], skip_special_tokens=True)


def test_model_chat_keeps_history(loaded, image_paths):
    model, tok = loaded
    streamed = []
    a1, hist = model.chat(image_paths[:1], "What is in the image?", tokenizer=tok, max_new_tokens=8,
                          on_text=streamed.append)
    assert hist == [("<image>\nWhat is in the image?", a1)] and "".join(streamed).strip() == a1
    a2, hist2 = model.chat(image_paths[:2], "And now?", history=hist, tokenizer=tok, max_new_tokens=8)
    assert hist2[:1] == hist and hist2[1] == ("<image>\nAnd now?", a2)
    # same as the generator on the same prompt
    gen = Generator(model, tok)
    request, _ = gen.chat_request(image_paths[:2], "And now?", history=hist)
    assert gen.generate([request], GenerationConfig(max_new_tokens=8, stop_token_ids=gen.default_stop_token_ids())
                        )[0].text.strip() == a2
