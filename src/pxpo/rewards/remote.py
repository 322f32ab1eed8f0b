"""Heatmap rewards served over HTTP: run a heavy reward model in its own process or on its own GPU.

The protocol (docs/reward_protocol.md), version 1:

    POST /v1/reward
        request:  Content-Type: application/octet-stream; a safetensors file with
                  "images": [B, 3, H, W], float32 in [0, 1] (or uint8 in 0..255), and in its metadata
                  "prompts": a JSON list of B strings, "metadata": a JSON list of B objects
        answer:   200, Content-Type: application/octet-stream; a safetensors file with
                  "heatmaps": [B, H, W] float32, finite (higher is better)
                  4xx / 5xx, Content-Type: application/json; {"detail": "what went wrong"}
    GET  /v1/info  -> {"protocol": 1, "reward": NAME}

Safetensors carries shapes and dtypes and holds no code (no pickles). The client (``reward.name =
"http"``) retries a server that cannot be reached or answers 502/503/504, gives up after
``retries`` more tries with a message naming the URL, and checks the answer's shape and values.
``pxpo serve-reward NAME_OR_MODULE`` serves any registered or module reward (127.0.0.1 by default).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from safetensors.torch import load as load_tensors
from starlette.concurrency import run_in_threadpool
from safetensors.torch import save as save_tensors

from pxpo.images import to_uint8
from pxpo.rewards.registry import RewardError, RewardFn, check_heatmaps, check_reward_output, load_reward, register_reward

PROTOCOL = 1
PATH = "/v1/reward"
RETRY_STATUSES = {502, 503, 504}


def encode_request(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict], image_dtype: str = "float32") -> bytes:
    """The request body for images [B, 3, H, W] in [0, 1]."""
    if image_dtype == "uint8":
        images = to_uint8(images)
    elif image_dtype == "float32":
        images = images.detach().float()
    else:
        raise ValueError(f"image_dtype = {image_dtype!r}: expected 'float32' or 'uint8'")
    header = {"prompts": json.dumps(list(prompts)), "metadata": json.dumps(list(metadata), default=str)}
    return save_tensors({"images": images.cpu().contiguous()}, metadata=header)


def decode_request(body: bytes) -> tuple[torch.Tensor, list[str], list[dict]]:
    """(images [B, 3, H, W] float32 in [0, 1], prompts, metadata) from a request body; ValueError if malformed."""
    try:
        tensors = load_tensors(body)
        header = _safetensors_metadata(body)
        prompts, metadata = json.loads(header.get("prompts", "[]")), json.loads(header.get("metadata", "[]"))
    except Exception as error:  # noqa: BLE001  (any parse failure is the client's)
        raise ValueError(f"the request is not a safetensors file with images, prompts and metadata ({error})") from None
    images = tensors.get("images")
    if images is None or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images of shape {None if images is None else list(images.shape)}: expected [B, 3, H, W]")
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if len(prompts) != len(images) or len(metadata) != len(images):
        raise ValueError(f"{len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata: expected one of each per image")
    return images, prompts, metadata


def _safetensors_metadata(body: bytes) -> dict[str, str]:
    size = int.from_bytes(body[:8], "little")
    return json.loads(body[8 : 8 + size]).get("__metadata__", {}) or {}


@register_reward("http")
def http_reward(url: str, timeout: float = 60.0, retries: int = 2, backoff: float = 1.0, image_dtype: str = "float32") -> RewardFn:
    """A reward computed by a server that speaks pxpo's reward protocol (``pxpo serve-reward``).

    Args:
        url: the server, e.g. "http://127.0.0.1:8100" (the protocol's path is added).
        timeout: seconds to wait for one answer.
        retries: further tries when the server cannot be reached or answers 502/503/504.
        backoff: seconds before the first retry (doubled each time).
        image_dtype: "float32" (exact) or "uint8" (4x smaller, quantised to 1/255).
    """
    endpoint = url.rstrip("/") + PATH
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"url = {url!r}: expected http://HOST:PORT")

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        body = encode_request(images, prompts, metadata, image_dtype)
        answer = _post(endpoint, body, timeout, retries, backoff)
        try:
            heatmaps = load_tensors(answer)["heatmaps"]
        except Exception as error:  # noqa: BLE001
            raise RewardError(f"reward server {endpoint} answered something that is not a safetensors file with 'heatmaps' ({error})") from None
        return check_heatmaps(heatmaps, images, f"http {endpoint}").to(images.device)

    return reward


def _post(endpoint: str, body: bytes, timeout: float, retries: int, backoff: float) -> bytes:
    request = urllib.request.Request(endpoint, data=body, method="POST", headers={"Content-Type": "application/octet-stream"})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            detail = _detail(error)
            if error.code not in RETRY_STATUSES or attempt == retries:
                raise RewardError(f"reward server {endpoint} answered {error.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            if attempt == retries:
                reason = getattr(error, "reason", error)
                raise RewardError(f"reward server {endpoint} could not be reached after {retries + 1} tries ({reason})") from None
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("detail", "")
    except Exception:  # noqa: BLE001
        return error.reason


def create_reward_app(name: str, kwargs: dict[str, Any] | None = None):
    """A FastAPI app serving the reward ``name`` (registered or 'module:factory') with the protocol above."""
    reward_fn = load_reward(name, **(kwargs or {}))
    app = FastAPI(title=f"pxpo reward server: {name}", docs_url=None, redoc_url=None)

    @app.get("/v1/info")
    def info() -> dict:
        return {"protocol": PROTOCOL, "reward": name}

    @app.post(PATH)
    async def score(request: Request) -> Response:
        body = await request.body()
        try:
            images, prompts, metadata = decode_request(body)
        except ValueError as error:
            return JSONResponse({"detail": str(error)}, status_code=400)
        try:
            heatmaps = await run_in_threadpool(lambda: check_reward_output(reward_fn(images, prompts, metadata), images, name).heatmaps)
        except RewardError as error:
            return JSONResponse({"detail": str(error)}, status_code=500)
        return Response(save_tensors({"heatmaps": heatmaps.float().cpu().contiguous()}), media_type="application/octet-stream")

    return app


def serve_reward(name: str, kwargs: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 8100) -> None:
    """Serve a reward with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_reward_app(name, kwargs), host=host, port=port, log_level="info")


__all__ = ["create_reward_app", "decode_request", "encode_request", "http_reward", "serve_reward"]
