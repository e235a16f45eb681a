"""Weights & Biases logging that can never lose a run.

Local files are always written first; every W&B call is guarded, and a failure
turns logging off with one warning. Mode: $WANDB_MODE if set, else the config's
(`offline` by default: runs land under the run directory and `wandb sync` uploads
them later). Runs carry `group` (the suite), `job_type` and top-level config keys
`method`, `model`, `target`, `seed` so the W&B UI can group and compare methods.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

from bench.config import RunConfig, flatten, to_dict


def wandb_mode(cfg: RunConfig) -> str:
    return os.environ.get("WANDB_MODE") or cfg.wandb.mode


class WandbLogger:
    def __init__(self, cfg: RunConfig, run_dir: Path, run_id: str, target: Optional[float],
                 job_type: Optional[str] = None, name: Optional[str] = None, enabled: bool = True):
        self.run = None
        self.mode = wandb_mode(cfg) if enabled else "disabled"
        if self.mode == "disabled":
            return
        config = {"method": cfg.label or cfg.method.name, "method_name": cfg.method.name,
                  "model": cfg.model.name, "target": target,
                  "seed": cfg.seed, **flatten(to_dict(cfg))}
        try:
            import wandb
            self.run = wandb.init(
                project=cfg.wandb.project, entity=cfg.wandb.entity or None,
                group=cfg.wandb.group or None, job_type=job_type or cfg.wandb.job_type,
                tags=cfg.wandb.tags or None, name=name or run_id, id=run_id, resume="allow",
                dir=str(run_dir), mode=self.mode, config=config, reinit="finish_previous",
                settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # noqa: BLE001 - W&B must never take a run down
            self._fail("init", e)

    def _fail(self, what: str, e: Exception) -> None:
        print(f"warning: W&B {what} failed ({type(e).__name__}: {e}); local files are complete, "
              f"continuing without W&B", file=sys.stderr)
        self.run = None

    def log(self, row: dict[str, Any], step: Optional[int] = None) -> None:
        if self.run is None:
            return
        try:
            self.run.log(row, step=step)
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def log_media(self, items: dict[str, Any]) -> None:
        """Tables and images: values are ('table', DataFrame) or ('image', path)."""
        if self.run is None:
            return
        try:
            import wandb
            out = {}
            for key, (kind, value) in items.items():
                out[key] = wandb.Table(dataframe=value) if kind == "table" else wandb.Image(str(value))
            self.run.log(out)
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def finish(self, summary: Optional[dict[str, Any]] = None) -> None:
        if self.run is None:
            return
        try:
            if summary:
                for k, v in flatten(summary).items():
                    if isinstance(v, (int, float, str, bool)) or v is None:
                        self.run.summary[k] = v
            self.run.finish()
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)
        self.run = None
