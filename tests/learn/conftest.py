import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from synclearn.model import MCSDConfig, build_model


def tiny_mcsd(dtype=torch.float32, seed=0):
    cfg = MCSDConfig(d_model=32, n_layers=3, n_channels=4, d_ff=128, predictor_rank=8, chunk_size=16)
    return build_model(cfg, seed=seed, dtype=dtype)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A tiny random Llama saved to a local directory (nothing downloaded)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}
