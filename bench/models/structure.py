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

Sites: which layers a method may change, and in which role. `Structure.channel_sets()`
lists every set of channels some weighted layers write and others read, in forward order
of creation, each with a role:

- `chain`: written by one layer of a chain network (VGG) and read by the next one (the
  classifier for the last);
- `block_internal`: written by a residual block's body conv and read by the next body conv
  of the same block (BasicBlock conv1 -> conv2; Bottleneck conv1 -> conv2 -> conv3);
- `residual`: a residual stream, written by the stem, every block's last conv and the
  projection shortcuts of one stretch of blocks, and read by each block's first conv (with
  its shortcut) and finally by the classifier. Changing its width means changing every
  producer and every reader at once; removing one of its channels in one layer leaves the
  skip adding the old one.

`Structure.reads()` lists, in forward order, every tensor of a channel set that weighted
layers read (`Read`: the layers, their stage, whether it is the classifier's input): one PCA
per read for methods that rotate inputs. `Structure.role(layer)` answers for one weighted
layer: the role of the channels it writes, or `classifier`. `Structure.between(unit,
consumer)` gives the modules of a chain network between a unit's activation and the layer
reading it (pools, dropout, flatten), for methods that must know what lies in between.
Methods take sites from here, never from module classes or names.
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


CHAIN, BLOCK_INTERNAL, RESIDUAL, CLASSIFIER = "chain", "block_internal", "residual", "classifier"


@dataclass(frozen=True)
class Read:
    """One tensor of a channel set that weighted layers read: `layers` read the same tensor
    (a block's first conv and its projection shortcut read the block's input), in `stage`
    (the last stage for the classifier)."""
    channels: str
    layers: tuple[str, ...]
    stage: int
    classifier: bool = False


@dataclass(frozen=True)
class ChannelSet:
    """Channels written by `producers` (conv and norm; a residual stream has several, the
    shortcut before the block's last conv) and read by `reads` (forward order). `name`: the
    producing conv, or for a residual stream started by a projection the stage's name (its
    first block) or block's name. `stage`: where it is first written (0 for the stem)."""
    name: str
    role: str
    producers: tuple[ConvBN, ...]
    reads: tuple[Read, ...]
    stage: int

    @property
    def producer(self) -> ConvBN:
        """The single producer of a `chain` or `block_internal` set."""
        if len(self.producers) != 1:
            raise ValueError(f"{self.name}: {len(self.producers)} producers (a residual stream)")
        return self.producers[0]


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

    # -- sites ---------------------------------------------------------------------------
    def channel_sets(self, roles: Optional[tuple[str, ...]] = None) -> list[ChannelSet]:
        """Every channel set in forward order of creation (see the module docstring), or only
        those whose role is in `roles`."""
        sets = _walk(self)[0]
        return [c for c in sets if roles is None or c.role in roles]

    def reads(self) -> list[Read]:
        """Every read tensor in forward order (the classifier's input last)."""
        return _walk(self)[1]

    def role(self, layer: str) -> str:
        """`classifier`, or the role of the channels weighted layer `layer` writes."""
        if layer == self.classifier:
            return CLASSIFIER
        for c in self.channel_sets():
            if any(p.conv == layer for p in c.producers):
                return c.role
        raise KeyError(f"{layer} is not a weighted layer of this {self.family} structure")

    def between(self, unit: ConvBN, consumer: str) -> Optional[tuple[str, ...]]:
        """Modules strictly between `unit`'s last module (activation, else norm, else conv) and
        `consumer`, in forward order: from the chain of a chain network; () when `consumer` is
        the next conv of the same block body (they follow one another directly); None where
        the structure does not say (across blocks of a network that publishes no chain)."""
        if self.chain:
            last = unit.act or unit.bn or unit.conv
            return self.chain[self.chain.index(last) + 1:self.chain.index(consumer)]
        for block in self.blocks():
            for a, b in zip(block.body, block.body[1:]):
                if a.conv == unit.conv and b.conv == consumer:
                    return ()
        return None


def _walk(st: Structure) -> tuple[list[ChannelSet], list[Read]]:
    """Channel sets (creation order) and reads (forward order) of `st`: the stem's channels,
    then per block its input read, its internal sets and the set its last conv writes (a new
    one, or the residual stream it adds into)."""
    sets: list[dict] = []
    reads: list[Read] = []

    def new(name: str, role: str, producers: list[ConvBN], stage: int) -> dict:
        sets.append({"name": name, "role": role, "producers": producers, "reads": [], "stage": stage})
        return sets[-1]

    def read(cs: dict, layers: tuple[str, ...], stage: int, classifier: bool = False) -> None:
        r = Read(cs["name"], layers, stage, classifier)
        cs["reads"].append(r)
        reads.append(r)

    blocks = st.blocks()
    current = None
    if st.stem is not None:
        current = new(st.stem.conv, RESIDUAL if blocks and blocks[0].residual else CHAIN, [st.stem], 0)
    for s, stage in enumerate(st.stages):
        for b, block in enumerate(stage.blocks):
            if current is not None:
                read(current, (block.body[0].conv,) + ((block.shortcut.conv,) if block.shortcut else ()), s)
            for unit, nxt in zip(block.body, block.body[1:]):
                read(new(unit.conv, BLOCK_INTERNAL if block.residual else CHAIN, [unit], s), (nxt.conv,), s)
            last = block.body[-1]
            if not block.residual:
                current = new(last.conv, CHAIN, [last], s)
            elif block.shortcut is not None:
                name = (stage.name if b == 0 else block.name) or last.conv
                current = new(name, RESIDUAL, [block.shortcut, last], s)
            elif current is not None:
                current["producers"].append(last)
    if current is not None:
        read(current, (st.classifier,), max(len(st.stages) - 1, 0), classifier=True)
    return [ChannelSet(c["name"], c["role"], tuple(c["producers"]), tuple(c["reads"]), c["stage"])
            for c in sets], reads


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
