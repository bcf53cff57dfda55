"""Per-scale CFG schedules on the shipped embedded model, scored as the embedded campaign scores (JSON lines on stdout;
benchmarks/results/embedded_cfg_schedules.json gathers them).  PYTHONPATH=. python benchmarks/embedded_cfg_schedules.py cfg1-early cfg1-first2 cfg-ramp"""
import dataclasses, json, sys, time, torch
torch.set_num_threads(1)
from infinity import InfinityPipeline
from infinity.campaigns.embedded import EmbeddedPlan, scores_row
pipe = InfinityPipeline.from_pretrained(device="cpu", dtype=torch.float32)
base = pipe.defaults
configs = {
  "cfg2.5": dict(cfg=2.5, cfg_schedule=None),
  "cfg1-early": dict(cfg_schedule=[1, 1, 1, 2.5, 2.5, 2.5, 2.5]),
  "cfg1-first2": dict(cfg_schedule=[1, 1, 2.5, 2.5, 2.5, 2.5, 2.5]),
  "cfg-late": dict(cfg_schedule=[1, 1, 1, 1, 1.5, 2.5, 2.5]),
  "cfg1.5": dict(cfg=1.5, cfg_schedule=None),
  "cfg-ramp": dict(cfg_schedule=[1, 1.25, 1.5, 2, 2.5, 3, 3]),
}
for name in sys.argv[1:]:
    pipe.defaults = dataclasses.replace(base, **configs[name])
    t = time.time()
    row = scores_row(pipe, EmbeddedPlan())
    row.update(config=name, defaults=dataclasses.asdict(pipe.defaults), seconds=round(time.time() - t))
    print(json.dumps(row), flush=True)
