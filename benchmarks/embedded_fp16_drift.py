"""The embedded model with fp32 weights against the same weights rounded to fp16: adherence, seed spread, tokenizer
scores and image differences on the same scenes and seeds.  PYTHONPATH=. python benchmarks/embedded_fp16_drift.py"""
import copy, json, torch, numpy as np
torch.set_num_threads(1)
from infinity import InfinityPipeline
from infinity.campaigns.embedded import EmbeddedPlan, scores_row
from infinity.eval.shapes import evaluate_tokenizer, evaluation_scenes
from infinity.data.shapes import caption
from infinity.precision import cpu_model
pipe = InfinityPipeline.from_pretrained(device="cpu", dtype=torch.float32)
plan = EmbeddedPlan()
sched = pipe.schedule("1:1")
scenes = evaluation_scenes({1: 31, 2: 50, 3: 50})
out = {}
for name in ("fp32", "fp16"):
    if name == "fp16":
        for m in (pipe.transformer, pipe.tokenizer):
            m.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in m.state_dict().items()})
    row = scores_row(pipe, plan)
    tok = evaluate_tokenizer(pipe.tokenizer, sched, scenes).to_dict()
    imgs = [np.asarray(pipe(caption(s), seed=i).image).astype(np.int16) for i, s in enumerate(scenes[:20])]
    out[name] = {"pipeline_at_defaults": row, "tokenizer_on_scenes": tok, "_imgs": imgs}
diff = [float(np.abs(a - b).mean()) for a, b in zip(out["fp32"].pop("_imgs"), out["fp16"].pop("_imgs"))]
out["image_difference_fp16_vs_fp32"] = {"prompts": 20, "mean_abs_0_255": round(float(np.mean(diff)), 3),
                                        "max_abs_mean_0_255": round(float(np.max(diff)), 3)}
out["what"] = "assets/embedded (transformer and tokenizer) with fp32 weights against the same weights rounded to fp16, computed in fp32; the same held-out scenes and seeds"
import os
out["cpu"] = cpu_model()
out["load_average"] = [round(v, 2) for v in os.getloadavg()]
json.dump(out, open("benchmarks/results/embedded_fp16_drift.json", "w"), indent=1)
print(json.dumps(out)[:1500])
