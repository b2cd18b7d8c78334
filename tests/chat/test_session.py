"""ChatSession: carried state, streaming, versions, logging."""

import torch

from synclearn.chat import ChatSession
from synclearn.memory import InteractionLog
from synclearn.model import load_model


def test_second_turn_reads_only_its_own_tokens_and_matches_a_full_reread(tmp_path):
    model = load_model("mcsd-tiny", seed=2)
    session = ChatSession(model, max_new_tokens=12)
    first = session.send("hello there")
    second = session.send("and again")
    tok = model.tokenizer
    assert second.prompt_tokens == len(tok.chat([{"role": "user", "content": "and again"}]))
    # the same conversation re-read from scratch gives the same second reply
    ids = [tok.BOS] + tok.chat([{"role": "user", "content": "hello there"}])
    gen1 = model.generate(ids, max_new_tokens=12)
    ids += gen1.ids + ([] if gen1.ids and gen1.ids[-1] == tok.END else [tok.END])
    ids += tok.chat([{"role": "user", "content": "and again"}])
    assert gen1.text == first.text
    assert model.generate(ids, max_new_tokens=12).text == second.text


def test_stream_pieces_versions_and_log_rows(tmp_path):
    model = load_model("mcsd-tiny")
    with InteractionLog(tmp_path / "log.db") as log:
        session = ChatSession(model, log, session_id="alice", max_new_tokens=10, temperature=0.8, seed=3)
        pieces = list(session.stream("what is new?"))
        reply = session.last_reply
        assert "".join(pieces) == reply.text
        assert reply.versions == (0, 0) and reply.interaction_id is not None
        assert reply.completion_tokens <= 10 and reply.ttft_s > 0
        row = log.get(reply.interaction_id)
        assert (row["session_id"], row["prompt"], row["response"], row["turn"]) == ("alice", "what is new?", reply.text, 0)
        again = session.send("more")
        assert log.get(again.interaction_id)["turn"] == 1
        assert session.busy == 0


def test_session_over_a_hf_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    session = ChatSession(load_model(tmp_path / "llama"), max_new_tokens=5)
    assert session.send("hi").completion_tokens <= 5
    assert session.send("again").prompt_tokens < 20  # the KV cache carries the history


def test_a_turn_the_log_refuses_leaves_the_session_unchanged(tmp_path):
    from synclearn.memory import LogInputError

    model = load_model("mcsd-tiny")
    with InteractionLog(tmp_path / "log.db", max_text_bytes=64) as log:
        session = ChatSession(model, log, max_new_tokens=4)
        session.send("short")
        state, turn = session.state, session.turn
        try:
            session.send("x" * 100)  # the prompt is over the log's limit
        except LogInputError:
            pass
        else:
            raise AssertionError("the log accepted an oversized prompt")
        assert session.state is state and session.turn == turn and len(session.history) == 2
        assert log.count() == 1


def test_byte_tokenizer_sessions_never_sample_nul_and_history_loads():
    from synclearn.model import SamplingParams
    from synclearn.model.generate import sample_next

    logits = torch.full((1, 264), -10.0)
    logits[0, 0] = 10.0  # NUL is by far the likeliest token
    assert int(sample_next(logits, SamplingParams(ban=(0,)))) != 0
    model = load_model("mcsd-tiny", seed=4)
    session = ChatSession(model, max_new_tokens=8)
    assert session.defaults.ban == (0,)
    first = session.send("hello")
    replayed = ChatSession(model, max_new_tokens=8)
    replayed.load_history([{"role": "user", "content": "hello"}, {"role": "assistant", "content": first.text}])
    assert replayed.turn == 1 and replayed.send("next").prompt_tokens == session.send("next").prompt_tokens
