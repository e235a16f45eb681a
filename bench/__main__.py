"""Command line: `python -m bench {run,suite,report,retime,compare,wandb-report,methods,fields,models,datasets} ...`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.config import (ConfigError, device_name, label_list, open_fraction, seed_list, split_args,
                          whole_number)


def cmd_run(args: argparse.Namespace) -> int:
    from bench.configure import load_config
    files, overrides = split_args(list(args.configs) + list(args.overrides))
    if not files:
        raise ConfigError("give at least one config file, e.g. `python -m bench run configs/smoke.yaml`")
    cfg = load_config(files, overrides)
    from bench.configure import check_output_dir
    check_output_dir(cfg.output_dir, "output_dir")
    from bench.train import train          # heavy: only once the config is known to be valid
    summary = train(cfg, rerun=args.rerun)
    if summary and summary.get("status") == "diverged":
        print(f"error: run {summary.get('run_id', '')} {summary.get('message') or 'diverged'}", file=sys.stderr)
        return 1
    return 0


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph as one line (a summary that wraps is not cut off)."""
    lines = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def method_options(cls: type) -> list[tuple[str, str, str]]:
    """(key, default, help) of a method's options; `method.name`'s default is the method."""
    from bench.config import describe
    return [(key, repr(cls.name) if key == "method.name" else default, help_)
            for key, default, help_ in describe(cls.Config, "method.")]


def cmd_methods(args: argparse.Namespace) -> int:
    from bench.configure import check_method_name, suite_labels
    labels = suite_labels()
    if args.name and args.name not in labels:
        check_method_name(args.name)                   # unknown: "did you mean", the list (no torch yet)
    from methods import REGISTRY
    if args.name:
        if args.name in labels:
            label = labels[args.name]
            cls = REGISTRY[label.method]
            print(f"{label.label}: a suite label, not a method: {label.overrides()} "
                  f"(suites: {', '.join(label.suites)})")
            print(f"    {label.method}: {first_paragraph(cls.__doc__)}")
            print(f"run it: {label.command()}")
            print(f"its options: python -m bench methods {label.method}")
            return 0
        cls = REGISTRY[args.name]
        print(f"{cls.name}: {first_paragraph(cls.__doc__)}")
        for key, default, help_ in method_options(cls):
            print(f"    {key:32s} {default:14s} {help_}")
        print(f"run it: python -m bench run configs/smoke.yaml method.name={cls.name} {cls.run_overrides}".rstrip())
        used = [lab for lab in labels.values() if lab.method == cls.name]
        if used:
            print("suite labels built on it: " + "; ".join(f"{lab.label} = {lab.overrides()}" for lab in used))
        return 0
    for name, cls in sorted(REGISTRY.items()):
        print(f"{name:18s} {first_paragraph(cls.__doc__)}")
        if args.verbose:
            for key, default, help_ in method_options(cls):
                print(f"    {key:32s} {default:14s} {help_}")
    print("\nsuite labels (a method with options, not methods of their own; `methods LABEL` for one):")
    for label in sorted(labels.values(), key=lambda lab: lab.label):
        print(f"{label.label:20s} = {label.overrides()}")
    print("\none method's options and the command that runs it: python -m bench methods NAME")
    return 0


def field_rows() -> dict[str, list[tuple[str, str]]]:
    """(key, meaning) of every history.csv column and summary.json key: the declared
    metrics (bench/metrics/) and the harness's other fields (bench/metrics/fields.py)."""
    from bench.metrics import EPOCH, FINAL, declared
    from bench.metrics.fields import FIELDS, HISTORY, METHOD_PREFIX_HELP, SUMMARY
    rows: dict[str, list[tuple[str, str]]] = {HISTORY: [], SUMMARY: []}
    for where, when in ((HISTORY, EPOCH), (SUMMARY, FINAL)):
        for m in declared(when):
            which = (" (of the model trained in this epoch, before any change at its end)" if where == HISTORY
                     else " (of the final model)") if EPOCH in m.when and FINAL in m.when else ""
            rows[where].append((m.name, m.help + which))
        rows[where] += [(f.name, f.help) for f in FIELDS.values() if where in f.where]
    rows[HISTORY].sort(key=lambda row: row[0] != "epoch")        # the row's key first
    rows[HISTORY].append(("METHOD/NAME", METHOD_PREFIX_HELP))
    return rows


def cmd_fields(args: argparse.Namespace) -> int:
    from bench.metrics.fields import HISTORY, SUMMARY
    rows = field_rows()
    intro = {HISTORY: "history.csv: one row per completed epoch, describing the model trained in that epoch; the "
                      "*_after_transform columns describe the model the method returned at the epoch's end",
             SUMMARY: "summary.json: the run's identity and its final model (written last: it marks the run "
                      "finished)"}
    for where in (HISTORY, SUMMARY):
        if args.file and args.file != where:
            continue
        if args.markdown:
            print(f"### {intro[where]}\n\n| key | meaning |\n|---|---|")
            print("\n".join(f"| `{k}` | {h} |" for k, h in rows[where]) + "\n")
        else:
            print(intro[where])
            print("\n".join(f"    {k:32s} {h}" for k, h in rows[where]))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from bench.models import MODEL_NOTES
    for name, note in MODEL_NOTES.items():
        print(f"{name:18s} {note}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from bench.config import DataConfig, describe
    from bench.datasets import REGISTRY
    shared = {key for key, _, _ in describe(DataConfig, "data.")}
    for name, cls in sorted(REGISTRY.items()):
        ds = cls(cls.Config(name=name))
        doc = (cls.__doc__ or "").strip().splitlines()
        shape = "x".join(map(str, ds.image_shape))
        print(f"{name:12s} {ds.num_classes:4d} classes  {shape:8s} {ds.train_size:6d} train / {ds.test_size:6d} test  "
              f"{doc[0] if doc else ''}")
        if args.verbose:          # the dataset's own options (the shared ones are listed once, below)
            for key, default, help_ in describe(cls.Config, "data."):
                if key not in shared:
                    print(f"    {key:32s} {default:14s} {help_}")
    if args.verbose:
        print("options of every dataset:")
        for key, default, help_ in describe(DataConfig, "data."):
            print(f"    {key:32s} {default:14s} {help_}")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    split_args(args.overrides, files_allowed=False)     # `train.epochs 2`: say how to write it
    if args.gpu_suite:              # `make bench-cifar` without PROFILE: decide here, one interpreter start
        import torch
        if torch.cuda.is_available():
            print(f"PROFILE=full (CUDA is available): the paper-scale suite {args.gpu_suite}; "
                  f"PROFILE=quick for the small one", flush=True)
            args.config = args.gpu_suite
        else:
            print(f"PROFILE=quick (no CUDA device here): the CPU-sized suite {args.config}; "
                  f"PROFILE=full forces the paper-scale one", flush=True)
    from bench.suite import run_suite
    slurm = {"partition": args.partition, "gpus_per_job": args.gpus_per_job, "timeout_min": args.timeout_min,
             "array_parallelism": args.array_parallelism}
    return run_suite(args.config, args.overrides, dry_run=args.dry_run, results_dir=args.results_dir,
                     executor=args.executor, jobs=args.jobs, slurm_overrides=slurm, wait=not args.no_wait,
                     retry_failed=args.retry_failed, seeds=args.seeds, rows=args.rows)


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import destination, locate
    results = locate(args.results_dir)             # before pandas and torch load: a wrong folder fails at once
    from bench.report import write_report
    out = Path(args.out) if args.out else destination(results)
    from bench.configure import check_output_dir
    check_output_dir(out, "--out")
    if out != results and not args.out:
        print(f"report: {results} is not a suite's folder (no suite.json): the report goes to {out}", flush=True)
    write_report(results, out_dir=out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import main as compare
    return compare(args.suite_dirs, out=args.out, alpha=args.alpha, references=args.references)


def cmd_retime(args: argparse.Namespace) -> int:
    from bench import timing
    timing.retime(args.results_dir, device=args.device,
                  rounds=timing.ROUNDS if args.rounds is None else args.rounds,
                  warmup=timing.WARMUP_ROUNDS if args.warmup is None else args.warmup,
                  latency_reps=timing.LATENCY_REPS if args.latency_reps is None else args.latency_reps)
    return 0


def cmd_wandb_report(args: argparse.Namespace) -> int:
    from bench.wandb_report import save_report
    print(f"saved W&B report: {save_report(args.results_dir, args.entity, args.project)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one configured run (resumes if interrupted, skips if finished)")
    r.add_argument("configs", nargs="+", metavar="CONFIG.yaml ... key=value",
                   help="YAML files merged left to right (e.g. configs/quick-vgg.yaml configs/methods/pcn-target50.yaml),"
                        " then dotted key=value overrides (e.g. train.epochs=2 method.name=pcn)")
    r.add_argument("--rerun", action="store_true",
                   help="train again a run that already finished (its earlier summary is kept beside it)")
    r.set_defaults(fn=cmd_run, overrides=[])
    s = sub.add_parser("suite", help="run a grid of runs, then write the report")
    s.add_argument("config", help="suite YAML under configs/suites/")
    s.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    s.add_argument("--dry-run", action="store_true", help="print the grid and its estimated cost, run nothing")
    s.add_argument("--gpu-suite", default=None, metavar="SUITE.yaml",
                   help="run this suite instead where CUDA is available (make bench-cifar without PROFILE)")
    s.add_argument("--results-dir", default=None, help="where runs and the report go (default: results/<suite name>)")
    s.add_argument("--executor", default="local", choices=("local", "slurm", "debug"),
                   help="local: run here; slurm: one submitit job per run; debug: submitit in-process")
    s.add_argument("--jobs", type=whole_number(1), default=1,
                   help="local executor: runs at once, as separate processes sharing the CPU threads")
    s.add_argument("--partition", default=None, help="SLURM partition (suite file: slurm.partition)")
    s.add_argument("--gpus-per-job", type=whole_number(1), default=None,
                   help="GPUs per run; >1 trains each run with DDP")
    s.add_argument("--timeout-min", type=whole_number(1), default=None, help="SLURM time limit per run, minutes")
    s.add_argument("--array-parallelism", type=whole_number(1), default=None,
                   help="at most this many SLURM jobs at once")
    s.add_argument("--no-wait", action="store_true", help="slurm: submit and return; run `report` later")
    s.add_argument("--seeds", default=None, type=seed_list, metavar="S[,S...]",
                   help="run only these of the suite's seeds (e.g. --seeds 0: every row once before any repeat)")
    s.add_argument("--rows", default=None, type=label_list, metavar="LABEL[,LABEL...]",
                   help="run only these row labels (as `methods` lists them; the same runs as in the whole suite)")
    s.add_argument("--retry-failed", action="store_true",
                   help="also re-run cells that diverged (a plain re-invocation keeps them as diverged)")
    s.set_defaults(fn=cmd_suite)
    rep = sub.add_parser("report", help="tables and plots from the runs under a suite's results directory")
    rep.add_argument("results_dir", help="a suite's results folder (results/<suite>) or the runs/ folder in it; "
                                         "runs outside a suite (no suite.json) get their report under out/")
    rep.add_argument("--out", default=None, help="folder for the report (default: the suite's folder; runs "
                                                 "outside a suite: out/report-<folder name>)")
    rep.set_defaults(fn=cmd_report)
    c = sub.add_parser("compare", help="rank methods across suites: ranks per cell, Kendall's tau, "
                                        "Friedman + Nemenyi average ranks and a CD diagram")
    c.add_argument("suite_dirs", nargs="+", metavar="SUITE_DIR", help="two or more suite results folders")
    c.add_argument("--out", default="out/compare", help="folder for compare.md and cd.png (default: out/compare)")
    c.add_argument("--alpha", type=open_fraction, default=0.05, help="significance level of the tests (default: 0.05)")
    c.add_argument("--references", action="store_true",
                   help="also rank the full-size rows (no target: dense, ...) inside every target cell")
    c.set_defaults(fn=cmd_compare)
    t = sub.add_parser("retime", help="time every row's deployed architecture in one sitting -> RESULTS_DIR/retime.json "
                                      "(the report's speed table); run it on a quiet machine")
    t.add_argument("results_dir", help="the suite's results folder, e.g. results/cifar10-quick")
    t.add_argument("--rounds", type=whole_number(1), default=None,
                   help="timed rounds, each timing every architecture once (7)")
    t.add_argument("--warmup", type=whole_number(0), default=None, help="warm-up rounds first, dropped (1)")
    t.add_argument("--latency-reps", type=whole_number(1), default=None,
                   help="batch-1 forwards per latency sample (20)")
    t.add_argument("--device", default="auto", type=device_name, help="auto (CUDA where available), cpu, cuda, cuda:N")
    t.set_defaults(fn=cmd_retime)
    w = sub.add_parser("wandb-report", help="save a W&B report comparing a suite's runs (needs the network)")
    w.add_argument("results_dir", help="the suite's results folder, e.g. results/cifar10-quick")
    w.add_argument("--entity", required=True, help="W&B entity (user or team) that owns the project")
    w.add_argument("--project", default=None, help="W&B project (default: the runs' wandb.project)")
    w.set_defaults(fn=cmd_wandb_report)
    m = sub.add_parser("methods", help="list registered methods and the suites' labels (a method with options)")
    m.add_argument("name", nargs="?", default=None,
                   help="one method or suite label: its description, options and the command that runs it")
    m.add_argument("-v", "--verbose", action="store_true", help="also list each method's options")
    m.set_defaults(fn=cmd_methods)
    f = sub.add_parser("fields", help="what every history.csv column and summary.json key means")
    f.add_argument("file", nargs="?", choices=("history", "summary"), help="only this file's keys")
    f.add_argument("--markdown", action="store_true", help="as Markdown tables (for documentation)")
    f.set_defaults(fn=cmd_fields)
    sub.add_parser("models", help="list available models").set_defaults(fn=cmd_models)
    d = sub.add_parser("datasets", help="list registered datasets (classes, image shape, sizes)")
    d.add_argument("-v", "--verbose", action="store_true", help="also list each dataset's options")
    d.set_defaults(fn=cmd_datasets)
    # Overrides may come after flags (`suite X.yaml --dry-run train.epochs=2`).
    args, extra = p.parse_known_args(argv)
    try:
        bad = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if bad:
            words = list(sys.argv[1:] if argv is None else argv)
            for word in bad:             # `--train.epochs=2`, `--train.epochs 2`: the override as it should be written
                split_args(words[words.index(word):words.index(word) + 2] if word in words else [word])
            p.error(f"unrecognized arguments: {' '.join(bad)}")
        if extra:
            args.overrides = list(args.overrides) + extra
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
