"""Local stand-ins of TF Serving for the client tests (not tests).

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
