"""Generated chat data: facts, small talk and the pretraining mix."""

import json
import random

import pytest

from synclearn.data.chat_mix import chat_mix, fact_turn
from synclearn.data.facts import ATTRIBUTES, QUESTION_FORMS, Fact, generate_facts, load_facts, save_facts
from synclearn.data.smalltalk import smalltalk
from synclearn.model.tokenizer import ByteTokenizer


def test_generated_facts_are_distinct_and_valid():
    facts = generate_facts(300, seed=3)
    assert len({(f.name, f.attribute) for f in facts}) == 300
    assert all(f.value in ATTRIBUTES[f.attribute] for f in facts)
    assert generate_facts(300, seed=3) == facts and generate_facts(300, seed=4) != facts


def test_fact_sentences_and_candidates():
    fact = Fact("Kado", "pet", "a parrot")
    assert fact.question() == "What is Kado's pet?"
    assert fact.answer() == "It's a parrot." and fact.statement() == "Kado's pet is a parrot."
    assert fact.answer("a cat") == "It's a cat."
    assert {fact.question(k) for k in range(len(QUESTION_FORMS))} == {
        q.format(name="Kado", attribute="pet") for q in QUESTION_FORMS}
    assert fact.candidates() == ATTRIBUTES["pet"]
    assert Fact("Kado", "pet", "a yak").candidates()[-1] == "a yak"  # own value always a candidate
    assert Fact("Kado", "boat", "the Swift").candidates() == ("the Swift",)


def test_facts_jsonl_roundtrip_and_errors(tmp_path):
    facts = generate_facts(5, seed=0)
    path = tmp_path / "facts.jsonl"
    save_facts(facts, path)
    assert load_facts(path) == facts
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"name": "A", "attribute": "pet"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"line 1.*line 2"):
        load_facts(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no facts"):
        load_facts(tmp_path / "empty.jsonl")


def test_smalltalk_is_deterministic_and_checkable():
    turns = smalltalk(200, seed=1)
    assert turns == smalltalk(200, seed=1)
    assert all(t["prompt"] and t["response"] for t in turns)
    plus = [t for t in turns if " plus " in t["prompt"]]
    assert plus and all(str(eval(t["prompt"][8:-1].replace("plus", "+"))) in t["response"] for t in plus)


def test_chat_mix_uses_the_chat_template():
    tok = ByteTokenizer()
    ids = chat_mix(5000, seed=0)
    assert len(ids) >= 5000 and ids.dtype.is_floating_point is False
    assert {tok.USER, tok.ASSISTANT, tok.END, tok.BOS} <= set(ids.tolist())
    assert chat_mix(5000, seed=0).equal(ids) and not chat_mix(5000, seed=1)[:5000].equal(ids[:5000])
    turn = fact_turn(random.Random(0))
    assert turn["response"].endswith(".") and "'s " in turn["prompt"]
    with pytest.raises(ValueError, match="fact_share"):
        chat_mix(10, fact_share=0.9, smalltalk_share=0.2)
