#!/usr/bin/env bash
# The tokenizer campaign (python -m infinity.campaigns tokenizers) continued for a few minutes on a lent GPU, from
# the shipped weights; nothing else needs it. Three steps:
#
#   benchmarks/gpu_tokenizers.sh prepare               # here: data/gpu-corpus, every 25th training image (~5 MB)
#   benchmarks/gpu_tokenizers.sh run OUTDIR [MINUTES]  # on the GPU machine (carry data/gpu-corpus and
#                                                      # data/corpus/heldout): segments until MINUTES (default 8)
#   benchmarks/gpu_tokenizers.sh collect OUTDIR        # here: the shipped files and the ledger rows it wrote
#
# On the GPU the campaign starts from the shipped files at the step the ledger gives them (runs/ does not travel),
# evaluates on the same held-out photographs and ships only what beats them, as here; `collect` copies what it
# shipped into assets/tokenizers/, appends its ledger rows, and drops the local run folders it overtook (the next
# local run then resumes from the shipped files).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: benchmarks/gpu_tokenizers.sh prepare | run OUTDIR [MINUTES] | collect OUTDIR" >&2; exit 2; }
[[ $# -ge 1 ]] || usage

case $1 in
prepare)
    [[ -d data/corpus/train ]] || { echo "no data/corpus/train: python -m infinity.data.corpus --out data/corpus" >&2; exit 2; }
    rm -rf data/gpu-corpus
    find data/corpus/train -type f \( -name '*.jpg' -o -name '*.png' \) | sort | awk 'NR % 25 == 0' |
        while read -r f; do mkdir -p "data/gpu-corpus/$(dirname "${f#data/corpus/train/}")"; cp "$f" "data/gpu-corpus/${f#data/corpus/train/}"; done
    du -sh data/gpu-corpus data/corpus/heldout
    ;;
run)
    [[ $# -ge 2 && $# -le 3 ]] || usage
    out=$2 minutes=${3:-8}
    mkdir -p "$out"
    cp benchmarks/results/ledger_tokenizers.jsonl "$out/ledger_before.jsonl"
    python -m infinity.campaigns tokenizers --minutes "$minutes" --threads 8 --data data/gpu-corpus \
        2>&1 | tee "$out/campaign.log"
    cp benchmarks/results/ledger_tokenizers.jsonl "$out/ledger_after.jsonl"
    cp assets/tokenizers/general-d*.safetensors "$out/"
    ;;
collect)
    [[ $# -eq 2 ]] || usage
    python - "$2" <<'EOF'
import shutil, sys
from pathlib import Path
from infinity.campaigns.ledger import ledger_path, read_rows
from infinity.campaigns.tokenizers import TokenizerPlan, run_position

out, plan = Path(sys.argv[1]), TokenizerPlan()
before, after = read_rows(out / "ledger_before.jsonl"), read_rows(out / "ledger_after.jsonl")
if after[:len(before)] != before or read_rows(ledger_path("tokenizers")) != before:
    sys.exit("the ledger here changed since the GPU run started: merge its rows by hand")
new = after[len(before):]
with open(ledger_path("tokenizers"), "a") as f:
    f.writelines(line + "\n" for line in (out / "ledger_after.jsonl").read_text().splitlines()[len(before):])
for bits in plan.bits:
    shipped = [r for r in new if r["run"] == plan.run_name(bits) and r.get("shipped")]
    if shipped:
        shutil.copy(out / plan.shipped_file(bits).name, plan.shipped_file(bits))
        if run_position(plan, bits, before)[0] < shipped[-1]["step"]:
            shutil.rmtree(plan.run_dir(bits), ignore_errors=True)
        print(f"{plan.run_name(bits)}: shipped step {shipped[-1]['step']} ({shipped[-1]['psnr_db']} dB)")
print(f"{len(new)} ledger rows added")
EOF
    ;;
*)
    usage
    ;;
esac
