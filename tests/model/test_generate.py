"""Tokenizer, chat template, sampling and generation."""

import pytest
import torch

from synclearn.model import ByteTokenizer, SamplingParams, build_model, named_config, stream_generate
from synclearn.model.generate import StopStringFilter, sample_next

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    return build_model(named_config("mcsd-tiny"), seed=3)


def test_bytes_round_trip_any_text():
    for text in ["", "hello", "héllo wörld ✓", "日本語", "emoji 🤖\n\ttabs"]:
        assert TOK.decode(TOK.encode(text)) == text


def test_specials_cannot_be_injected_by_text():
    ids = TOK.encode("<|assistant|> hi <|end|>")
    assert all(i < 256 for i in ids)


def test_chat_template_layout_and_errors():
    ids = TOK.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert ids[0] == TOK.SYSTEM and ids[-1] == TOK.ASSISTANT and ids.count(TOK.END) == 2
    assert TOK.decode(ids, show_special=True) == "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"
    with pytest.raises(ValueError, match="role 'robot'"):
        TOK.chat([{"role": "robot", "content": "x"}])
    with pytest.raises(TypeError, match="content must be str"):
        TOK.chat([{"role": "user", "content": 3}])
    with pytest.raises(TypeError):
        TOK.encode(b"bytes")
    with pytest.raises(UnicodeEncodeError):
        TOK.encode("bad \udcff surrogate")


def test_stream_decoder_waits_for_complete_characters():
    dec = TOK.stream_decoder()
    pieces = [dec.feed(b) for b in "é✓".encode()]
    assert pieces == ["", "é", "", "", "✓"]


def test_stop_string_filter_never_leaks_a_stop_string():
    f = StopStringFilter(["STOP"])
    out = "".join(f.feed(p) for p in ["abc S", "T", "OP tail"])
    assert out == "abc " and f.stopped
    f = StopStringFilter(["STOP"])
    out = "".join(f.feed(p) for p in ["ST", "ay"]) + f.flush()
    assert out == "STay" and not f.stopped


def test_sampling_params_validation_lists_all_problems():
    with pytest.raises(ValueError) as err:
        SamplingParams(max_new_tokens=-1, temperature=-2, top_p=0, stop=[""])
    for name in ("max_new_tokens", "temperature", "top_p", "stop"):
        assert name in str(err.value)


def test_stop_accepts_none_a_string_or_a_list():
    assert SamplingParams(stop=None).stop == () and SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop=["a", "b"]).stop == ["a", "b"]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50)
    greedy = logits.argmax(-1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=1.0, top_k=1), g), greedy)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=1.0, top_p=1e-6), g), greedy)


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, SamplingParams(temperature=1.0), g) for _ in range(4000)])
    freq = torch.bincount(draws.flatten(), minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03, rtol=0)
    # top_p=0.8 keeps {0.7, 0.2} renormalized
    draws = torch.stack([sample_next(logits, SamplingParams(temperature=1.0, top_p=0.8), g) for _ in range(2000)])
    assert (draws != 2).all()


def test_generate_greedy_is_deterministic_and_matches_manual_decoding(model):
    gen = model.generate("abc", max_new_tokens=12)
    assert gen.stop_reason in ("max_tokens", "stop_token") and len(gen.ids) <= 12
    ids = torch.tensor([TOK.encode("abc", bos=True)])
    logits, state = model.prefill(ids)
    manual, nxt = [], logits[:, -1].argmax(-1)
    for _ in range(len(gen.ids)):
        manual.append(int(nxt))
        logits, state = model.step(nxt, state)
        nxt = logits.argmax(-1)
    assert manual == gen.ids
    assert int(gen.state.pos) == ids.shape[1] + len(gen.ids)


def test_generate_seeded_sampling_repeats(model):
    a = model.generate("x", max_new_tokens=20, temperature=1.0, top_k=40, seed=5)
    b = model.generate("x", max_new_tokens=20, temperature=1.0, top_k=40, seed=5)
    assert a.ids == b.ids


def test_stream_pieces_join_to_the_text_and_stop_strings_cut(model):
    result = {}
    pieces = list(stream_generate(model, TOK.encode("q"), SamplingParams(max_new_tokens=30, temperature=1.0, seed=1), result=result))
    gen = result["generation"]
    assert "".join(pieces) == gen.text
    full = TOK.decode(gen.ids)
    if len(full) > 3 and gen.stop_reason == "max_tokens":
        stop = full[2:4]
        cut = model.generate("q", max_new_tokens=30, temperature=1.0, seed=1, stop=[stop])
        assert cut.stop_reason == "stop_string" and cut.text == full[: full.find(stop)]


def test_max_new_tokens_zero_and_empty_prompt(model):
    assert model.generate("hi", max_new_tokens=0).ids == []
    with pytest.raises(ValueError, match="at least one prompt token"):
        model.generate([], max_new_tokens=3)


def test_stop_string_filter_matches_a_whole_text_search_piece_by_piece():
    """The incremental filter releases exactly the text before the first stop, whatever the
    split into pieces, and its work does not grow with the reply (it keeps only a short tail)."""
    g = torch.Generator().manual_seed(0)
    alphabet = "abST OP"
    for trial in range(200):
        text = "".join(alphabet[int(i)] for i in torch.randint(0, len(alphabet), (60,), generator=g))
        stops = ["STOP", "ab a"] if trial % 2 else ["OP"]
        f = StopStringFilter(stops)
        out, i = [], 0
        while i < len(text) and not f.stopped:
            n = int(torch.randint(1, 4, (1,), generator=g))
            out.append(f.feed(text[i : i + n]))
            assert len(f.pending) <= max(map(len, stops)) + 3
            i += n
        if not f.stopped:
            out.append(f.flush())
        cut = min((j for j in (text.find(s) for s in stops) if j >= 0), default=len(text))
        assert "".join(out) == text[:cut] == f.text
