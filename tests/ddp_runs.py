"""Several runs in one torchrun launch, one after another, for tests/test_distributed.py.

Starting two ranks (torch, timm and the harness imported twice) costs more than a tiny
run, so the every-method DDP test trains all its runs in one launch. argv[1] is a JSON
list of override lists for configs/smoke.yaml. A run that raises leaves its traceback in
`<output_dir>/error.<rank>.txt` and the next run starts; a rank left waiting in a
collective by the other's failure ends the launch at the test's timeout instead."""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.configure import load_config  # noqa: E402
from bench.train import train  # noqa: E402

specs = json.loads(Path(sys.argv[1]).read_text())
for i, overrides in enumerate(specs):
    out = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")))
    print(f"run {i + 1}/{len(specs)}: {out}", flush=True)
    try:
        train(load_config(str(REPO / "configs/smoke.yaml"), overrides), log=lambda s: None)
    except Exception:  # noqa: BLE001 - one failed run must not hide the others' results
        out.mkdir(parents=True, exist_ok=True)
        (out / f"error.{os.environ.get('RANK', '0')}.txt").write_text(traceback.format_exc())
