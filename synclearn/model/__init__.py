"""The networks: the MCSD language model, the selectable-neuron MLP, the byte tokenizer."""

from synclearn.model.checkpoint import build_model, load_model, save_model
from synclearn.model.config import NAMED_CONFIGS, ConfigError, MCSDConfig, named_config
from synclearn.model.generate import Generation, SamplingParams, generate, stream_generate
from synclearn.model.mcsd import MCSDLM, MCSDState
from synclearn.model.neurons import (
    NeuronLayout,
    NeuronTrace,
    SelectableMLP,
    SparseSpec,
    fit_predictor,
    fit_predictors,
    neuron_context,
)
from synclearn.model.tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "ConfigError",
    "Generation",
    "MCSDConfig",
    "MCSDLM",
    "MCSDState",
    "NAMED_CONFIGS",
    "NeuronLayout",
    "NeuronTrace",
    "SamplingParams",
    "SelectableMLP",
    "SparseSpec",
    "build_model",
    "fit_predictor",
    "fit_predictors",
    "generate",
    "load_model",
    "named_config",
    "neuron_context",
    "save_model",
    "stream_generate",
]
