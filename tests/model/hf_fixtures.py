"""Tiny random Hugging Face causal LMs of every supported MLP family, with a real BPE tokenizer.

Nothing is downloaded: the tokenizer is trained here with the ``tokenizers`` library on the
built-in chat data, given a ChatML chat template and saved with
``PreTrainedTokenizerFast.save_pretrained``; each model is built from a tiny config (hidden 32,
2 layers), seeded, and saved with ``save_pretrained`` beside a copy of the tokenizer.

Use from a test module::

    from tests.model.hf_fixtures import FAMILIES, build_family, bpe_tokenizer_dir  # noqa: F401
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VOCAB = 320
EOS, BOS, IM_END = 0, 1, 2  # ids of the special tokens (trained first, in SPECIALS order)

_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def _configs() -> dict:
    import transformers as tf

    ids = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS, vocab_size=VOCAB, tie_word_embeddings=False)
    return {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {**_SMALL, **ids}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {**_SMALL, **ids}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {**_SMALL, **ids, "sliding_window": 64}),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, {**_SMALL, **ids, "head_dim": 8}),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {**_SMALL, **ids}),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel,
                 dict(n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=256, **ids)),
        "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM,
                     dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=256, **ids)),
        "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM, {**_SMALL, **ids}),
        "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM,
                    {**_SMALL, **ids, "num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen2_moe": (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM,
                      {**_SMALL, **ids, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                       "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1}),
    }


DENSE_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "gpt_neox", "olmo2")
MOE_FAMILIES = ("mixtral", "qwen2_moe")
FAMILIES = (*DENSE_FAMILIES, *MOE_FAMILIES)
MLP_FAMILY = {"llama": "gated", "qwen2": "gated", "mistral": "gated", "gemma": "gated", "olmo2": "gated",
              "phi3": "fused_gated", "gpt2": "plain", "gpt_neox": "plain", "mixtral": "expert",
              "qwen2_moe": "expert"}


def _corpus() -> list[str]:
    from synclearn.data import chat_pairs
    from synclearn.data.smalltalk import smalltalk

    pairs = chat_pairs(200, seed=0)
    talk = smalltalk(100, seed=0)
    texts = [f"{p['prompt']} {p['response']}" for p in pairs]
    texts += [str(t) for t in talk]
    return texts


def train_bpe_tokenizer(path: Path) -> Path:
    """Train a byte-level BPE tokenizer of VOCAB ids, add the chat template, save it in ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=list(SPECIALS[1:]))
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    assert len(fast) <= VOCAB and fast.convert_tokens_to_ids(list(SPECIALS)) == [EOS, BOS, IM_END]
    return path


def build_family(name: str, path: Path, tokenizer_dir: Path | None, seed: int = 0) -> Path:
    """Save a tiny random model of family ``name`` to ``path`` (with the tokenizer's files)."""
    config_cls, model_cls, kwargs = _configs()[name]
    config = config_cls(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.save_pretrained(path)
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> Path:
    """The BPE tokenizer with its chat template, trained once per test session."""
    return train_bpe_tokenizer(tmp_path_factory.mktemp("bpe-tokenizer"))


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, bpe_tokenizer_dir) -> dict[str, Path]:
    """Every family's tiny model folder (built once per session)."""
    root = tmp_path_factory.mktemp("hf-families")
    return {name: build_family(name, root / name, bpe_tokenizer_dir) for name in FAMILIES}
