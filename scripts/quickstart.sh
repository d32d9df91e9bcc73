#!/usr/bin/env bash
# The main job, one command on a fresh machine (CPU is enough):
#   set up .venv/ -> generate the synthetic shapes dataset (data/shapes) ->
#   train tensormask_shapes and evaluate it (COCO mask and box AP) ->
#   export a SavedModel -> predict on 4 validation images with it and write
#   PNG pictures of the masks (and predictions.png, all four side by side:
#   the README's picture).
# Outputs go to runs/tensormask_shapes/ (a previous run there is replaced).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
source scripts/venv.sh
ensure_venv
python=.venv/bin/python
run_dir=runs/tensormask_shapes

if [ ! -f data/shapes/val.json ] || [ ! -f data/shapes/train.json ]; then
  echo "[quickstart] generating the shapes dataset in data/shapes"
  "$python" scripts/create_shapes_dataset.py --output_dir=data/shapes \
    --num_train=1000 --num_val=100 2> data-shapes.log || {
      cat data-shapes.log >&2; exit 1; }
  rm -f data-shapes.log
fi

echo "[quickstart] training tensormask_shapes and evaluating it ($run_dir/train.log)"
rm -rf "$run_dir" && mkdir -p "$run_dir"
# The full log goes to train.log; progress lines (with ETA) to the console.
"$python" scripts/train.py --flagfile=configs/tensormask_shapes.flags \
  --model_dir="$run_dir" > "$run_dir/train.out" \
  2> >(tee "$run_dir/train.log" | grep --line-buffered "images/s" >&2) || {
    tail -n 30 "$run_dir/train.log" >&2; exit 1; }
grep "COCO mask AP" "$run_dir/train.out" > "$run_dir/summary.txt" || {
  tail -n 30 "$run_dir/train.log" >&2; exit 1; }
cat "$run_dir/summary.txt"

echo "[quickstart] exporting a SavedModel to $run_dir/saved_model/1"
"$python" scripts/export_saved_model.py --model_dir="$run_dir" \
  --export_dir="$run_dir/saved_model" --version=1 >> "$run_dir/train.out" \
  2>> "$run_dir/train.log" || { tail -n 30 "$run_dir/train.log" >&2; exit 1; }

echo "[quickstart] predicting on 4 validation images with the SavedModel"
"$python" scripts/predict.py --saved_model="$run_dir/saved_model/1" \
  --image='data/shapes/val/val_00000[1-4].png' \
  --output_dir="$run_dir/predictions" --overview="$run_dir/predictions.png" \
  2>> "$run_dir/train.log"

echo "[quickstart] done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s:"
cat "$run_dir/summary.txt"
echo "pictures: $run_dir/predictions.png, $run_dir/predictions/*.png; TensorBoard: tensorboard --logdir $run_dir"
