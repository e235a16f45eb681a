"""What a model publishes about its own graph, so that methods never guess it from class
or module names.

A network is a stem, stages of blocks, and a classifier:

- `ConvBN(conv, bn, act)`: one weighted layer (Conv2d, or Linear in a chain of Linears),
  the norm right after it and the activation applied to its output alone. `act` is None
  where there is none, e.g. a residual block's last conv, whose activation follows the add.
- `Block(name, body, shortcut, residual)`: `body` in forward order, each conv reading the
  previous one's activation. A residual block adds its input (through `shortcut`, a
  projection, where the shape changes; else the identity) to the last conv's output.
- `Stage(name, blocks)`: blocks at one resolution (between max-pools in a chain network).
- `Structure`: the family, stem (None when the first block reads the image), stages,
  the classifier (the final Linear), `chain` (the forward sequence of modules of a chain
  network such as VGG, for methods that walk it; empty for residual networks) and
  `defaults`, per-family method defaults keyed "method.option" (set from the model
  registry by `build_model`).

Every module name is a path for `model.get_submodule`. A block or stage that is not a
single module (a VGG conv group) has `name` None. `chain_structure` derives the structure
of a plain chain of modules (VGG's, or a bare `nn.Sequential`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from bench.config import ConfigError

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class ConvBN:
    conv: str
    bn: Optional[str] = None
    act: Optional[str] = None


@dataclass(frozen=True)
class Block:
    name: Optional[str]
    body: tuple[ConvBN, ...]
    shortcut: Optional[ConvBN] = None
    residual: bool = False


@dataclass(frozen=True)
class Stage:
    name: Optional[str]
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Structure:
    family: str
    stem: Optional[ConvBN]
    stages: tuple[Stage, ...]
    classifier: str
    chain: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict, hash=False)

    def blocks(self) -> list[Block]:
        """Every block, in forward order."""
        return [b for s in self.stages for b in s.blocks]

    def units(self) -> list[ConvBN]:
        """Stem and every block's body, in forward order (shortcuts left out)."""
        return ([self.stem] if self.stem else []) + [u for b in self.blocks() for u in b.body]


def chain_structure(items: list[tuple[str, nn.Module]], family: str) -> Structure:
    """Structure of a plain chain `items` (name, module) in forward order: the last Conv2d
    or Linear is the classifier, every other one a `ConvBN` (with the norm and activation
    that directly follow it), a new stage after each max-pool; no stem, no residuals."""
    weighted = [i for i, (_, m) in enumerate(items) if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise ConfigError(f"{family}: the chain has no Conv2d or Linear layer")
    stages: list[list[ConvBN]] = [[]]
    for i, (name, m) in enumerate(items[:weighted[-1]]):
        if isinstance(m, nn.MaxPool2d) and stages[-1]:
            stages.append([])
        elif i in weighted:
            j, bn, act = i + 1, None, None
            if j < len(items) and isinstance(items[j][1], NORMS):
                bn, j = items[j][0], j + 1
            if j < len(items) and isinstance(items[j][1], ACTIVATIONS):
                act = items[j][0]
            stages[-1].append(ConvBN(name, bn, act))
    stages = [s for s in stages if s]
    return Structure(family=family, stem=None,
                     stages=tuple(Stage(None, (Block(None, tuple(s)),)) for s in stages),
                     classifier=items[weighted[-1]][0], chain=tuple(n for n, _ in items))
