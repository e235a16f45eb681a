"""`python -m bench retime RESULTS_DIR`: every row's deployed architecture timed in one sitting.

A run times its own model when it finishes (summary.json), on whatever machine ran it
and under whatever else that machine was doing; two rows of one suite may have been timed
on two machines, hours apart. Speed-ups between such figures mix the models with the
machines. Here every row's deployed architecture is rebuilt without its weights
(bench.architecture) and all of them are timed in one process, on one machine, in one
sitting, interleaved: each round times every architecture once, in a rotated order, so a
slow minute of the machine touches every architecture alike rather than one. The first
round(s) are warm-up and dropped; every timed block is bracketed by a device
synchronisation (CUDA runs asynchronously: without one, a clock reads launch time); the
load average is recorded before, after and at every round; the CPU model, device, threads
and versions are recorded with it. See docs/timing.md.

A row is (model, label, target); its seeds may end with slightly different architectures
(PCN, SNP and PCNS choose widths from data). The row is represented by the seed whose
deployed architecture has the median MACs (the lower median for an even count; ties by
seed), so the timed model is one the row actually produced. Rows (or seeds) with identical
architectures and settings share one timed architecture.

Three things are timed per architecture, all of a model's architectures in one precision
and memory format: the one most of the model's runs trained in (ties: the first by name), so
that no speed-up divides a channels_last time by a contiguous one or bf16 by fp32; the
report's table names it. Batch-1 latency (eval-mode forward of one image, the mean of
`latency_reps` calls per sample), eval-batch inference (one forward of the runs'
`train.eval_batch_size` images) and one training step (forward, backward and optimizer
step on `train.batch_size` images, the runs' optimizer settings). Inputs are random:
the time does not depend on their values.

A summary is data from elsewhere: every setting is checked before anything is built (batch
sizes and image side within `MAX_BATCH` and `MAX_IMAGE_SIZE`, the optimizer settings as a
config file's are, a known precision and memory format), the architecture record too
(bench.architecture.check_record), and the model is first run on the meta device, where
nothing is allocated, so that its activations for the batches timed stay within
`MAX_ACTIVATIONS`. A row that fails any of this, or whose model cannot be built or run,
is "not timed" with the reason on one line; the rest are timed.

`RESULTS_DIR/retime.json` (plain data) holds every sample; `speed_lines` renders the
report's table from it: median and IQR per architecture, and speed-ups that divide the
control's median by the row's median, both from this one sitting.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from bench.architecture import MAX_IMAGE_SIZE, deployed_record, rebuild
from bench.config import ConfigError, TrainConfig, build_dataclass
from bench.device import to_memory_format
from bench.records import (NUMBER, ListOf, Record, check, read_json_record, read_suite, read_summary,
                           refuse, show)

FORMAT = 1
MEASURES = ("latency_ms", "infer_batch_ms", "train_step_ms")
MEASURE_TITLES = {"latency_ms": "batch-1 latency", "infer_batch_ms": "eval-batch inference",
                  "train_step_ms": "training step"}
ROUNDS = 7
WARMUP_ROUNDS = 1
LATENCY_REPS = 20
# A sitting whose 1-minute load average, less the threads this process times with, exceeds
# this anywhere is flagged: something else was running.
BUSY_LOAD = 0.5
# Bounds on the settings read from a summary: far above any the harness trains with, far
# below what would exhaust a machine's memory. MAX_ACTIVATIONS bounds the numbers one
# training step keeps (every layer's output for the training batch) and the largest layer
# output of the eval batch, as a dry run on the meta device counts them.
MAX_BATCH = 8192
MAX_ACTIVATIONS = 2**33       # 32 GiB of float32: room for ImageNet-sized batches, not for a crafted width
PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("contiguous", "channels_last")
# The optimizer settings a training step is timed with (TrainConfig fields).
TRAIN_KEYS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "label_smoothing")


# --------------------------------------------------------------------------- rows
def _target_key(t: Any) -> Optional[float]:
    return None if t is None or (isinstance(t, float) and np.isnan(t)) else float(t)


def locate(path: str | Path) -> Path:
    """The folder `retime` times and writes retime.json into, found as `report` finds the
    folder it reports on (bench.report.locate): a suite's results folder, its runs/ folder
    (its suite's folder), or a folder of run folders. Otherwise a one-line ConfigError
    saying what to give."""
    from bench.report import locate as report_locate
    try:
        return report_locate(path)
    except ConfigError as e:
        text = str(e).removeprefix("report: ")
        fix = "give a suite's results folder (e.g. results/cifar10-quick) or the runs/ folder inside it"
        raise ConfigError(f"retime: {text}" + ("" if fix in text else f"; {fix}")) from None


def finished_summaries(results_dir: Path) -> list[dict]:
    """The summaries of the finished runs under `results_dir/runs` (a folder of run
    folders: `results_dir/*`), each checked (bench.records.read_summary: a damaged one is
    a one-line error naming it) and naming its row (its model, seed, and label or method)."""
    out = []
    folder = Path(results_dir)
    pattern = "runs/*/summary.json" if any(folder.glob("runs/*/summary.json")) else "*/summary.json"
    for path in sorted(folder.glob(pattern)):
        s = read_summary(path, identity=True)
        if s.get("status", "finished") == "finished":
            out.append(s)
    return out


def _setting(s: dict) -> dict[str, Any]:
    """What a run's architecture is timed with, from its summary and config, checked: the
    optimizer settings and batch sizes as a config file's are (bench.config: types, known
    names, ranges), batch sizes up to MAX_BATCH, the image side up to MAX_IMAGE_SIZE, a
    known precision and memory format. A ConfigError naming the run and the value otherwise."""
    run = s.get("run_id")
    cfg = s.get("config") or {}
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    try:
        tcfg = build_dataclass(TrainConfig, {k: train[k] for k in ("batch_size", "eval_batch_size", *TRAIN_KEYS)
                                             if k in train}, "config.train.")
    except ConfigError as e:
        raise ConfigError(f"{run}: {e}") from None
    for key, n in (("batch_size", tcfg.batch_size), ("eval_batch_size", tcfg.eval_batch_size)):
        if n > MAX_BATCH:
            raise ConfigError(f"{run}: config.train.{key} is {n}, over the {MAX_BATCH} this command times")
    size = data.get("image_size", 32)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"{run}: config.data.image_size is {show(size)}, not an image side of 1 to "
                          f"{MAX_IMAGE_SIZE} pixels")
    precision, memory_format = s.get("precision") or "fp32", s.get("memory_format") or "contiguous"
    if precision not in PRECISIONS or memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"{run}: precision {show(precision)} and memory format {show(memory_format)}: this "
                          f"command times {' or '.join(PRECISIONS)}, {' or '.join(MEMORY_FORMATS)}")
    return {"precision": precision, "memory_format": memory_format,
            "eval_batch": tcfg.eval_batch_size, "train_batch": tcfg.batch_size, "image_size": size,
            "train": {k: getattr(tcfg, k) for k in TRAIN_KEYS if k in train}}


def _reason(e: BaseException) -> str:
    """An exception as a not-timed reason: its first line (with its type where it is not
    one of this harness's own one-line errors)."""
    text = (str(e).splitlines() or [""])[0].strip()
    return text if isinstance(e, ConfigError) else f"{type(e).__name__}: {text}"[:300]


def check_footprint(rec: dict, setting: dict, run: Any = None) -> None:
    """Refuse (ConfigError) an architecture whose activations at `setting`'s batch sizes
    would exceed MAX_ACTIVATIONS, or that does not run on its images: the model is
    rebuilt and run on the meta device, where shapes are computed and nothing allocated."""
    size = setting["image_size"]
    with torch.device("meta"):
        model = rebuild(rec)
    outputs: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel())
                                     if isinstance(out, torch.Tensor) else None)
             for m in model.modules() if next(m.children(), None) is None]
    x = torch.zeros(1, 3, size, size, device="meta")
    try:
        with torch.no_grad():
            model.eval()(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"{run}: the model does not run on {size}x{size} images "
                          f"({' '.join(str(e).split())[:160]})") from None
    finally:
        for h in hooks:
            h.remove()
    step = (x.numel() + sum(outputs)) * setting["train_batch"]
    infer = max([x.numel(), *outputs]) * setting["eval_batch"]
    if max(step, infer) > MAX_ACTIVATIONS:
        raise ConfigError(f"{run}: timing it would hold {max(step, infer):,} activations (training batch "
                          f"{setting['train_batch']}, eval batch {setting['eval_batch']}, {size}x{size} images), "
                          f"over the {MAX_ACTIVATIONS:,} this command allows")


def timing_settings(summaries: list[dict]) -> dict[str, dict[str, str]]:
    """Per model, the precision and memory format every architecture is timed in: the pair
    most of the model's runs trained in (ties: the first by name)."""
    counts: dict[str, Counter] = {}
    for s in summaries:
        st = _setting(s)
        counts.setdefault(s["model"], Counter())[(st["precision"], st["memory_format"])] += 1
    return {m: dict(zip(("precision", "memory_format"), min(c, key=lambda p: (-c[p], p))))
            for m, c in counts.items()}


def plan(summaries: list[dict], controls: Optional[dict[str, str]] = None
         ) -> tuple[list[dict], dict[str, dict], list[dict]]:
    """(rows, architectures to time by id, rows that cannot be rebuilt with the reason). A
    row's control is the one its runs recorded, else the suite plan's (`controls`, from
    suite.json) for its label, else dense, as the report assigns them. Every architecture
    of a model is timed in the model's one precision and memory format (timing_settings)."""
    controls = controls or {}
    from bench.metrics import count_macs
    settings: dict[int, dict] = {}
    refused: dict[int, str] = {}
    for s in summaries:
        try:
            settings[id(s)] = _setting(s)
        except ConfigError as e:
            refused[id(s)] = _reason(e)
    one_setting = timing_settings([s for s in summaries if id(s) in settings])
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        groups.setdefault((s["model"], s.get("label") or s["method"], _target_key(s.get("target"))), []).append(s)
    rows, archs, skipped, by_key = [], {}, [], {}
    for (model, label, target), runs in groups.items():
        seeds = []
        try:
            for s in runs:
                if id(s) in refused:
                    raise ConfigError(refused[id(s)])
                st = settings[id(s)]
                rec = deployed_record(s)
                check_footprint(rec, {**st, **one_setting[model]}, s["run_id"])
                m = rebuild(rec)
                macs, _ = count_macs(m, torch.zeros(1, 3, st["image_size"], st["image_size"]))
                seeds.append({"run_id": s["run_id"], "seed": s.get("seed"), "macs": int(macs),
                              "params": sum(p.numel() for p in m.parameters()), "record": rec, "summary": s})
        except Exception as e:        # a crafted record may make torch raise anything: the row is not timed
            skipped.append({"model": model, "label": label, "target": target, "reason": _reason(e)})
            continue
        seeds.sort(key=lambda r: (r["macs"], r["seed"] if r["seed"] is not None else 0))
        rep = seeds[(len(seeds) - 1) // 2]
        setting = {**settings[id(rep["summary"])], **one_setting[model]}
        key = json.dumps([rep["record"], setting], sort_keys=True)
        if key not in by_key:
            by_key[key] = f"a{len(by_key) + 1}"
            archs[by_key[key]] = {"id": by_key[key], "model": model, "record": rep["record"], "setting": setting,
                                  "macs": rep["macs"], "params": rep["params"]}
        cfg = rep["summary"].get("config") or {}
        control = cfg.get("control") or controls.get(label) or "dense"
        rows.append({"model": model, "label": label, "target": target, "control": control,
                     "arch": by_key[key], "representative": rep["run_id"], "representative_seed": rep["seed"],
                     "seeds": [{"run_id": r["run_id"], "seed": r["seed"], "macs": r["macs"], "params": r["params"]}
                               for r in seeds]})
    return rows, archs, skipped


# --------------------------------------------------------------------------- one sitting
class Timed:
    """One architecture ready to time: the model on the device and its three closures."""

    def __init__(self, arch: dict, device: torch.device, gen: torch.Generator):
        st = arch["setting"]
        self.channels_last = st["memory_format"] == "channels_last"
        model = to_memory_format(rebuild(arch["record"]), self.channels_last, device)
        self.model, self.device = model, device
        self.bf16 = st["precision"] == "bf16"
        size = st["image_size"]
        classes = int(arch["record"]["model"].get("num_classes") or 10)
        self.x1 = self._input(1, size, gen)
        self.xe = self._input(st["eval_batch"], size, gen)
        self.xt = self._input(st["train_batch"], size, gen)
        self.yt = torch.randint(0, classes, (st["train_batch"],), generator=gen).to(device)
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        tcfg = TrainConfig(**{k: v for k, v in st["train"].items() if k in fields})
        from bench.optim import make_optimizer
        self.optimizer = make_optimizer(model, tcfg)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)

    def _input(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        x = torch.randn(n, 3, size, size, generator=gen).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def infer(self, x: torch.Tensor) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            self.model(x)

    def train_step(self) -> None:
        self.model.train()
        with self.autocast():
            loss = self.criterion(self.model(self.xt), self.yt)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn: Callable[[], None], reps: int, device: torch.device) -> float:
    """Milliseconds per call of `fn`, over `reps` calls between two device synchronisations."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3 / reps


def load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def sitting(device: torch.device) -> dict[str, Any]:
    from bench.device import cpu_capability, cpu_model
    info = {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "cpu_count": os.cpu_count(), "device": str(device),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def retime(results_dir: str | Path, rounds: int = ROUNDS, warmup: int = WARMUP_ROUNDS,
           latency_reps: int = LATENCY_REPS, device: str = "auto", log: Callable[[str], None] = print) -> Path:
    """Time every row's deployed architecture under `results_dir` (found as `report` finds
    its folder: locate) in one sitting; write `results_dir/retime.json` (only once every
    sample is taken) and return its path. A row that cannot be rebuilt or set up is logged
    as not timed, with the reason; a failure while timing is a one-line ConfigError and
    nothing is written."""
    from bench.device import resolve_device
    if rounds < 1 or warmup < 0 or latency_reps < 1:
        raise ConfigError(f"retime: rounds >= 1, warmup >= 0 and latency reps >= 1 (got {rounds}, {warmup}, "
                          f"{latency_reps})")
    out = locate(results_dir)
    summaries = finished_summaries(out)
    if not summaries:
        raise ConfigError(f"retime: no finished runs in '{out}' (a finished run's summary.json says so); give a "
                          f"suite's results folder (e.g. results/cifar10-quick) or the runs/ folder inside it")
    dev = resolve_device(device)
    suite = out / "suite.json"
    controls = (read_suite(suite).get("controls") or {}) if os.path.lexists(suite) else {}
    rows, archs, skipped = plan(summaries, controls)
    gen = torch.Generator().manual_seed(0)
    timed = {}
    for a, arch in archs.items():
        try:
            timed[a] = Timed(arch, dev, gen)
        except Exception as e:        # a model or setting torch will not set up: its rows are not timed
            for r in [r for r in rows if r["arch"] == a]:
                rows.remove(r)
                skipped.append({"model": r["model"], "label": r["label"], "target": r["target"],
                                "reason": _reason(e)})
    archs = {a: archs[a] for a in timed}
    for s in skipped:
        log(f"retime: {s['model']} {s['label']} {s['target']}: not timed ({s['reason']})")
    if not archs:
        raise ConfigError(f"retime: no row in '{out}' could be rebuilt, nothing to time (the reasons are above); "
                          f"retrain those runs, or give a folder whose runs this version wrote")
    ids = list(timed)
    samples = {a: {m: [] for m in MEASURES} for a in ids}
    loads = []
    info = sitting(dev)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_before = load_average()
    log(f"retime: {len(ids)} architectures of {len(rows)} rows, {warmup} warm-up + {rounds} rounds on {info['cpu']} "
        f"({dev})")
    with torch.random.fork_rng(devices=[]):
        for r in range(warmup + rounds):
            k = r % len(ids)
            for a in ids[k:] + ids[:k]:                  # round robin, a rotated start each round
                t = timed[a]
                try:
                    got = {"latency_ms": time_block(lambda: t.infer(t.x1), latency_reps, dev),
                           "infer_batch_ms": time_block(lambda: t.infer(t.xe), 1, dev),
                           "train_step_ms": time_block(t.train_step, 1, dev)}
                except Exception as e:
                    names = ", ".join(f"{r['model']} {r['label']}" for r in rows if r["arch"] == a)
                    raise ConfigError(f"retime: timing {names} failed ({_reason(e)}); nothing written: retrain "
                                      f"that run, or move it aside and time the rest") from None
                if r >= warmup:
                    for m, v in got.items():
                        samples[a][m].append(v)
            loads.append(load_average())
            log(f"retime: round {r + 1}/{warmup + rounds}{' (warm-up, dropped)' if r < warmup else ''}, "
                f"load {loads[-1]}")
    doc = {
        "format": FORMAT,
        "sitting": {**info, "started": started,
                    "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "rounds": rounds, "warmup_rounds": warmup, "latency_reps": latency_reps,
                    "order": "round robin over the architectures, the start rotated by one each round",
                    "load_before": load_before, "load_after": load_average(), "load_per_round": loads},
        "architectures": [{**archs[a], "samples": samples[a]} for a in ids],
        "rows": rows, "not_timed": skipped,
    }
    from bench.runs import write_json
    path = out / "retime.json"
    write_json(path, doc)
    log(f"retime: -> {path}")
    return path


# --------------------------------------------------------------------------- the report's table
def median_iqr(values: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile)."""
    a = np.asarray(values, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


def control_row(retime_doc: dict, row: dict) -> Optional[dict]:
    """The row's control: the control label's row at the same target where the control ran
    there (e.g. static DSR for DSR), else its target-less row (dense)."""
    same = [c for c in retime_doc["rows"] if c["model"] == row["model"] and c["label"] == row["control"]]
    return next((c for c in same if c["target"] == row["target"]), None) or next(
        (c for c in same if c["target"] is None), None)


def _ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def speedup(retime_doc: dict, row: dict, measure: str) -> Optional[float]:
    """The row's speed-up over its control for `measure`: the control's median time divided
    by the row's, both medians of this sitting's samples (x faster than the control)."""
    archs = {a["id"]: a for a in retime_doc["architectures"]}
    control = control_row(retime_doc, row)
    if control is None:
        return None
    mine, ref = archs[row["arch"]]["samples"][measure], archs[control["arch"]]["samples"][measure]
    if not mine or not ref:
        return None
    top, bottom = median_iqr(ref)[0], median_iqr(mine)[0]
    if not (top > 0 and bottom > 0 and np.isfinite(top) and np.isfinite(bottom)):   # no time, no ratio
        return None
    return top / bottom


def _busy(s: dict) -> Optional[float]:
    loads = [v[0] for v in [s.get("load_before"), s.get("load_after"), *s.get("load_per_round", [])] if v]
    return max(loads) - s.get("torch_threads", 1) if loads else None


def speed_lines(retime_doc: dict, run_ids: Optional[set[str]] = None,
                rows_now: Optional[set[tuple]] = None) -> list[str]:
    """Markdown: the sitting and, per model, one table of the three timings (median and IQR
    in ms) with the speed-up over the row's control beside each. Given the folder's
    current `run_ids` and rows (model, label, target), a row whose timed run is no longer
    there (redone since, with another identity) is marked stale, and rows the sitting did
    not time are named: a sitting is a snapshot, and the runs may have moved on."""
    s = retime_doc["sitting"]
    stale = {id(r) for r in retime_doc["rows"]
             if run_ids is not None and r.get("representative") is not None and r["representative"] not in run_ids}
    untimed = sorted(rows_now - {(r["model"], r["label"], r["target"]) for r in retime_doc["rows"]},
                     key=lambda t: (t[0], t[1], -(t[2] or 1.0))) if rows_now is not None else []
    archs = {a["id"]: a for a in retime_doc["architectures"]}
    busy = _busy(s)
    lines = ["## Speed, timed in one sitting", "",
             f"Every row's deployed architecture, rebuilt without weights and timed by `python -m bench retime` on "
             f"{s['cpu']}{', ' + s['cpu_capability'] if s.get('cpu_capability') else ''} "
             f"({s['device']}{', ' + s['gpu'] if s.get('gpu') else ''}, {s['torch_threads']} threads, "
             f"torch {s['torch']}) from {s['started']} to {s['finished']}: {s['rounds']} rounds after "
             f"{s['warmup_rounds']} dropped warm-up round(s), the architectures interleaved round robin. "
             f"1-minute load average {s['load_before'][0] if s.get('load_before') else '?'} before, "
             f"{s['load_after'][0] if s.get('load_after') else '?'} after. A row is timed on the architecture of "
             f"its seed with the median MACs (named in the table).", ""]
    if busy is not None and busy > BUSY_LOAD:
        lines += [f"**The machine was busy during this sitting** (load above this process's {s['torch_threads']} "
                  f"threads by {busy:.2f} > {BUSY_LOAD}): the figures are not those of a quiet machine.", ""]
    if stale or untimed:
        lines += [f"**This sitting does not cover the current runs**: "
                  + (f"{len(stale)} of its rows time the architecture of a run no longer in runs/ (marked *stale*: "
                     f"redone since); " if stale else "")
                  + (f"not timed in it: {', '.join(f'{m} {l}' + ('' if t is None else f' {t:g}') for m, l, t in untimed)}; "
                     if untimed else "")
                  + "`python -m bench retime` on this folder times every row again.", ""]
    lines += ["Times are median (IQR) in ms over the rounds. **Speed-ups are x faster than the row's control**: "
              "the control's median divided by the row's median, both from this sitting (> 1: faster).", ""]
    for model in dict.fromkeys(r["model"] for r in retime_doc["rows"]):
        rows = [r for r in retime_doc["rows"] if r["model"] == model]
        head = ["label", "target", "control", "timed seed", "params", "MACs"]
        for m in MEASURES:
            head += [f"{MEASURE_TITLES[m]} ms", "x faster"]
        lines += [f"### {model}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            a = archs[r["arch"]]
            cells = [r["label"] + (" (*stale*)" if id(r) in stale else ""),
                     "-" if r["target"] is None else f"{r['target']:g}", r["control"],
                     str(r["representative_seed"]),
                     f"{a['params']:,}", f"{a['macs']:,}"]
            for m in MEASURES:
                v = a["samples"][m]
                if v:
                    med, q1, q3 = median_iqr(v)
                    cells.append(f"{_ms(med)} ({_ms(q1)}-{_ms(q3)})")
                else:
                    cells.append("-")
                x = speedup(retime_doc, r, m)
                cells.append("-" if x is None else f"{x:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
        batches = {(archs[r["arch"]]["setting"]["eval_batch"], archs[r["arch"]]["setting"]["train_batch"],
                    archs[r["arch"]]["setting"]["precision"], archs[r["arch"]]["setting"]["memory_format"])
                   for r in rows}
        lines += ["", "Eval batch, training batch, precision, memory format: "
                  + "; ".join(f"{e}, {t}, {p}, {f}" for e, t, p, f in sorted(batches)) + ".", ""]
    for s_ in retime_doc.get("not_timed", []):
        lines.append(f"- not timed: {s_['model']} {s_['label']} {s_['target']}: {s_['reason']}")
    return lines + ([""] if retime_doc.get("not_timed") else [])


_TEXT = (str, None)
_LOAD = (ListOf(NUMBER), None)
# What speed_lines reads from retime.json: read_retime checks it all before the table is drawn.
RETIME = Record(required={
    "sitting": Record(required={"cpu": str, "device": str, "torch_threads": int, "torch": str, "started": str,
                                "finished": str, "rounds": int, "warmup_rounds": int},
                      optional={"cpu_capability": _TEXT, "gpu": _TEXT, "load_before": _LOAD, "load_after": _LOAD,
                                "load_per_round": ListOf(_LOAD)}),
    "architectures": ListOf(Record(required={
        "id": str, "params": int, "macs": int,
        "setting": Record(required={"eval_batch": int, "train_batch": int, "precision": str, "memory_format": str}),
        "samples": Record(required={m: ListOf(NUMBER) for m in MEASURES})})),
    "rows": ListOf(Record(required={"model": str, "label": str, "target": (NUMBER, None), "control": str,
                                    "arch": str, "representative_seed": (int, None)},
                          optional={"representative": _TEXT})),
}, optional={"not_timed": ListOf(Record(required={"model": str, "label": str, "target": (NUMBER, None),
                                                  "reason": str}))})


def read_retime(path: str | Path) -> dict:
    """retime.json, checked before anything is drawn from it: this version's format, the
    keys and types speed_lines reads, every sample a finite time above 0, every row's
    architecture present. A damaged, crafted
    or other-version file is a one-line RecordError naming it."""
    fix = f"delete it, or time the suite again: `python -m bench retime {Path(path).parent}`"
    doc = read_json_record(path, "retime record", fix)
    if doc.get("format") != FORMAT:
        found = f"format {show(doc['format'])}" if "format" in doc else "no format"
        raise refuse(path, "retime record", f"{found}; this version reads format {FORMAT}", fix)
    check(doc, RETIME, path, "retime record", fix)
    for i, a in enumerate(doc["architectures"]):
        for m in MEASURES:
            bad = next((v for v in a["samples"][m] if v <= 0), None)
            if bad is not None:
                raise refuse(path, "retime record", f"architectures[{i}].samples.{m} holds {show(bad)}, "
                                                    f"not a time above 0 ms", fix)
    ids = {a["id"] for a in doc["architectures"]}
    for i, row in enumerate(doc["rows"]):
        if row["arch"] not in ids:
            raise refuse(path, "retime record", f"rows[{i}].arch {show(row['arch'])} names no architecture", fix)
    return doc


def report_lines(results_dir: str | Path, run_ids: Optional[set[str]] = None,
                 rows_now: Optional[set[tuple]] = None) -> list[str]:
    """The report's speed section from `results_dir/retime.json` (checked: read_retime),
    set against the folder's current runs (speed_lines); nothing where there is none."""
    path = Path(results_dir) / "retime.json"
    if not os.path.lexists(path):
        return []
    return speed_lines(read_retime(path), run_ids, rows_now)
