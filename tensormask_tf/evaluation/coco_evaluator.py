"""COCO box and mask AP of TensorMask detections, with pycocotools.

TensorMask's masks are relative to each detection's *window*, not to its box
(Model Garden's `COCOEvaluator` assumes box-relative masks), so detections
are mapped back to the original image here: boxes and windows are divided by
the resize scale, and every mask is pasted into the original image inside its
window (`paste_cropped_masks`: only over its reach) and encoded as RLE
from its crop. The results are also
written as COCO-format JSON on request.
"""

from collections.abc import Sequence
import contextlib
import io
import json

from absl import logging
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from tensormask_tf.modeling import detection_generator
from tensormask_tf.ops import cropped_masks

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_results(image_id: int, detections: dict,
                 category_ids: Sequence[int] | None = None) -> list[dict]:
  """COCO results entries of one image's `detections_in_original_image`:
  category ids (class k is category_ids[k], or k + 1 when None), [x, y, w,
  h] boxes, RLE masks (`CroppedMasks` or [n, H, W] bool) when present."""
  ids = detection_generator.category_ids_of(detections["classes"],
                                            category_ids)
  results = []
  rles = None
  if detections["masks"] is not None:
    rles = cropped_masks.as_cropped(detections["masks"]).to_rle()
  for d, (ymin, xmin, ymax, xmax) in enumerate(detections["boxes"].tolist()):
    result = {
        "image_id": image_id,
        "category_id": int(ids[d]),
        "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
        "score": float(detections["scores"][d]),
    }
    if rles is not None:
      result["segmentation"] = rles[d]
    results.append(result)
  return results


class WindowMaskCocoEvaluator:
  """Accumulates detections of a dataset and computes COCO metrics."""

  def __init__(self, annotation_file: str, include_mask: bool = True,
               category_ids: Sequence[int] | None = None):
    """Initializes the evaluator.

    Args:
      annotation_file: COCO instances JSON of the evaluated images.
      include_mask: whether to compute mask AP as well as box AP.
      category_ids: the category id of each model class 0..K-1
        (`tensormask_config.category_ids`); None: class k is id k + 1.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools chatter
      self._coco = coco_api.COCO(annotation_file)
    self._include_mask = include_mask
    self._category_ids = None if category_ids is None else list(category_ids)
    self._results = []
    self._image_ids = set()

  def reset_states(self):
    self._results = []
    self._image_ids = set()

  def update_state(self, predictions: dict):
    """Adds one batch of `generate_detections` outputs; AP is computed
    over the images added, with or without detections.

    Args:
      predictions: numpy or tensors; the detections (with
        "detection_mask_sides" and "detection_mask_values", each image's
        masks at their own side, when masks are evaluated: only one image's
        masks at a time are ever pasted) plus "source_id" [N]
        (COCO image ids) and "image_info" [N, 4, 2] (Model Garden's:
        original size, scaled size, scale, offset).
    """
    for image in detection_generator.unbatch_detections(predictions):
      image_id = image["source_id"]
      if int(image_id) in self._image_ids:
        # Its detections again would count as duplicates (false positives).
        logging.warning("COCO evaluation: image %d was already evaluated; "
                        "its repeat is left out", int(image_id))
        continue
      self._image_ids.add(int(image_id))
      found = detection_generator.detections_in_original_image(
          image, image["image_info"], include_masks=self._include_mask)
      self._results.extend(coco_results(int(image_id), found,
                                        self._category_ids))

  def write_results(self, path: str):
    """Writes the accumulated detections as COCO results JSON."""
    with open(path, "w") as f:
      json.dump(self._results, f)

  def result(self) -> dict[str, float]:
    """{"box_AP", "box_AP50", ..., "mask_AP", ...}; zeros without results."""
    metrics = {}
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
      if iou_type == "segm" and not self._include_mask:
        continue
      if not self._results:
        metrics.update({f"{prefix}_{m}": 0.0 for m in _METRICS})
        continue
      # Copies without the other type's field: loadRes takes a result's
      # area from its bbox when it has one (for segm it must be the mask's:
      # it sorts detections into APs/APm/APl), and it adds fields to the
      # entries it is given, which write_results must not see.
      other = "segmentation" if iou_type == "bbox" else "bbox"
      results = [{k: v for k, v in r.items() if k != other}
                 for r in self._results]
      with contextlib.redirect_stdout(io.StringIO()):
        detections = self._coco.loadRes(results)
        evaluation = cocoeval.COCOeval(self._coco, detections, iou_type)
        # The images evaluated, not every image of the annotation file (a
        # partial evaluation would count the others' objects as missed).
        evaluation.params.imgIds = sorted(self._image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
      metrics.update({f"{prefix}_{m}": float(v)
                      for m, v in zip(_METRICS, evaluation.stats[:6])})
    return metrics
