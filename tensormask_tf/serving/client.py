"""A client of TF Serving for exported TensorMask models, REST and gRPC.

Requests carry encoded images (the `serving_default` signature, input
"inputs"): REST as `{"signature_name": ..., "instances": [{"b64": ...}]}`
posted to `<url>/v1/models/<name>:predict`, gRPC as a `PredictRequest` to
`PredictionService/Predict`. Replies become one detections dict per image
with `predictor.detections_from_outputs`, ready for
`coco_evaluator.coco_results` and `visualization.draw_detections`.
"""

import base64
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc


SIGNATURE = "serving_default"
INPUT_KEY = "inputs"
# What the signature's tf.io.decode_image reads (PIL's format names).
DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


class ServingError(RuntimeError):
  """The server refused or failed the request."""


def _check_images(images: list[bytes]) -> None:
  if not images:
    raise ValueError("a predict request needs at least one image, got none")


def rest_request(images: list[bytes], signature: str = SIGNATURE) -> dict:
  """The JSON body of a REST predict request (row format, base64 images)."""
  _check_images(images)
  return {"signature_name": signature,
          "instances": [{"b64": base64.b64encode(data).decode("ascii")}
                        for data in images]}


def rest_predict(url: str, model_name: str, images: list[bytes],
                 timeout: float = 60.0) -> dict[str, np.ndarray]:
  """Posts the images; returns the outputs batched as numpy arrays."""
  endpoint = f"{url.rstrip('/')}/v1/models/{model_name}:predict"
  body = json.dumps(rest_request(images)).encode("utf-8")
  request = urllib.request.Request(
      endpoint, data=body, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      reply = json.loads(response.read())
  except urllib.error.HTTPError as e:
    raise ServingError(f"{endpoint}: HTTP {e.code}: "
                       f"{e.read().decode('utf-8', 'replace')[:500]}") from e
  except urllib.error.URLError as e:
    raise ServingError(f"{endpoint}: {e.reason}") from e
  except (TimeoutError, ConnectionError) as e:
    raise ServingError(f"{endpoint}: {e!r}") from e
  if "error" in reply:
    raise ServingError(f"{endpoint}: {reply['error']}")
  rows = reply["predictions"]
  return {key: _from_json(key, [row[key] for row in rows]) for key in rows[0]}


def rest_predictions(outputs: dict[str, np.ndarray]) -> dict:
  """The JSON body TF Serving's REST API replies with for a signature's
  batched outputs (row format: one object per instance). Strings of an
  output whose name ends in `_bytes` are written `{"b64": ...}`, other
  strings as text, numbers as they are."""

  def json_value(name: str, value: np.ndarray):
    if value.dtype != object:
      return value.tolist()
    if name.endswith("_bytes"):
      text = lambda b: {"b64": base64.b64encode(b).decode("ascii")}
    else:
      text = lambda b: b.decode("utf-8")
    return np.vectorize(text, otypes=[object])(value).tolist()

  count = len(next(iter(outputs.values())))
  return {"predictions": [{k: json_value(k, np.asarray(v)[i])
                           for k, v in outputs.items()}
                          for i in range(count)]}


def _from_json(key: str, value) -> np.ndarray:
  """An output of a REST reply as numpy. TF Serving writes a string output
  whose name ends in `_bytes` as `{"b64": ...}` objects: bytes again."""
  if not key.endswith("_bytes"):
    return np.asarray(value)
  return np.vectorize(lambda v: base64.b64decode(v["b64"]),
                      otypes=[object])(np.asarray(value, dtype=object))


def grpc_request(model_name: str, images: list[bytes],
                 signature: str = SIGNATURE) -> predict_pb2.PredictRequest:
  _check_images(images)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  request.inputs[INPUT_KEY].CopyFrom(
      tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
  return request


def grpc_predict(address: str, model_name: str, images: list[bytes],
                 timeout: float = 60.0) -> dict[str, np.ndarray]:
  """Calls PredictionService/Predict at host:port; returns the outputs."""
  with grpc.insecure_channel(
      address, options=[("grpc.max_receive_message_length", -1)]) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
      reply = stub.Predict(grpc_request(model_name, images), timeout=timeout)
    except grpc.RpcError as e:
      raise ServingError(f"{address}: {e.code().name}: {e.details()}") from e
  return {key: tf.make_ndarray(value) for key, value in reply.outputs.items()}
