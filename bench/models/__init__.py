"""Models: the registry and shared helpers (`base.py`), the structure a model publishes
(`structure.py`), and one module per family (`vgg.py`, `resnet.py`).

Every module in this package is imported here, so a new family is one new file whose
builders, registered with `@register_model(name, note, defaults)`, return the model and
its `Structure`: nothing else to edit.
"""
from bench.registry import import_plugins
from bench.models.base import (DEFAULT_NUM_CLASSES, MODEL_DEFAULTS, MODEL_NOTES, MODELS, LeakyReLULayer, act_layer,
                               build_model, check_model_name, count_params, model_defaults, register_model, scaled,
                               structure_of)
from bench.models.structure import (BLOCK_INTERNAL, CHAIN, CLASSIFIER, RESIDUAL, Block, ChannelSet, ConvBN, Read, Stage,
                                    Structure, chain_structure)

import_plugins(__name__, __path__)

__all__ = ["BLOCK_INTERNAL", "CHAIN", "CLASSIFIER", "RESIDUAL", "ChannelSet", "Read", "DEFAULT_NUM_CLASSES", "MODEL_DEFAULTS", "MODEL_NOTES", "MODELS", "Block", "ConvBN", "LeakyReLULayer",
           "Stage", "Structure", "act_layer", "build_model", "chain_structure", "check_model_name", "count_params",
           "model_defaults", "register_model", "scaled", "structure_of"]
