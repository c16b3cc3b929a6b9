"""The other servers of the serving benchmark, each serving the same model at POST /classify {"text": ...}.

    python bench/serve_baselines.py fastapi  MODEL_DIR PORT   # unbatched: plain FastAPI, one forward per request
    python bench/serve_baselines.py litserve MODEL_DIR PORT   # LitServe, batching on (bench venv)
    python bench/serve_baselines.py ray      MODEL_DIR PORT   # Ray Serve with @serve.batch (bench venv)

Batching settings match ours: at most 32 per batch, 5 ms batch wait. Each answers {"label": ..., "score": ...}.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pydantic import BaseModel

MAX_BATCH = 32
BATCH_WAIT_S = 0.005


class Model:
    """Tokenise with padding per batch and run the classifier: what a user of these frameworks would write."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def __call__(self, texts: list[str]) -> list[dict[str, Any]]:
        enc = self.tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        with self.torch.inference_mode():
            probs = self.model(**enc).logits.softmax(-1)
        best = probs.argmax(-1).tolist()
        return [{"label": self.labels[b], "score": float(probs[i, b])} for i, b in enumerate(best)]


class Req(BaseModel):
    text: str


def fastapi_server(model_dir: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    model = Model(model_dir)
    app = FastAPI()

    @app.post("/classify")
    def classify(req: Req) -> dict[str, Any]:  # sync: FastAPI runs it on its thread pool
        return model([req.text])[0]

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning")


try:  # only in the bench venv; module level because LitServe pickles the API into its worker processes
    import litserve as ls

    class LitClassifier(ls.LitAPI):  # type: ignore[misc]
        def __init__(self, model_dir: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.model_dir = model_dir

        def setup(self, device: str) -> None:
            self.m = Model(self.model_dir)

        def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads the annotation
            return str(request["text"])

        def batch(self, inputs: list[str]) -> list[str]:
            return inputs

        def predict(self, texts: list[str]) -> list[dict[str, Any]]:
            return self.m(texts)

        def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return output

        def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
            return output

except ImportError:
    pass


def litserve_server(model_dir: str, port: int) -> None:
    api = LitClassifier(model_dir, max_batch_size=MAX_BATCH, batch_timeout=BATCH_WAIT_S, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120)
    server.run(port=port, host="127.0.0.1", log_level="warning", generate_client_file=False)


def ray_server(model_dir: str, port: int) -> None:
    import os

    # A busy 2-core machine starts the raylet slowly; the default 30 s wait is not enough there.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve
    from starlette.requests import Request

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
    class Classifier:
        def __init__(self) -> None:
            self.m = Model(model_dir)

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)  # type: ignore[misc]
        async def predict(self, texts: list[str]) -> list[dict[str, Any]]:
            return self.m(texts)

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            return await self.predict(str(body["text"]))  # type: ignore[no-any-return]

    serve.run(Classifier.bind(), route_prefix="/classify")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    kind, model_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"fastapi": fastapi_server, "litserve": litserve_server, "ray": ray_server}[kind](model_dir, port)
