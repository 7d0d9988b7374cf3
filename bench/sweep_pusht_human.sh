#!/bin/bash
# Recipe sweep on the human PushT data (RESULTS.md, issue 15): train several recipes AT ONCE (one process each,
# made for a GPU machine with many CPU cores), each stopped by a wall-clock timeout (the last checkpoint, at a
# multiple of 1000 iterations, is evaluated), then evaluate each on 50 validation seeds in 2 CPU processes.
# usage: bash bench/sweep_pusht_human.sh ITERS TRAIN_TIMEOUT_S EVAL_EPISODES_PER_PROC DEVICE SET [DATASET]
#   SET 1: heads / history / shifts / width;  SET 2: width-32 variants (shift 8, 4x4 token grid);
#   SET 4: width 32 / 4x4 grid again (seed 2), width 64, a 6x6 grid;  SET 3: how long to commit to a chunk (chunk 16 vs 32, each evaluated at several n_action_steps), head width, width 32
#   SET 5: the relative-actions preset (twice, two seeds) against EMA 0.999, 2 observation steps, lr 1e-3, a 256-wide LM, +-6 px shifts
#   SET 6: the preset, keypoints from the finer map, shifts that move state and actions with the image, both; two seeds each
#   SET 7: shifts that move state and actions with the image (seeds 1337, 2, 3), the preset (seed 3)
#   (sets 6 and 7 use --fine_keypoints / --augment_shift_units, which did not help and were removed: run them at commit 5ea74da)
#   (sets 5-7 ran the preset with its 32-wide CNN, before it became 64 wide: at later commits add --cnn_width=32 to common)
# EVAL_WRAPPER (env): a script run instead of eval.py, with eval.py's arguments, for the recipes in W (val_w*.json)
# EVAL_PROCS (env, default 2): evaluation processes per recipe, each EVAL_EPISODES_PER_PROC episodes on the next validation seeds
# The figures in RESULTS.md: `bash bench/sweep_pusht_human.sh 12000 360 25 cuda 1 .gpu/pusht_human_v30` and
# `... 8000 215 25 cuda 2 ...` on an H100 machine (16 cores), the dataset a copy of ../shared/datasets/pusht_human_v30.
ITERS=${1:-10000}; TT=${2:-360}; EP=${3:-25}; DEV=${4:-cuda}; SET=${5:-1}; DATA=${6:-../shared/datasets/pusht_human_v30}
OUT=${OUT:-/tmp/sweep_out}; mkdir -p $OUT/runs
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl SDL_VIDEODRIVER=dummy
common="--task=pusht_human --dataset=$DATA --device=$DEV --max_iters=$ITERS --eval_interval=0 --final_eval_episodes=0 --ckpt_interval=1000 --log_interval=100"
declare -A R N W  # N: the n_action_steps values to evaluate each recipe at ('' = the checkpoint's)
if [ "$SET" = 1 ]; then
  R[A_mlp_n1_s0]="--action_head_type=mlp --n_obs_steps=1 --augment_shift=0"
  R[B_mlp_n1_s4]="--action_head_type=mlp --n_obs_steps=1 --augment_shift=4"
  R[C_mlp_n2_s4]="--action_head_type=mlp --n_obs_steps=2 --augment_shift=4"
  R[D_diff_n2_s4]="--action_head_type=diffusion --n_obs_steps=2 --augment_shift=4"
  R[E_mlp_n1_s4_w32]="--action_head_type=mlp --n_obs_steps=1 --augment_shift=4 --cnn_width=32"
  R[F_diff_n1_s4_w32]="--action_head_type=diffusion --n_obs_steps=1 --augment_shift=4 --cnn_width=32"
elif [ "$SET" = 3 ]; then
  R[B_c16]="--action_head_type=mlp --augment_shift=4";                                     N[B_c16]="8 12 16"
  R[J_c32]="--action_head_type=mlp --augment_shift=4 --action_chunk_size=32 --n_action_steps=16"; N[J_c32]="16 24"
  R[K_c32_w32g4]="--action_head_type=mlp --augment_shift=4 --action_chunk_size=32 --n_action_steps=16 --cnn_width=32 --vision_grid=4"; N[K_c32_w32g4]="16 24"
  R[L_c16_w32g4]="--action_head_type=mlp --augment_shift=4 --cnn_width=32 --vision_grid=4";  N[L_c16_w32g4]="8 12"
  R[M_c16_head1024]="--action_head_type=mlp --augment_shift=4 --head_hidden_dim=1024";       N[M_c16_head1024]="8 12"
  R[P_c32_diff]="--action_head_type=diffusion --augment_shift=4 --action_chunk_size=32 --n_action_steps=16"; N[P_c32_diff]="16"
elif [ "$SET" = 5 ]; then
  R[S0_preset]=""
  R[S0b_preset_seed2]="--seed=2"
  R[S1_ema999]="--ema_decay=0.999"
  R[S2_obs2]="--n_obs_steps=2"
  R[S3_lr1e3]="--learning_rate=1e-3"
  R[S4_lm256]="--hidden_size=256"
  R[S5_shift6]="--augment_shift=6"
elif [ "$SET" = 6 ]; then
  for s in 1337 2; do
    R[T0_preset_$s]="--seed=$s";                                          W[T0_preset_$s]=1
    R[T1_finekp_$s]="--seed=$s --fine_keypoints=True"
    R[T2_worldshift_$s]="--seed=$s --augment_shift_units=5.3333"
    R[T3_both_$s]="--seed=$s --fine_keypoints=True --augment_shift_units=5.3333"
  done
elif [ "$SET" = 7 ]; then
  R[T2_worldshift_1337]="--augment_shift_units=5.3333"; R[T2_worldshift_2]="--seed=2 --augment_shift_units=5.3333"
  R[T2_worldshift_3]="--seed=3 --augment_shift_units=5.3333"; R[T0_preset_3]="--seed=3"
elif [ "$SET" = 4 ]; then
  R[L2_c16_w32g4_seed2]="--action_head_type=mlp --augment_shift=4 --cnn_width=32 --vision_grid=4 --seed=2"
  R[Q_c16_w64g4]="--action_head_type=mlp --augment_shift=4 --cnn_width=64 --vision_grid=4"
  R[R_c16_w32g6]="--action_head_type=mlp --augment_shift=4 --cnn_width=32 --vision_grid=6"
else
  R[G_mlp_n1_s4_w32]="--action_head_type=mlp --n_obs_steps=1 --augment_shift=4 --cnn_width=32"
  R[H_mlp_n1_s8_w32]="--action_head_type=mlp --n_obs_steps=1 --augment_shift=8 --cnn_width=32"
  R[I_mlp_n1_s4_w32_g4]="--action_head_type=mlp --n_obs_steps=1 --augment_shift=4 --cnn_width=32 --vision_grid=4"
fi
t0=$(date +%s)
for k in "${!R[@]}"; do
  OMP_NUM_THREADS=2 timeout $TT python3 train_bc.py $common ${R[$k]} --out_dir=$OUT/runs/$k > $OUT/runs/$k.train.log 2>&1 &
done
wait
echo "training done after $(( $(date +%s) - t0 )) s"
for k in "${!R[@]}"; do
  tail -c 600 $OUT/runs/$k.train.log | tr '\r' '\n' | tail -3
  tail -1 $OUT/runs/$k/log.jsonl
  for n in ${N[$k]:-0}; do for s in $(seq 0 $(( ${EVAL_PROCS:-2} - 1 ))); do
    OMP_NUM_THREADS=1 timeout 200 python3 eval.py --ckpt=$OUT/runs/$k --episodes=$EP --start_seed=$((100000 + s*EP)) --videos=0 \
      --n_action_steps=$n --out=$OUT/runs/$k/val_n${n}_$s.json > $OUT/runs/$k.eval_n${n}_$s.log 2>&1 &
  done; done
  if [ -n "${W[$k]}" ] && [ -n "$EVAL_WRAPPER" ]; then for s in $(seq 0 $(( ${EVAL_PROCS:-2} - 1 ))); do
    OMP_NUM_THREADS=1 timeout 200 python3 $EVAL_WRAPPER --ckpt=$OUT/runs/$k --episodes=$EP --start_seed=$((100000 + s*EP)) \
      --videos=0 --out=$OUT/runs/$k/val_w_$s.json > $OUT/runs/$k.eval_w_$s.log 2>&1 &
  done; fi
done
wait
echo "eval done after $(( $(date +%s) - t0 )) s"
python3 - <<PY
import json, glob, os
for d in sorted(glob.glob("$OUT/runs/*/")):
    log = [json.loads(l) for l in open(d + "log.jsonl")] if os.path.exists(d + "log.jsonl") else []
    last = [r for r in log if 'loss' in r][-1:] or [{}]
    for nas in sorted({os.path.basename(f)[4:].rsplit('_', 1)[0] for f in glob.glob(d + "val_*.json")}):
        ms = [json.load(open(f)) for f in sorted(glob.glob(d + f"val_{nas}_*.json"))]
        n = sum(m['n_episodes'] for m in ms)
        succ = sum(m['success_rate'] * m['n_episodes'] for m in ms) / max(n, 1)
        rew = sum(m['avg_max_reward'] * m['n_episodes'] for m in ms) / max(n, 1)
        print(os.path.basename(d.rstrip('/')), 'eval', nas, 'iter', last[0].get('iter'), 'time', round(last[0].get('time', 0)),
              'loss', last[0].get('loss'), 'episodes', n, 'success', round(succ, 3), 'maxrew', round(rew, 3))
PY
cd $OUT/runs && for k in "${!R[@]}"; do rm -f $k/training_state*; tar czf $OUT/$k.tgz $k $k.*.log; done; cd $OUT && rm -rf runs && ls -la
