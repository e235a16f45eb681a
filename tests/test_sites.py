"""Sites from the model's Structure (bench/models/structure.py): the roles of every weighted
layer, the reads in forward order, and agreement with Torch-Pruning's coupling of channels."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.config import ModelConfig
from bench.models import BLOCK_INTERNAL, CHAIN, CLASSIFIER, RESIDUAL, build_model, structure_of
from methods._pruning import build_graph, is_out_pruning


def test_resnet20_roles_streams_and_reads():
    st = structure_of(build_model(ModelConfig(name="resnet20", width=0.25)))
    assert st.role("conv1") == RESIDUAL and st.role("layer1.0.conv1") == BLOCK_INTERNAL
    assert st.role("layer2.0.conv2") == st.role("layer2.0.downsample.0") == RESIDUAL and st.role("fc") == CLASSIFIER
    streams = st.channel_sets((RESIDUAL,))
    assert [c.name for c in streams] == ["conv1", "layer2", "layer3"]
    assert [p.conv for p in streams[0].producers] == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert [p.conv for p in streams[1].producers][:2] == ["layer2.0.downsample.0", "layer2.0.conv2"]
    assert [r.layers for r in streams[0].reads] == [("layer1.0.conv1",), ("layer1.1.conv1",), ("layer1.2.conv1",),
                                                    ("layer2.0.conv1", "layer2.0.downsample.0")]
    reads = st.reads()
    assert reads[0].layers == ("layer1.0.conv1",) and reads[1].layers == ("layer1.0.conv2",)
    assert reads[-1].layers == ("fc",) and reads[-1].classifier and reads[-1].channels == "layer3"
    internal = st.channel_sets((BLOCK_INTERNAL,))
    assert [(c.producer.conv, c.reads[0].layers) for c in internal][:2] == [
        ("layer1.0.conv1", ("layer1.0.conv2",)), ("layer1.1.conv1", ("layer1.1.conv2",))]


def test_vgg_chain_sets_and_what_lies_between():
    st = structure_of(build_model(ModelConfig(name="vgg11", width=0.125)))
    sets = st.channel_sets()
    assert all(c.role == CHAIN and len(c.producers) == 1 and len(c.reads) == 1 for c in sets)
    assert len(sets) == 8 and sets[-1].reads[0].classifier and sets[-1].reads[0].layers == ("head.fc",)
    first = sets[0]
    assert first.producer.act == "features.2" and st.between(first.producer, first.reads[0].layers[0]) == ("features.3",)
    assert [r.stage for r in st.reads()] == [1, 2, 2, 3, 3, 4, 4, 4]


def tp_groups(model: nn.Module) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Torch-Pruning's view: (producer, reader) of every group with one producing conv and one
    reading Conv/Linear, and the producers of every other group (what SNP did before)."""
    names = {m: n for n, m in model.named_modules()}
    graph = build_graph(model, torch.randn(1, 3, 32, 32))
    classifier = model.get_submodule(structure_of(model).classifier)
    simple, other = [], []
    for group in graph.get_all_groups(ignored_layers=[classifier], root_module_types=(nn.Conv2d, nn.Linear)):
        outs, ins = [], []
        for dep, _ in group:
            m = dep.target.module
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bucket = outs if is_out_pruning(graph, dep) else ins
                if all(m is not x for x in bucket):
                    bucket.append(m)
        if len(outs) == 1 and len(ins) == 1 and isinstance(outs[0], nn.Conv2d):
            simple.append((names[outs[0]], names[ins[0]]))
        else:
            other.append(sorted(names[m] for m in outs))
    return sorted(simple), sorted(other)


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "resnet50"])
def test_structure_sets_are_torch_pruning_groups(name):
    from methods.snp import find_slots
    model = build_model(ModelConfig(name=name, width=0.125)).eval()
    slots, skipped = find_slots(model)
    simple, other = tp_groups(model)
    assert sorted((s.name, s.consumer_name) for s in slots) == simple
    assert skipped == other
