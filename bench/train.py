"""The one training loop. Every method runs through `train()`; none has its own loop.

    build model (seeded) -> method.on_train_start
    for each epoch:
        steps: lr(step) -> forward/backward/step -> method.after_step
        evaluate -> method.on_epoch_end (may return a new model: fresh optimizer,
        same schedule, evaluated again; or change it in place, declared in
        `in_place_hooks`: DDP/compile wrapper rebuilt) -> history row -> resume state
    final metrics -> checkpoint -> summary.json (the "finished" marker)

Device-specific work (bf16 autocast, channels_last, synchronising before reading
clocks) sits behind `bench.device.Runtime`; the CPU path is the tested one.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from bench import architecture, dist
from bench.config import RunConfig, to_dict
from bench.data import DeviceData, load_data
from bench.datasets import data_fingerprint
from bench.device import Runtime, resolve_device
from bench.metrics import (EPOCH, FINAL, IntervalTimer, MetricInput, compute_all, count_macs, evaluate, measure_speed,
                           param_counts, peak_memory_mb, reset_peak_memory)
from bench.metrics import measure
from bench.models import build_model
from bench.optim import lr_at, make_optimizer
from bench.progress import EpochBar, bars_enabled
from bench.records import RecordError, read_env
from bench.runs import STATE_FORMAT, RunDir, checkpoint_dict, environment, git_commit, plain_data, run_lock, run_path
from bench.wandb_log import WandbLogger
from methods import Context, Method, get_method


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_step(runner: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
              rt: Runtime, before_step: Optional[Callable[[], None]] = None
              ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One optimizer step: the hot path, shared by the loop, the throughput probe and
    the overhead benchmark. `before_step` (the method's hook, None unless it overrides
    it) runs between backward (DDP's gradient all-reduce included) and the step."""
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with rt.autocast():
            out = runner(x)
            loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step()
        optimizer.step()
        return out, loss
    return step


# Steps between host reads of the loss where each read would add a device sync.
NONFINITE_CHECK_EVERY = 25


class Diverged(Exception):
    """The training loss became non-finite; `train` stops the run and records it."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"non-finite training loss at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


def nonfinite_check_every(device: torch.device, synced_per_step: bool = False) -> int:
    """Steps between host reads of the recorded losses: every step where the host waits
    for the device anyway (the CPU, which never runs ahead of the host, or a step that
    synchronises for another reason), else every NONFINITE_CHECK_EVERY steps and at the
    epoch's end, so a GPU run gains no sync per step (the timing of after_step hooks
    does not synchronise: IntervalTimer). Under torchrun a read is a collective (the
    ranks must stop together), so it is never per step there."""
    if dist.is_distributed():
        return NONFINITE_CHECK_EVERY
    return 1 if not measure.asynchronous(device) or synced_per_step else NONFINITE_CHECK_EVERY


class LossWatch:
    """Finds the first step whose training loss is non-finite with no device sync per
    step: each loss is copied into a device buffer (one small kernel), which the host
    reads when it is full and at the epoch's end, so the step found is exact."""

    def __init__(self, device: torch.device, every: int):
        self.losses = torch.zeros(every, device=device)
        self.steps: list[int] = []

    def add(self, loss: torch.Tensor, step: int) -> bool:
        """Record one step's loss; True when the buffer is full (time to read it)."""
        self.losses[len(self.steps)].copy_(loss.detach())
        self.steps.append(step)
        return len(self.steps) == len(self.losses)

    def first_nonfinite(self) -> Optional[int]:
        """The first recorded step, on any rank, whose loss was non-finite (None if none);
        waits for the device and empties the buffer."""
        bad = torch.isfinite(self.losses[:len(self.steps)]).logical_not().nonzero()
        mine = self.steps[int(bad[0])] if len(bad) else -1
        self.steps = []
        found = [s for s in dist.all_gather_object(mine) if s >= 0]
        return min(found) if found else None


def overrides(method: Method, hook: str) -> bool:
    return getattr(type(method), hook) is not getattr(Method, hook)


def layout(model: nn.Module) -> list[tuple[str, Any]]:
    """What DDP and torch.compile capture when they wrap a model: its modules,
    parameters and buffers, by name and object identity."""
    return [*model.named_modules(), *model.named_parameters(), *model.named_buffers()]


def same_layout(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> bool:
    return len(a) == len(b) and all(na == nb and oa is ob for (na, oa), (nb, ob) in zip(a, b))


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, method: str, where: str) -> None:
    """The optimizer must hold exactly the model's trainable parameters (by identity):
    after a hook, one it misses would never train and one it holds but the model lost
    would train in vain."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if held != trainable:
        raise RuntimeError(f"method {method}: after {where} the optimizer holds {len(held - trainable)} parameter(s) "
                           f"the model does not train and misses {len(trainable - held)} trainable one(s); return "
                           f"a new model from the hook instead of changing its parameters in place (methods/base.py)")


def average_running_stats_(model: nn.Module) -> None:
    """Under torchrun, average BN running statistics over the ranks (no-op in one process).

    Each rank updates them from its own shard (DDP broadcasts rank 0's only before the
    next forward), so without this evaluation, epoch-end hooks and the checkpoint would
    see a different model on every rank. Training-mode forwards never read them."""
    if not dist.is_distributed():
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for t in (m.running_mean, m.running_var):
                dist.all_reduce_sum_(t).div_(dist.world_size())


def buffer_digest(model: nn.Module) -> str:
    """sha256 over every buffer's name and bytes: equal digests mean bit-identical buffers
    (position-sensitive, unlike a sum: a mask entry moved elsewhere changes it)."""
    h = hashlib.sha256()
    for name, b in model.named_buffers():
        h.update(name.encode())
        h.update(b.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Trainer:
    """State of one run while it trains (what `state.pt` captures)."""
    cfg: RunConfig
    data: DeviceData
    rt: Runtime
    method: Method
    ctx: Context
    model: nn.Module
    criterion: nn.Module
    history: list[dict] = field(default_factory=list)
    # train_s: the step loop (after_step hooks included, also counted in after_step_s);
    # transform_s: hooks outside the loop (on_train_start, on_epoch_end); eval_s: evaluation.
    times: dict[str, float] = field(default_factory=lambda: {"train_s": 0.0, "eval_s": 0.0, "transform_s": 0.0,
                                                             "after_step_s": 0.0})
    train_macs: float = 0.0
    train_macs_nonzero: float = 0.0
    transforms: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.hook_timer = IntervalTimer(self.rt.device)
        self.set_model(self.model)

    # -- model changes -------------------------------------------------------------------
    def set_model(self, model: nn.Module) -> None:
        """Adopt a (possibly new) model: place it, fresh optimizer, LR schedule unchanged."""
        self.model = self.rt.place(model)
        self.runner = self.rt.runner(self.model)
        self.optimizer = make_optimizer(self.model, self.cfg.train)
        self.ctx.optimizer = self.optimizer
        self.step_fn = make_step(self.runner, self.optimizer, self.criterion, self.rt, self.before_step_hook())
        self.warmed_up = not self.rt.compile

    def before_step_hook(self) -> Optional[Callable[[], None]]:
        """The method's before_step bound to the current model; None if it does not override it."""
        if not overrides(self.method, "before_step"):
            return None
        return lambda: self.method.before_step(self.model)

    def rewrap(self) -> None:
        """Rebuild what wraps the model (DDP, torch.compile) after a hook changed it in
        place; same parameters, so the optimizer and its state stay."""
        self.runner = self.rt.runner(self.model)
        self.step_fn = make_step(self.runner, self.optimizer, self.criterion, self.rt, self.before_step_hook())
        self.warmed_up = not self.rt.compile

    def warm_up(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One untimed forward and backward through a freshly (re)wrapped compiled runner,
        so compilation is not counted as training time (a method that swaps layers gets
        recompiled after each swap and would pay for it in its wall-clock). The step
        changes nothing: no optimizer step (the next step zeroes the gradients), buffers
        (BN statistics) and random states restored. Returns its seconds (`compile_s`)."""
        t0 = self.rt.clock()
        buffers = [b.detach().clone() for b in self.model.buffers()]
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.rt.device) if self.rt.device.type == "cuda" else None
        with self.rt.autocast():
            loss = self.criterion(self.runner(x), y)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.rt.device)
        self.warmed_up = True
        return self.rt.clock() - t0

    def run_hook(self, hook: str, *args) -> tuple[Optional[nn.Module], float]:
        """Call `hook` (on_train_start, on_epoch_end) on the model, timed; rewrap the model
        if the hook changed it in place, which it must declare (methods/base.py)."""
        before = layout(self.model)
        new, seconds = self.timed_hook(getattr(self.method, hook), self.model, *args)
        if new is None and not same_layout(before, layout(self.model)):
            if hook not in self.method.in_place_hooks:
                raise RuntimeError(f"method {self.method.name}: {hook} changed the model's modules, parameters or "
                                   f"buffers in place without naming the hook in in_place_hooks (methods/base.py)")
            self.rewrap()
        if new is None:
            check_optimizer(self.optimizer, self.model, self.method.name, hook)
        return new, seconds

    def timed_hook(self, fn: Callable, *args) -> tuple[Any, float]:
        """Call a hook that runs once (per run or epoch), timed with a synchronising clock."""
        t0 = self.rt.clock()
        out = fn(*args)
        return out, self.rt.clock() - t0

    def step_hook(self) -> None:
        """Call after_step, timed on the device's timeline with no wait for the device
        (IntervalTimer: read once per epoch), so that timing it adds no sync per step."""
        t0 = self.hook_timer.mark()
        self.method.after_step(self.model)
        self.hook_timer.add("after_step_s", t0, self.hook_timer.mark())

    def maybe_replace(self, new: Optional[nn.Module], seconds: float, row: dict, when: str) -> None:
        if new is None:
            return
        self.set_model(new)
        check_optimizer(self.optimizer, self.model, self.method.name, when)
        acc = self.evaluate()
        row.update({"acc_after_transform": acc, "transform_s": seconds})
        self.transforms.append({"when": when, "epoch": self.ctx.epoch, "seconds": seconds,
                                "acc_after": acc, "params_after": param_counts(self.model)["params_total"]})

    def evaluate(self) -> float:
        t0 = self.rt.clock()
        acc = evaluate(self.model, lambda: self.data.eval_batches(self.cfg.train.eval_batch_size),
                       self.rt.prepare, self.rt.autocast)
        self.times["eval_s"] += self.rt.clock() - t0
        return acc

    # -- one epoch -----------------------------------------------------------------------
    def check_finite(self, watch: LossWatch, epoch: int, bar: EpochBar) -> None:
        """Raise Diverged (closing the epoch's bar) if a loss recorded in `watch` was non-finite."""
        step = watch.first_nonfinite()
        if step is not None:
            bar.close()
            raise Diverged(epoch + 1, step)

    def train_epoch(self, epoch: int, total_steps: int, log: Callable[[str], None]) -> dict:
        """One epoch of steps; stops with Diverged at a non-finite loss (nonfinite_check_every)."""
        cfg, ctx, rt = self.cfg.train, self.ctx, self.rt
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)   # resume-exact data order
        time_hook = overrides(self.method, "after_step")
        loss_sum = torch.zeros((), device=rt.device)
        correct = torch.zeros((), device=rt.device, dtype=torch.long)
        seen, compile_s = 0, 0.0
        watch = LossWatch(rt.device, nonfinite_check_every(rt.device, False))   # after_step timing: no sync
        bar = EpochBar(epoch, self.cfg.train.epochs, self.data.steps_per_epoch(cfg.batch_size),
                       bars_enabled() and dist.is_main())
        before = layout(self.model)
        self.model.train()
        t0 = t_log = rt.clock()
        for x, y in self.data.train_batches(cfg.batch_size, gen, self.cfg.data.augment):
            x, y = dist.shard(x), dist.shard(y)          # this rank's share of the global batch
            lr = lr_at(ctx.step, total_steps, ctx.steps_per_epoch, cfg)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            if not self.warmed_up:                          # compile after a (re)wrap: not training time
                compile_s += self.warm_up(rt.prepare(x), y)
            out, loss = self.step_fn(rt.prepare(x), y)
            ctx.step += 1
            if watch.add(loss, ctx.step):
                self.check_finite(watch, epoch, bar)
            if time_hook:
                self.step_hook()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            bar.update(len(y) * dist.world_size(), loss_sum, correct, seen)
            if cfg.log_every_steps and ctx.step % cfg.log_every_steps == 0 and bar.bar is None:
                now = rt.clock()
                log(f"  step {ctx.step}/{total_steps}  loss {loss.item():.4f}  lr {lr:.4f}  "
                    f"{cfg.log_every_steps * len(y) / (now - t_log):.0f} img/s")
                t_log = now
        seconds = rt.clock() - t0 - compile_s
        hook_s = self.hook_timer.totals().get("after_step_s", 0.0)
        self.check_finite(watch, epoch, bar)
        bar.close()
        check_optimizer(self.optimizer, self.model, self.method.name, "the epoch's steps")
        if not same_layout(before, layout(self.model)):
            raise RuntimeError(f"method {self.method.name}: after_step changed the model's modules, parameters or "
                               f"buffers; it may change their values only (methods/base.py)")
        average_running_stats_(self.model)
        self.times["train_s"] += seconds
        self.times["after_step_s"] += hook_s
        if compile_s:
            self.times["compile_s"] = self.times.get("compile_s", 0.0) + compile_s
        totals = dist.all_reduce_sum_(torch.stack([loss_sum.double(), correct.double(),
                                                   torch.tensor(float(seen), device=rt.device, dtype=torch.float64)]))
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
        return {"train_loss": float(loss_sum) / max(seen, 1), "train_acc": float(correct) / max(seen, 1),
                "epoch_s": seconds, "after_step_s": hook_s, "images": seen, "lr": lr}


def calibration_source(cfg: RunConfig, data: DeviceData, rt: Runtime,
                       log: Callable[[str], None] = print) -> Callable[..., Any]:
    """`ctx.calibration(n_images, batch_size=500, heldout=False, labels=False)`: unaugmented training
    images for a method's statistics. A request for more images than the training set
    holds (pcn's 5,000 on the smoke config's 1,024) takes the whole set, with a one-line
    note naming the option; a request that fits is served exactly as asked."""
    available = len(data.train_x)
    noted: set[tuple[int, bool]] = set()

    def note(key: tuple[int, bool], text: str) -> None:
        if key not in noted and dist.is_main():
            log(text)
        noted.add(key)

    def calibration(n_images: int, batch_size: int = 500, heldout: bool = False, labels: bool = False):
        if n_images > available:
            note((n_images, heldout), f"note: {n_images} {'held-out ' if heldout else ''}calibration images asked "
                                      f"for ({_calibration_option(cfg, n_images, heldout)}) but the training set "
                                      f"has {available}: using all {available}")
            n_images = available
        if heldout and any(not h for _, h in noted):     # the calibration set was the whole training set
            note((-1, True), f"note: the {n_images} held-out images overlap the calibration images, which are "
                             f"the whole training set")
        # Under torchrun each rank sees its shard of every calibration batch; statistics
        # are sums, all-reduced by bench.activations, so every rank gets the full-set result.
        # With `labels` a batch is (images, labels), for criteria that need a loss (Taylor).
        return ((rt.prepare(dist.shard(b[0])), dist.shard(b[1])) if labels else rt.prepare(dist.shard(b))
                for b in data.calibration_batches(n_images, batch_size, heldout, cfg.seed, labels))
    return calibration


def _calibration_option(cfg: RunConfig, n_images: int, heldout: bool) -> str:
    """The method option behind a calibration request, for the note above."""
    for key in (("error_images", "calibration_images") if heldout else ("calibration_images",)):
        if getattr(cfg.method, key, None) == n_images:
            return f"method.{key}={n_images}"
    return "the method's calibration size"


def build_context(cfg: RunConfig, data: DeviceData, model: nn.Module, rt: Runtime,
                  example: torch.Tensor, evaluate_fn: Callable, criterion: Optional[nn.Module] = None,
                  log: Callable[[str], None] = print) -> Context:
    dense_macs, _ = count_macs(model, example)
    return Context(
        device=rt.device, seed=cfg.seed, model_name=cfg.model.name, num_train_images=len(data.train_x),
        epochs=cfg.train.epochs,
        steps_per_epoch=data.steps_per_epoch(cfg.train.batch_size), example_inputs=example,
        dense_params=param_counts(model)["params_total"], dense_macs=dense_macs,
        generator=torch.Generator().manual_seed(cfg.seed + 1),
        calibration=calibration_source(cfg, data, rt, log),
        evaluate=evaluate_fn, criterion=criterion,
    )


def train(cfg: RunConfig, max_epochs: Optional[int] = None, log: Callable[[str], None] = print,
          rerun: bool = False) -> Optional[dict]:
    """Run (or resume, or skip if finished) one configured run; return its summary.

    `max_epochs` stops after that many epochs in this call, leaving a resumable run
    (used by tests to simulate an interruption); the return value is then None.
    `rerun` trains a finished run again from scratch in its folder, its earlier summary
    kept beside it (`RunDir.retire_summary`). The run folder is written only once the
    method has accepted the run (its constructor and `on_train_start`), and a folder this
    call made is removed again when the run stops before that, so a run that stops before
    training leaves nothing behind."""
    rd = RunDir(run_path(cfg))
    run_id = rd.path.name
    if not rd.finished() or rerun:
        missing = [p for p in (rd.path, *rd.path.parents) if not p.exists()]
        try:
            with run_lock(rd.path):      # RunningElsewhere if another process trains it
                if not rd.finished() or rerun:    # (or finished it since the check above)
                    return _train(cfg, rd, run_id, max_epochs, log)
        except BaseException:
            if missing:                  # this call made the run folder (and these parents)
                rd.remove_if_unused(made=missing[-1])
            raise
    done = rd.read_summary()
    log(f"{run_id}: already {done.get('status', 'finished')} in {rd.path}, skipping "
        f"(--rerun trains it again){code_change_note(rd)}")
    return done


def _train(cfg: RunConfig, rd: RunDir, run_id: str, max_epochs: Optional[int], log: Callable[[str], None]
           ) -> Optional[dict]:
    device = dist.init_from_env(cfg.device) or resolve_device(cfg.device)
    main = dist.is_main()                     # only rank 0 writes files and logs to W&B
    rt = Runtime(device, cfg.train)
    reset_peak_memory(device)                 # this run's peak, not the process's
    if rt.compile:
        torch._dynamo.reset()                 # a fresh compile cache: runs in one process would exhaust its limit
    seed_all(cfg.seed)                        # before the model and any mask exist
    data = load_data(cfg.data, device, cfg.model.num_classes)
    model = rt.place(build_model(cfg.model))
    example = rt.prepare(data.normalize(data.train_x[:1]))
    env = {**environment(device), **rt.describe(), "world_size": dist.world_size(),
           "data_fingerprint": data_fingerprint(cfg.data, cfg.model.num_classes)}

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    ctx = build_context(cfg, data, model, rt, example, lambda m: evaluate(
        m, lambda: data.eval_batches(cfg.train.eval_batch_size), rt.prepare, rt.autocast), criterion, log)
    method = get_method(cfg.method.name)(cfg.method, ctx)
    trainer = Trainer(cfg, data, rt, method, ctx, model, criterion)

    state = rd.load_state(device, log) if cfg.resume else None
    start_epoch = 0
    if state is not None:
        start_epoch = restore(trainer, state)
        log(f"{run_id}: resuming after epoch {start_epoch}")
    else:
        new, s = trainer.run_hook("on_train_start")
        trainer.times["transform_s"] += s
        row: dict = {}
        trainer.maybe_replace(new, s, row, "train_start")
    if main:
        if rd.finished():                     # --rerun, now that the method has accepted the run
            log(f"{run_id}: training again (--rerun); the earlier summary is kept as {rd.retire_summary()}")
        rd.prepare(cfg, env)

    logger = WandbLogger(cfg, rd.path, run_id, method.target(), enabled=main)
    steps_per_epoch, epochs = ctx.steps_per_epoch, cfg.train.epochs
    total_steps = steps_per_epoch * epochs
    log(f"{run_id}: {cfg.method.name} on {cfg.model.name} ({cfg.data.name}, {len(data.train_x)} train images), "
        f"{epochs} epochs x {steps_per_epoch} steps on {device}")
    done_now = 0
    for epoch in range(start_epoch, epochs):
        ctx.epoch = epoch
        try:
            ep = trainer.train_epoch(epoch, total_steps, log)
        except Diverged as d:
            return stop_diverged(trainer, rd, logger, env, d, total_steps, log)
        # The model as trained and evaluated in this epoch (its architecture is fixed within
        # the epoch; non-zero counts, e.g. DSR's regrown weights, are as at the epoch's end).
        macs, macs_nz = count_macs(trainer.model, example)
        params = param_counts(trainer.model)
        ctx.last_epoch_s = ep["epoch_s"]
        # Forward + backward ~ 3x the forward MACs (backward: grads of inputs and weights).
        # What the method spent beside those passes (its own statistics, updates, merges).
        extra = trainer.method.take_extra_train_macs()
        trainer.train_macs += 3 * macs * ep["images"] + extra
        trainer.train_macs_nonzero += 3 * macs_nz * ep["images"] + extra
        acc = trainer.evaluate()
        row = {"epoch": epoch + 1, "test_acc": acc, **ep, "params_total": params["params_total"],
               "params_nonzero": params["params_nonzero"], "macs": macs, "macs_nonzero": macs_nz}
        ctx.epoch = epoch + 1
        new, s = trainer.run_hook("on_epoch_end", epoch + 1)
        trainer.times["transform_s"] += s
        trainer.maybe_replace(new, s, row, f"epoch_end_{epoch + 1}")
        if "acc_after_transform" in row:     # the sizes of the model that accuracy was measured on
            after = param_counts(trainer.model)
            row.update({"params_after_transform": after["params_total"],
                        "params_nonzero_after_transform": after["params_nonzero"],
                        "macs_after_transform": count_macs(trainer.model, example)[0]})
        row.update(method.epoch_metrics(trainer.model))
        row.update(compute_all(EPOCH, MetricInput(trainer.model, example, epoch + 1, trainer.history)))
        row.update({"train_wall_s_cum": trainer.times["train_s"] + trainer.times["transform_s"],
                    "train_macs_cum": trainer.train_macs})
        trainer.history.append(row)
        logger.log(row, step=epoch + 1)
        if main:
            rd.write_history(trainer.history)
            rd.save_state(snapshot(trainer))
        dist.barrier()
        log(f"epoch {epoch + 1}/{epochs}  loss {ep['train_loss']:.4f}  train {ep['train_acc']:.4f}  "
            f"test {acc:.4f}" + (f" -> {row['acc_after_transform']:.4f} after transform" if "acc_after_transform" in row else "")
            + f"  {ep['images'] / ep['epoch_s']:.0f} img/s  {ep['epoch_s']:.1f}s")
        done_now += 1
        if max_epochs is not None and done_now >= max_epochs and epoch + 1 < epochs:
            logger.finish()
            return None

    summary = {"status": "finished", **final_summary(trainer, cfg, run_id, env, example)}
    if main:
        rd.finish(summary, checkpoint_dict(trainer.model, architecture.record(trainer.model, cfg.model))
                  if cfg.save_checkpoint else None)
    logger.finish(summary)
    dist.barrier()
    log(f"{run_id}: test acc {summary['test_acc']:.4f}, {summary['params_total']:,} params, "
        f"{summary['macs']:,} MACs, {summary['train_wall_s']:.1f}s -> {rd.path}")
    return summary


def code_change_note(rd: RunDir) -> str:
    """'; it ran on code abc123, this checkout is def456-dirty' when the code a finished run
    recorded (env.json's git_commit, '-dirty' for uncommitted changes) is not the code here;
    '' when they match or either is unknown."""
    try:   # through the record reader: a crafted env.json (a FIFO, a list, a huge file) is refused, not read
        then = str(read_env(rd.path / "env.json").get("git_commit", "unknown"))
    except (OSError, RecordError):
        return ""
    now = git_commit()
    if "unknown" in (then, now) or (then == now and not now.endswith("-dirty")):
        return ""
    if then == now:
        return f"; it ran on {then} and this checkout is {now}: the uncommitted changes may differ"
    return f"; it ran on code {then}, this checkout is {now}"


def stop_diverged(trainer: Trainer, rd: RunDir, logger: WandbLogger, env: dict, d: Diverged, total_steps: int,
                  log: Callable[[str], None]) -> dict:
    """End a run whose loss became non-finite: summary.json says `status: diverged`
    with the epoch and step, and holds no accuracy (the model is not a result)."""
    cfg = trainer.cfg
    summary = {
        "status": "diverged", "run_id": rd.path.name, "method": cfg.method.name, "model": cfg.model.name,
        "dataset": cfg.data.name, "label": cfg.label or cfg.method.name, "seed": cfg.seed,
        "target": trainer.method.target(), "group": cfg.wandb.group, "epochs": cfg.train.epochs,
        "diverged_epoch": d.epoch, "diverged_step": d.step, "steps_total": total_steps,
        "epochs_completed": len(trainer.history),
        "message": f"diverged: non-finite training loss at epoch {d.epoch}/{cfg.train.epochs}, step "
                   f"{d.step}/{total_steps} (train.lr={cfg.train.lr:g}); lower train.lr and run again",
        "env": env, "config": to_dict(cfg),
    }
    if dist.is_main():
        rd.finish(summary, None)
    logger.finish(summary)
    dist.barrier()
    log(f"{rd.path.name}: {summary['message']} -> {rd.path}")
    return summary


def final_summary(trainer: Trainer, cfg: RunConfig, run_id: str, env: dict, example: torch.Tensor) -> dict:
    model, last = trainer.model, trainer.history[-1]
    macs, macs_nz = count_macs(model, example)
    x, y = next(trainer.data.train_batches(cfg.train.batch_size, torch.Generator().manual_seed(0), False))
    x = trainer.rt.prepare(x)
    x_eval = trainer.rt.prepare(next(trainer.data.eval_batches(cfg.train.eval_batch_size))[0])

    def probe_step(m: nn.Module):   # one device, no DDP: the speed of the model itself
        return make_step(trainer.rt.runner(m, parallel=False), make_optimizer(m, cfg.train), trainer.criterion,
                         trainer.rt)

    deployed = trainer.method.deploy(model)
    speed = measure_speed(model, x, y, x_eval, probe_step, cfg.train.throughput_steps, trainer.rt.autocast,
                          deployed=deployed,
                          wrap=lambda m: trainer.rt.runner(m, parallel=False)   # compiled where training was
                          ) if cfg.train.throughput_steps else {}
    # One checksum per rank: equal values show the ranks ended with identical weights and buffers.
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    epoch_s = [r["epoch_s"] for r in trainer.history]
    return {
        "run_id": run_id, "method": cfg.method.name, "model": cfg.model.name, "dataset": cfg.data.name,
        "label": cfg.label or cfg.method.name, "seed": cfg.seed, "target": trainer.method.target(),
        "group": cfg.wandb.group,
        "test_acc": last.get("acc_after_transform", last["test_acc"]),
        "best_test_acc": max(max(r["test_acc"], r.get("acc_after_transform", 0.0)) for r in trainer.history),
        "epochs": cfg.train.epochs,
        **param_counts(model),
        "dense_params": trainer.ctx.dense_params, "dense_macs": trainer.ctx.dense_macs,
        "macs": macs, "macs_nonzero": macs_nz,
        "macs_nonzero_note": "theoretical: MACs of non-zero weights; dense kernels still run the rest",
        "compression": trainer.ctx.dense_params / max(1, param_counts(model)["params_nonzero"]),
        "sparsity": 1 - param_counts(model)["params_nonzero"] / max(1, param_counts(model)["params_total"]),
        # Training wall-clock: the step loop plus the method's transforms; evaluation excluded.
        "train_wall_s": trainer.times["train_s"] + trainer.times["transform_s"],
        "eval_s": trainer.times["eval_s"], "transform_s": trainer.times["transform_s"],
        "after_step_s": trainer.times["after_step_s"],
        **({"compile_s": trainer.times["compile_s"]} if "compile_s" in trainer.times else {}),
        "method_s": trainer.times["transform_s"] + trainer.times["after_step_s"],
        "epoch_s_mean": sum(epoch_s) / len(epoch_s),
        "train_macs": trainer.train_macs, "train_macs_nonzero": trainer.train_macs_nonzero,
        "transforms": trainer.transforms,
        **speed, **peak_memory_mb(trainer.rt.device),
        **compute_all(FINAL, MetricInput(model, example, cfg.train.epochs, trainer.history)),
        "method_summary": trainer.method.summary(model),
        # What bench.architecture.rebuild needs to build the deployed model again (no weights),
        # so that `bench retime` can time every row's architecture in one sitting.
        "architecture": architecture.record(deployed, cfg.model),
        **trainer.rt.describe(),
        "world_size": dist.world_size(), "rank_weight_checksums": dist.all_gather_object(checksum),
        "rank_buffer_checksums": dist.all_gather_object(buffer_digest(model)),
        "env": env, "config": to_dict(cfg),
    }


# --------------------------------------------------------------------------- resume
def snapshot(t: Trainer) -> dict:
    """The resume state (state.pt): tensors and plain data only, so it loads with
    `weights_only=True`: the model as its architecture record and state dict, RNG states
    as CPU ByteTensors."""
    return {
        "format": STATE_FORMAT, "epoch": t.ctx.epoch, "step": t.ctx.step,
        "architecture": architecture.record(t.model, t.cfg.model), "model_state": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(), "method": plain_data(t.method.state_dict()),
        "method_generator": t.ctx.generator.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": plain_data(t.history), "times": plain_data(t.times), "train_macs": plain_data(t.train_macs),
        "train_macs_nonzero": plain_data(t.train_macs_nonzero), "transforms": plain_data(t.transforms),
    }


def cpu_bytes(state: torch.Tensor) -> torch.Tensor:
    """An RNG state as `set_state` takes it: a CPU ByteTensor, wherever it was loaded."""
    return state.to(device="cpu", dtype=torch.uint8)


def restore(t: Trainer, state: dict) -> int:
    """Resume `t` from `state` (RunDir.load_state): the model rebuilt from its record, its
    weights loaded, then the optimizer, method and RNG states; returns the completed epochs."""
    model = architecture.rebuild(state["architecture"], t.cfg.model)
    model.load_state_dict(state["model_state"])
    model.train(t.model.training)
    t.set_model(model)
    t.optimizer.load_state_dict(state["optimizer"])
    t.method.load_state_dict(state["method"])
    t.ctx.generator.set_state(cpu_bytes(state["method_generator"]))
    torch.set_rng_state(cpu_bytes(state["torch_rng"]))
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cpu_bytes(s) for s in state["cuda_rng"]])
    t.ctx.epoch, t.ctx.step = state["epoch"], state["step"]
    t.history, t.times, t.transforms = state["history"], state["times"], state["transforms"]
    t.train_macs, t.train_macs_nonzero = state["train_macs"], state["train_macs_nonzero"]
    return state["epoch"]
