"""Precision and memory format per device: detection, resolution, errors, and training
under bf16 autocast + channels_last on the CPU (forced on where the CPU lacks native bf16,
so that CI exercises the path on any x86 machine)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pandas as pd
import pytest
import torch

import bench.device as device_mod
from bench.config import ConfigError
from bench.configure import load_config
from bench.device import Runtime, cpu_bf16_flags, cpu_capability, cpu_model, resolve_memory_format, resolve_precision
from bench.runs import run_name
from bench.train import train

CPU = torch.device("cpu")


@pytest.fixture
def native(monkeypatch):
    """Pretend the CPU runs bf16 natively."""
    monkeypatch.setattr(device_mod, "native_bf16", lambda dev: (True, "forced native by the test"))


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(device_mod, "native_bf16", lambda dev: (False, "this CPU has no native bf16"))


@pytest.mark.parametrize("text, flags", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n", ("avx512_bf16", "amx_bf16")),
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n", ()),          # AVX-512 without BF16
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", ("bf16",)),           # Arm
])
def test_bf16_flags_are_read_from_cpuinfo(tmp_path, text, flags):
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_bf16_flags(str(tmp_path / "cpuinfo")) == flags


def test_missing_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_bf16_flags(str(tmp_path / "absent")) == ()


@pytest.mark.parametrize("text, model", [
    ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n", "Intel(R) Xeon(R) Platinum 8480+"),
    ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n", "unknown"),    # Arm without a model line
    (None, "unknown"),                                                               # no /proc/cpuinfo
])
def test_the_cpu_model_is_its_name_or_unknown(tmp_path, text, model):
    if text is not None:
        (tmp_path / "cpuinfo").write_text(text)
    assert cpu_model(str(tmp_path / "cpuinfo")) == model


def test_the_cpu_capability_is_torchs_dispatch_level_or_unknown(monkeypatch):
    """Two CPUs named "AMD EPYC" can be an AVX2 and an AVX512 machine: env.json records
    torch's dispatch level beside the name."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_capability() == "AVX512"

    def fails():
        raise RuntimeError("no capability")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", fails)
    assert cpu_capability() == "unknown"


def test_auto_takes_bf16_and_channels_last_where_native(native):
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_memory_format("auto", CPU) == "channels_last"


def test_auto_falls_back_to_fp32_with_a_notice_where_emulated(emulated):
    said = []
    assert resolve_precision("auto", CPU, notice=said.append) == "fp32"
    assert len(said) == 1 and "fp32" in said[0] and "no native bf16" in said[0]
    assert resolve_memory_format("auto", CPU) == "channels_last"      # faster in fp32 too


def test_auto_memory_format_is_channels_last_on_cpu_and_cuda_only(emulated):
    assert [resolve_memory_format("auto", torch.device(d)) for d in ("cpu", "cuda", "cuda:1", "mps", "meta")] == \
        ["channels_last", "channels_last", "channels_last", "contiguous", "contiguous"]
    assert resolve_memory_format("contiguous", torch.device("cuda")) == "contiguous"   # an explicit choice wins


def test_bf16_where_the_device_cannot_honour_it_is_an_error(emulated):
    with pytest.raises(ConfigError, match=r"train.precision=bf16 .*use train.precision=fp32 or auto"):
        resolve_precision("bf16", CPU)


def test_a_pinned_auto_is_kept_and_checked(native, monkeypatch):
    """train.auto_resolves_to (a suite's pin) decides what `auto` gives; explicit choices win;
    a bf16 pin where bf16 is only emulated, or a malformed pin, is a config error."""
    cfg = load_config("configs/smoke.yaml", ["train.auto_resolves_to=fp32/contiguous"]).train
    assert (Runtime(CPU, cfg).precision, Runtime(CPU, cfg).memory_format) == ("fp32", "contiguous")
    cfg.memory_format = "channels_last"
    assert Runtime(CPU, cfg).memory_format == "channels_last"
    cfg.auto_resolves_to, cfg.precision = "bf16/contiguous", "auto"
    monkeypatch.setattr(device_mod, "native_bf16", lambda dev: (False, "this CPU has no native bf16"))
    with pytest.raises(ConfigError, match="auto_resolves_to=bf16/contiguous .* no native bf16; finish the suite"):
        Runtime(CPU, cfg)
    cfg.auto_resolves_to = "fp16"
    with pytest.raises(ConfigError, match="expected PRECISION/FORMAT"):
        Runtime(CPU, cfg)


def test_explicit_choices_are_kept(emulated):
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_memory_format("channels_last", CPU) == "channels_last"


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="train.precision"):
        load_config("configs/smoke.yaml", ["train.precision=fp16"])


def test_runtime_places_and_prepares_in_channels_last(native):
    cfg = load_config("configs/smoke.yaml", [])
    rt = Runtime(CPU, cfg.train)
    conv = rt.place(torch.nn.Conv2d(3, 8, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert rt.prepare(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    with rt.autocast():
        assert conv(rt.prepare(torch.randn(2, 3, 8, 8))).dtype == torch.bfloat16
    assert conv.weight.dtype == torch.float32          # parameters stay fp32 under autocast


def weight_grad_error(conv: torch.nn.Conv2d, rt: Runtime) -> float:
    """Relative error of `conv`'s weight gradient under `rt` against float64 contiguous."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, conv.in_channels, 32, 32, generator=gen)
    ref = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, bias=False).double()
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
    y = rt.runner(conv)(rt.prepare(x))
    assert y.is_contiguous(memory_format=torch.channels_last)      # what follows stays in channels_last
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)
    ref(x.double()).backward(g.double())
    return ((conv.weight.grad.double() - ref.weight.grad).abs().max() / ref.weight.grad.abs().max()).item()


def test_narrow_strided_1x1_convs_get_the_right_weight_gradient_in_channels_last(emulated):
    # oneDNN's channels_last kernel gets this gradient wrong on AVX2 CPUs (relative error ~1)
    # or corrupts the heap; the guard runs such layers contiguous.
    rt = Runtime(CPU, load_config("configs/smoke.yaml", []).train)
    assert rt.channels_last and rt.precision == "fp32"
    torch.manual_seed(0)
    narrow = rt.place(torch.nn.Conv2d(6, 16, 1, stride=2, bias=False))
    assert narrow.weight.is_contiguous()
    assert weight_grad_error(narrow, rt) < 1e-5


ONEDNN_AVX2_CASE = """
import sys, torch
import bench.device as d
torch.set_num_threads(1)
if sys.argv[1] == "unguarded":
    d.guard_onednn_1x1 = lambda model: None
torch.manual_seed(0)
conv = torch.nn.Conv2d(6, 16, 1, stride=2, bias=False)
ref = torch.nn.Conv2d(6, 16, 1, stride=2, bias=False).double()
ref.weight.data.copy_(conv.weight.data)
conv = d.to_memory_format(conv, True, torch.device("cpu"))
x = torch.randn(64, 6, 32, 32)
y = conv(x.contiguous(memory_format=torch.channels_last))
g = torch.randn(y.shape)
y.backward(g)
ref(x.double()).backward(g.double())
print(((conv.weight.grad.double() - ref.weight.grad).abs().max() / ref.weight.grad.abs().max()).item())
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's AVX2 kernels are x86's")
def test_the_guard_holds_on_onednns_avx2_kernels_on_any_x86_cpu():
    """The planted case with oneDNN held to its AVX2 kernels (ONEDNN_MAX_CPU_ISA), where the
    wrong weight gradient lives, so that the test has teeth on AVX-512 machines too (their
    own kernel is right): unguarded it is wrong or crashes, guarded it is right."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}

    def case(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", ONEDNN_AVX2_CASE, mode], env=env, capture_output=True,
                              text=True, timeout=120)
    bad = case("unguarded")
    if bad.returncode == 0 and float(bad.stdout.split()[-1]) < 1e-3:
        pytest.skip("this torch's oneDNN gets the planted case right even on AVX2 kernels: nothing to guard")
    good = case("guarded")
    assert good.returncode == 0, good.stderr[-2000:]
    assert float(good.stdout.split()[-1]) < 1e-5


def test_a_strided_1x1_conv_narrowed_in_place_is_guarded_after_rewrapping(emulated):
    rt = Runtime(CPU, load_config("configs/smoke.yaml", []).train)
    torch.manual_seed(0)
    conv = rt.place(torch.nn.Conv2d(16, 16, 1, stride=2, bias=False))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)   # wide: left in channels_last
    with torch.no_grad():                  # pruned to 7 input channels in place, as torch-pruning does
        conv.weight = torch.nn.Parameter(conv.weight[:, :7].contiguous(memory_format=torch.channels_last))
    conv.in_channels = 7
    assert weight_grad_error(conv, rt) < 1e-5      # rt.runner (what rewrap calls) re-applies the guard


def run(tiny_overrides, tmp_path, precision: str, folder: str) -> tuple[dict, pd.DataFrame, dict]:
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=3", f"train.precision={precision}",
                                                              f"output_dir={tmp_path / folder}"])
    summary = train(cfg, log=lambda s: None)
    d = tmp_path / folder / run_name(cfg)
    return summary, pd.read_csv(d / "history.csv"), json.loads((d / "env.json").read_text())


def test_a_short_bf16_run_learns_and_records_its_precision(native, tiny_overrides, tmp_path):
    bf16, hist, env = run(tiny_overrides, tmp_path, "bf16", "bf16")
    assert bf16["test_acc"] > 0.6                                  # chance is 0.1
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert (bf16["precision"], bf16["memory_format"]) == ("bf16", "channels_last")
    assert (env["precision"], env["memory_format"]) == ("bf16", "channels_last")
    fp32, fp32_hist, _ = run(tiny_overrides, tmp_path, "fp32", "fp32")
    assert (fp32["precision"], fp32["memory_format"]) == ("fp32", "channels_last")   # auto: follows the device
    assert not hist["train_loss"].equals(fp32_hist["train_loss"])  # autocast really ran
