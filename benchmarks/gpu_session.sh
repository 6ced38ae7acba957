#!/usr/bin/env bash
# What the next GPU lease should measure, in order, each step under its own time limit (~560 s in
# all, inside one 600 s device command).  From the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_session.sh
#
# 1. 3D n = 1e6, alone, with XLA's optimized HLO dumped: if one fusion is still slow to compile
#    (the fourteenth session's "input_reduce_fusion.84", 5 minutes), its text is copied to
#    $OUT/slow_fusion.txt.
# 2. The batch scale (`sdot_jax/geometry/batches.py`): the CPU's sizes (1) against the default
#    (16) and 64, at 2D 1e5 and 3D 1e5.
# 3. float32 at 3D 1e5 and 2D 1e6 (tols above what float32 resolves there).
# 4. A vmapped batch of 256 problems of n = 100 against a Python loop.
# The device tool brings back at most 8 files from $OUT: this writes 7 (the logs hold each case's row).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
cd benchmarks || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv | tee "$OUT/gpu.txt"

XLA_FLAGS="--xla_dump_to=/tmp/xla_dump --xla_dump_hlo_as_text" \
    timeout 220 python3 device.py --cases 3:1e6 2>&1 | tee "$OUT/step1.log"
slow=$(grep -o 'Compiling module [a-z_]*\.[0-9]*' "$OUT/step1.log" | head -1 | awk '{print $3}')
if [ -n "$slow" ]; then  # the fusion's instruction and the computation it calls
    python3 - "$slow" /tmp/xla_dump/*after_optimizations.txt > "$OUT/slow_fusion.txt" <<'PY'
import re, sys
name, files = sys.argv[1], sys.argv[2:]
for path in files:
    lines = open(path).read().splitlines()
    hit = [line for line in lines if re.search(rf"%{re.escape(name)} = ", line)]
    if not hit:
        continue
    print(path, *hit, sep="\n")
    called = re.search(r"calls=%([\w.\-]+)", hit[0])
    start = next((i for i, line in enumerate(lines)
                  if called and line.lstrip().startswith(f"%{called.group(1)} ")), None)
    if start is None:
        print("(the computation it calls was not found)")
        break
    end = next((i for i in range(start, len(lines)) if lines[i].strip() == "}"), len(lines) - 1)
    print(*lines[start:end + 1], sep="\n")
    break
else:
    print(f"no instruction named {name} in the dump: XLA names its modules otherwise; look for the"
          " largest reduce fusions in the optimized HLO instead")
PY
else
    echo "no slow compilation reported in step 1" > "$OUT/slow_fusion.txt"
fi
rm -rf /tmp/xla_dump

timeout 150 python3 device.py --cases 2:1e5 2:1e5:1 2:1e5:64 3:1e5 3:1e5:1 --deadline 110 \
    2>&1 | tee "$OUT/step2.log"
# float32 resolves ~0.12 eps n^(2/d) (2D 1e6: ~1.4e-2 extrapolated, 3D 1e5: ~3e-5): tols above that
timeout 60 python3 device.py --cases 3:1e5 --dtype float32 --tol 1e-3 \
    2>&1 | tee "$OUT/step3a.log"
timeout 70 python3 device.py --cases 2:1e6 --dtype float32 --tol 5e-2 \
    2>&1 | tee "$OUT/step3b.log"
timeout 50 python3 gradients.py --batch 256 --n 100 2>&1 | tee "$OUT/step4.log"
