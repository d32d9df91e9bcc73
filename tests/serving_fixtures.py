"""Local stand-ins of TF Serving for the client tests, and comparisons of
two runtimes' detections (not tests).

Both serve a SavedModel in-process on 127.0.0.1 with TF Serving's wire
formats: REST `POST /v1/models/<name>:predict` with row-format JSON
(`{"b64": ...}` for bytes), and gRPC `PredictionService/Predict`.
"""

import base64
from concurrent import futures
import http.server
import json
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tensormask_tf.modeling import detection_generator
from tensormask_tf.serving import client


def _run(model, signature: str, inputs: dict) -> dict[str, np.ndarray]:
  function = model.signatures[signature or "serving_default"]
  return {k: v.numpy() for k, v in function(
      **{k: tf.constant(v) for k, v in inputs.items()}).items()}


def start_rest_server(saved_model_path: str, model_name: str):
  """(server, base URL); call server.shutdown() when done."""
  model = tf.saved_model.load(saved_model_path)

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_POST(self):  # pylint: disable=invalid-name
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      if self.path != f"/v1/models/{model_name}:predict":
        return self._reply(404, {"error": f"Servable not found for request: "
                                          f"{self.path}"})
      # Row format with one input: every instance is that input's value.
      values = [base64.b64decode(x["b64"]) if isinstance(x, dict) else x
                for x in body["instances"]]
      outputs = _run(model, body.get("signature_name"),
                     {"inputs": np.array(values, dtype=object)})
      return self._reply(200, client.rest_predictions(outputs))

    def _reply(self, code, payload):
      data = json.dumps(payload).encode("utf-8")
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f"http://127.0.0.1:{server.server_address[1]}"


def start_grpc_server(saved_model_path: str, model_name: str):
  """(server, "127.0.0.1:port"); call server.stop(None) when done."""
  model = tf.saved_model.load(saved_model_path)

  class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):

    def Predict(self, request, context):  # pylint: disable=invalid-name
      if request.model_spec.name != model_name:
        context.abort(grpc.StatusCode.NOT_FOUND,
                      f"Servable not found: {request.model_spec.name}")
      outputs = _run(model, request.model_spec.signature_name,
                     {k: tf.make_ndarray(v) for k, v in
                      request.inputs.items()})
      response = predict_pb2.PredictResponse()
      response.model_spec.CopyFrom(request.model_spec)
      for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
      return response

  server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[
      ("grpc.max_send_message_length", -1),
      ("grpc.max_receive_message_length", -1)])
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      Servicer(), server)
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  return server, f"127.0.0.1:{port}"


# float32 noise between two runtimes of one graph (TensorFlow and
# onnxruntime sum convolutions and reductions in different orders).
SCORE_ABS, BOX_ABS, MASK_ABS = 1e-5, 1e-3, 1e-5


def pasted_probabilities(raw: dict, i: int) -> np.ndarray:
  """[H, W] float32: detection i's mask probability at each pixel of its
  original image, as `detections_in_original_image` pastes it before the
  0.5 threshold, from one image's raw outputs (`unbatch_detections` of a
  `raw_detections` run, with its `image_info`)."""
  image_info = np.asarray(raw["image_info"], np.float32)
  height, width = (int(round(v)) for v in image_info[0])
  sides = np.asarray(raw["detection_mask_sides"], np.int64)
  start = int((sides[:i] ** 2).sum())
  mask = np.asarray(raw["detection_mask_values"][start:start + sides[i] ** 2],
                    np.float32).reshape(sides[i], sides[i])
  window = detection_generator.to_original_pixels(
      raw["detection_windows"][i:i + 1], image_info)[0]
  crop, (top, left, h, w) = (
      v.numpy() for v in detection_generator.paste_window_mask(
          mask, window, tf.constant([height, width]), threshold=None))
  full = np.zeros([height, width], np.float32)
  full[top:top + h, left:left + w] = crop
  return full


def assert_flips_are_ties(got: np.ndarray, ref: np.ndarray,
                          probabilities: np.ndarray | None, what: str):
  """Two binary masks [H, W] equal, but where `probabilities` (one side's
  pasted probabilities, `pasted_probabilities`) is within float32 noise of
  the 0.5 threshold: the two runtimes' window masks agree to MASK_ABS and
  pasting interpolates them, so only such a pixel may land on either
  side."""
  flipped = got != ref
  if probabilities is None:
    assert not flipped.any(), f"{what}: {flipped.sum()} pixels differ"
    return
  off = np.abs(probabilities[flipped] - 0.5)
  assert (off <= 2 * MASK_ABS).all(), (
      f"{what}: {flipped.sum()} pixels differ, probabilities up to "
      f"{off.max():.2e} from 0.5")


def assert_same_detections(found: dict, want: dict, what: str,
                           found_raw: dict | None = None):
  """The same detections (`detections_in_original_image`), class, score
  and box to float32 noise; detections whose scores tie to float32 noise
  may come in either order. Masks pixel for pixel, or, given `found_raw`
  (the raw outputs `found` was pasted from), but for pixels whose
  probability is 0.5 to float32 noise (`assert_flips_are_ties`)."""
  assert len(found["scores"]) == len(want["scores"]) > 0, what
  unmatched = list(range(len(found["scores"])))
  for j in range(len(want["scores"])):
    same = [i for i in unmatched
            if found["classes"][i] == want["classes"][j]
            and abs(found["scores"][i] - want["scores"][j]) <= SCORE_ABS
            and np.abs(found["boxes"][i] - want["boxes"][j]).max() <= BOX_ABS]
    assert same, f"{what}: detection {j} has no twin"
    i = same[0]
    unmatched.remove(i)
    got, ref = found["masks"].mask(i), want["masks"].mask(j)
    assert_flips_are_ties(
        got, ref, None if found_raw is None or (got == ref).all()
        else pasted_probabilities(found_raw, i), f"{what}: mask {j}")


def assert_same_raw_detections(found: dict, want: dict):
  """Two runs' `raw_detections` outputs (a batch): the same arrays to
  float32 noise, each image's detections matched as by
  assert_same_detections (ties may swap), their masks' values to
  MASK_ABS."""
  assert set(found) == set(want)
  for key, value in want.items():
    assert found[key].dtype == value.dtype, key
  np.testing.assert_allclose(found["image_info"], want["image_info"],
                             rtol=1e-6)
  np.testing.assert_array_equal(found["num_detections"],
                                want["num_detections"])
  for n, (got, ref) in enumerate(zip(
      detection_generator.unbatch_detections(found),
      detection_generator.unbatch_detections(want))):
    count = int(ref["num_detections"])
    unmatched = list(range(count))
    offsets = lambda d: np.concatenate(  # noqa: E731
        [[0], np.cumsum(d["detection_mask_sides"][:count] ** 2)])
    got_offsets, ref_offsets = offsets(got), offsets(ref)
    for j in range(count):
      same = [i for i in unmatched
              if got["detection_classes"][i] == ref["detection_classes"][j]
              and abs(got["detection_scores"][i] -
                      ref["detection_scores"][j]) <= SCORE_ABS
              and np.abs(got["detection_boxes"][i] -
                         ref["detection_boxes"][j]).max() <= BOX_ABS
              and np.abs(got["detection_windows"][i] -
                         ref["detection_windows"][j]).max() <= BOX_ABS
              and got["detection_mask_sides"][i] ==
              ref["detection_mask_sides"][j]]
      assert same, f"image {n}: detection {j} has no twin"
      i = same[0]
      unmatched.remove(i)
      np.testing.assert_allclose(
          got["detection_mask_values"][got_offsets[i]:got_offsets[i + 1]],
          ref["detection_mask_values"][ref_offsets[j]:ref_offsets[j + 1]],
          rtol=0, atol=MASK_ABS, err_msg=f"image {n}: mask {j}")
