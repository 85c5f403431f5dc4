source .gpu/setup.sh
t() { echo "== $(date +%T) $*"; }
B="python3 -m harness.bench.train --engine mcore --preset cosmos-4b --seq 12800 --tp 2 --steps 6 --warmup 2"
for proto in default Simple LL128; do
  mkdir -p $OUT/proto-$proto
  t $proto
  if [ $proto = default ]; then env -u NCCL_PROTO timeout 170 $B --out $OUT/proto-$proto > $OUT/proto-$proto/log 2>&1
  else NCCL_PROTO=$proto timeout 170 $B --out $OUT/proto-$proto > $OUT/proto-$proto/log 2>&1; fi
  echo rc $?; grep -E "Error|Traceback" $OUT/proto-$proto/log | tail -3
  python3 -c "import json,glob;d=json.load(open(glob.glob('$OUT/proto-$proto/*.json')[0]));print('$proto', d['median_step_s'], d['mfu'], d.get('nccl_env'))" 2>&1 | tail -1
done
t done
