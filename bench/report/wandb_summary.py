"""The report's W&B summary run: the runs table and the plots, logged in the suite's
group (same project and mode as its runs) so the W&B project shows the comparison next
to the runs."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def log_to_wandb(group: str, runs: pd.DataFrame, plots: list[Path], out: Path, wandb_cfg: dict) -> None:
    """A summary run in the suite's group (same project and mode as its runs): the runs
    table and the plots, so the W&B project shows the comparison next to the runs."""
    import os
    mode = os.environ.get("WANDB_MODE") or wandb_cfg.get("mode", "offline")
    if mode == "disabled":
        return
    try:
        import wandb
        run = wandb.init(project=wandb_cfg.get("project", "compress-bench"), entity=wandb_cfg.get("entity") or None,
                         group=group, job_type="report", name=f"{group}-report",
                         dir=str(out), mode=mode, reinit="finish_previous",
                         settings=wandb.Settings(console="off", silent=True))
        run.log({"runs": wandb.Table(dataframe=runs), **{p.stem: wandb.Image(str(p)) for p in plots}})
        run.finish()
    except Exception as e:  # noqa: BLE001 - the report files are already written
        print(f"warning: W&B summary run failed ({type(e).__name__}: {e})")
