"""Weights & Biases logging that never blocks a run and never loses it.

Local files are always written first; every W&B call is guarded, and a failure
turns logging off with one warning. Mode: $WANDB_MODE if set, else the config's
(`offline` by default: runs land under the run directory and `wandb sync` uploads
them later). Online initialisation waits at most ONLINE_INIT_TIMEOUT_S (or
$WANDB_INIT_TIMEOUT); when it fails the run is logged offline instead, the
warning names the `wandb sync` command that uploads it, and later runs of the same
process go offline at once. Runs carry `group` (the suite), `job_type` and
top-level config keys `method`, `model`, `target`, `seed` so the W&B UI can group
and compare methods; `define_metric` gives test accuracy its best and last values
in the run summary and the training wall-clock (`train_wall_s_cum`) as its x-axis.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

from bench.config import RunConfig, flatten, to_dict


ONLINE_INIT_TIMEOUT_S = 10.0   # wandb's own default is 90 s per run
PREFLIGHT_TIMEOUT_S = 5.0      # one HTTP request to the server before an online init
_online_failed = False          # set once an online init failed in this process


def wandb_mode(cfg: RunConfig) -> str:
    return os.environ.get("WANDB_MODE") or cfg.wandb.mode


def define_metrics(run: Any) -> None:
    """The summaries and axes the epoch metrics declare (bench.metrics.core: best and last
    test accuracy, lowest and last training loss, accuracy over the training wall-clock)."""
    from bench.metrics import EPOCH, declared     # torch: not needed to probe the server (wandb-report)
    for m in declared(EPOCH):
        if m.wandb_summary:
            run.define_metric(m.name, **({"step_metric": m.wandb_step} if m.wandb_step else {}),
                              summary=m.wandb_summary)


def server_unreachable(base_url: str) -> Optional[str]:
    """Why the W&B server cannot be reached at all (refused, no route, DNS, timeout), or
    None. Any HTTP answer, even an error status, and any TLS problem count as reachable:
    wandb.init, with its own timeout, decides those. Proxies from the environment apply."""
    import ssl
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=PREFLIGHT_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as e:
        return None if isinstance(e.reason, ssl.SSLError) else f"{base_url}: {e.reason}"
    except (OSError, ValueError) as e:    # a timeout or reset outside URLError; a malformed URL
        return f"{base_url}: {type(e).__name__}: {e}"
    return None


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
        args = dict(project=cfg.wandb.project, entity=cfg.wandb.entity or None,
                    group=cfg.wandb.group or None, job_type=job_type or cfg.wandb.job_type,
                    tags=cfg.wandb.tags or None, name=name or run_id, id=run_id, resume="allow",
                    dir=str(run_dir), config=config, reinit="finish_previous")
        try:
            self.run = self._init(args)
            define_metrics(self.run)
        except Exception as e:  # noqa: BLE001 - W&B must never take a run down
            self._fail("init", e)

    def _init(self, args: dict) -> Any:
        """wandb.init in the configured mode; online with a short timeout, falling back to
        offline (same run id, so `wandb sync` uploads it as this run)."""
        global _online_failed
        import wandb
        if self.mode != "online":
            return wandb.init(mode=self.mode, settings=wandb.Settings(console="off", silent=True), **args)
        why = "W&B was unreachable earlier in this process"
        unreachable = None if _online_failed else server_unreachable(wandb.setup().settings.base_url)
        if unreachable:
            _online_failed, why = True, f"W&B server unreachable ({unreachable})"
        if not _online_failed:
            timeout = {} if os.environ.get("WANDB_INIT_TIMEOUT") else {"init_timeout": ONLINE_INIT_TIMEOUT_S}
            try:
                return wandb.init(mode="online", settings=wandb.Settings(console="off", silent=True, **timeout),
                                  **args)
            except Exception as e:  # noqa: BLE001 - unreachable server, bad key, timeout: go offline
                _online_failed = True
                wandb.teardown()     # the failed attempt holds the run id in wandb's service
                why = f"W&B online init failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        run = wandb.init(mode="offline", settings=wandb.Settings(console="off", silent=True), **args)
        self.mode = "offline"
        print(f"warning: {why}; this run is logged offline: upload it later with "
              f"`wandb sync {run.settings.sync_dir}`", file=sys.stderr)
        return run

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
        """Write the run's summary and close it; a diverged run is marked failed in W&B."""
        if self.run is None:
            return
        try:
            if summary:
                for k, v in flatten(summary).items():
                    if isinstance(v, (int, float, str, bool)) or v is None:
                        self.run.summary[k] = v
            self.run.finish(exit_code=1 if (summary or {}).get("status") == "diverged" else None)
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)
        self.run = None
