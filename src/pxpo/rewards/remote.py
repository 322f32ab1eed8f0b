"""Heatmap rewards served over HTTP: run a heavy reward model in its own process or on its own GPU.

The protocol (docs/reward_protocol.md), version 1:

    POST /v1/reward
        request:  Content-Type: application/octet-stream; a safetensors file with
                  "images": [B, 3, H, W], float32 in [0, 1] (or uint8 in 0..255), and in its metadata
                  "prompts": a JSON list of B strings, "metadata": a JSON list of B objects
        answer:   200, Content-Type: application/octet-stream; a safetensors file with
                  "heatmaps": [B, H, W] float32, finite (higher is better), and optionally
                  "judged": [B, H, W] uint8 in {0, 1}, where the reward has an opinion (absent: everywhere)
                  4xx (the client's fault) / 500 (the reward's), Content-Type: application/json;
                  {"detail": "what went wrong"}
    GET  /v1/info  -> {"protocol": 1, "reward": NAME, "max_request_bytes": N}

Safetensors carries shapes and dtypes and holds no code (no pickles). The client (``reward.name =
"http"``) retries a server that cannot be reached, breaks off its answer or answers 502/503/504, gives
up after ``retries`` more tries with a message naming the URL, follows no redirect, and checks the
answer's dtype, shape and values. ``pxpo serve-reward NAME_OR_MODULE`` serves any registered or module
reward (127.0.0.1 by default); it reads no body that is not application/octet-stream (415) or that is
larger than ``max_request_bytes`` (413).
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from safetensors.torch import load as load_tensors
from starlette.concurrency import run_in_threadpool
from safetensors.torch import save as save_tensors

from pxpo.images import to_uint8
from pxpo.rewards.registry import RewardError, RewardFn, RewardOutput, check_reward_output, load_reward, register_reward

PROTOCOL = 1
PATH = "/v1/reward"
RETRY_STATUSES = {502, 503, 504}
MEDIA_TYPE = "application/octet-stream"
MAX_REQUEST_BYTES = 256 * 2**20  # the server's default limit on a request body (a batch of 16 float32 images of 1024x1024 is 192 MiB)
IMAGE_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}  # the dtypes docs/reward_protocol.md names
HEATMAP_DTYPES = {"float32": torch.float32}
LIMIT_ADVICE = '(pxpo serve-reward --max-request-bytes; or send fewer images, or image_dtype = "uint8" for 4x fewer bytes)'

logger = logging.getLogger(__name__)


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
    _check_dtype(images, IMAGE_DTYPES, "images of")
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    bad = ~torch.isfinite(images)
    if bool(bad.any()):
        which = bad.flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"images hold {int(bad.sum())} non-finite values (in images {which}): expected finite numbers in [0, 1]")
    if not isinstance(prompts, list) or not all(isinstance(prompt, str) for prompt in prompts):
        raise ValueError(f"prompts: expected a JSON list of {len(images)} strings")
    if not isinstance(metadata, list) or not all(isinstance(entry, dict) for entry in metadata):
        raise ValueError(f"metadata: expected a JSON list of {len(images)} objects")
    if len(prompts) != len(images) or len(metadata) != len(images):
        raise ValueError(f"{len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata: expected one of each per image")
    return images, prompts, metadata


def _check_dtype(tensor: torch.Tensor, allowed: dict[str, torch.dtype], what: str) -> None:
    """ValueError naming the tensor's dtype and the allowed ones unless it is one of ``allowed``."""
    if tensor.dtype not in allowed.values():
        raise ValueError(f"{what} dtype {str(tensor.dtype).removeprefix('torch.')}: expected {' or '.join(allowed)}")


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

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        body = encode_request(images, prompts, metadata, image_dtype)
        answer = _post(endpoint, body, timeout, retries, backoff)
        try:
            tensors = load_tensors(answer)
            heatmaps, judged = tensors["heatmaps"], tensors.get("judged")
        except Exception as error:  # noqa: BLE001
            raise RewardError(f"reward server {endpoint} answered something that is not a safetensors file with 'heatmaps' ({error})") from None
        try:
            _check_dtype(heatmaps, HEATMAP_DTYPES, "heatmaps of")
            if judged is not None:
                _check_dtype(judged, {"uint8": torch.uint8}, "a judged map of")
        except ValueError as error:
            raise RewardError(f"reward server {endpoint} answered {error}") from None
        if judged is not None and bool((judged > 1).any()):
            raise RewardError(f"reward server {endpoint} answered a judged map with values other than 0 and 1")
        output = RewardOutput(heatmaps, judged=None if judged is None else judged.bool())
        return check_reward_output(output, images, f"http {endpoint}")

    return reward


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib then raises the 3xx answer as an HTTPError, which ``_post`` refuses."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201  (urllib's signature)
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _post(endpoint: str, body: bytes, timeout: float, retries: int, backoff: float) -> bytes:
    """POST ``body``; retry what may pass (no connection, a broken-off answer, 502/503/504); RewardError otherwise."""
    request = urllib.request.Request(endpoint, data=body, method="POST", headers={"Content-Type": MEDIA_TYPE})
    for attempt in range(retries + 1):
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            location = error.headers.get("Location") if 300 <= error.code < 400 else None
            if location is not None:
                target = _one_line(urllib.parse.urljoin(endpoint, location))
                raise RewardError(f"reward server {endpoint} answered {error.code}, redirected to {target}: "
                                  "the client does not follow redirects (set url to the server's own address)") from None  # fmt: skip
            if error.code not in RETRY_STATUSES or attempt == retries:
                raise RewardError(f"reward server {endpoint} answered {error.code}: {_one_line(_detail(error))}") from None
        except http.client.IncompleteRead as error:  # the connection closed in the middle of the answer
            if attempt == retries:
                total = "" if error.expected is None else f" of {len(error.partial) + error.expected}"
                raise RewardError(f"reward server {endpoint} cut its answer short ({len(error.partial)}{total} bytes) after {retries + 1} tries") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            if attempt == retries:
                reason = getattr(error, "reason", error)
                limit = _limit_passed(endpoint, len(body), timeout) if isinstance(reason, (ConnectionResetError, BrokenPipeError)) else None
                if limit is not None:
                    raise RewardError(f"reward server {endpoint} closed the connection on a request of {len(body)} bytes: "
                                      f"its limit is {limit} bytes {LIMIT_ADVICE}") from None  # fmt: skip
                raise RewardError(f"reward server {endpoint} could not be reached after {retries + 1} tries ({_one_line(str(reason))})") from None
        except http.client.HTTPException as error:  # not HTTP at all: trying again would not help
            raise RewardError(f"reward server {endpoint} answered something that is not HTTP ({type(error).__name__}: {_one_line(str(error))})") from None
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _limit_passed(endpoint: str, size: int, timeout: float) -> int | None:
    """The server's limit on a request body (from GET /v1/info) if ``size`` bytes pass it, else None. A server that
    refuses a body over its limit unread closes the connection while a large body is still being sent: the 413 it
    answered is lost, and this says why."""
    try:
        with _OPENER.open(endpoint.removesuffix(PATH) + "/v1/info", timeout=timeout) as response:
            limit = json.loads(response.read()).get("max_request_bytes")
    except Exception:  # noqa: BLE001  (no answer: the connection's own error is the message)
        return None
    return limit if isinstance(limit, int) and size > limit else None


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("detail", "")
    except Exception:  # noqa: BLE001
        return error.reason


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_max_request_bytes(max_request_bytes: int) -> int:
    """``max_request_bytes`` if it is a positive whole number of bytes; ValueError naming it otherwise."""
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
        raise ValueError(f"max_request_bytes = {max_request_bytes!r}: expected a positive number of bytes")
    return max_request_bytes


async def _read_body(request: Request, max_request_bytes: int) -> bytes:
    """The request's body, once its Content-Type is the protocol's (else 415) and it is at most ``max_request_bytes``
    (else 413: refused from its Content-Length unread, or, without one, once the body read so far passes the limit)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != MEDIA_TYPE:
        raise HTTPException(415, f"Content-Type {media_type or '(none)'}: expected Content-Type: {MEDIA_TYPE} (a safetensors file)")
    declared = request.headers.get("content-length")
    if declared is not None and not declared.strip().isdigit():
        raise HTTPException(400, f"Content-Length {declared!r}: expected a number of bytes")
    if declared is not None and int(declared) > max_request_bytes:
        raise HTTPException(413, f"the request declares {int(declared)} bytes, more than the limit of {max_request_bytes} bytes {LIMIT_ADVICE}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_request_bytes:
            raise HTTPException(413, f"the request has more than the limit of {max_request_bytes} bytes {LIMIT_ADVICE}")
    return bytes(body)


def create_reward_app(name: str, kwargs: dict[str, Any] | None = None, max_request_bytes: int = MAX_REQUEST_BYTES):
    """A FastAPI app serving the reward ``name`` (registered or 'module:factory') with the protocol above; a request
    body larger than ``max_request_bytes`` is answered 413 without being read."""
    check_max_request_bytes(max_request_bytes)
    reward_fn = load_reward(name, **(kwargs or {}))
    app = FastAPI(title=f"pxpo reward server: {name}", docs_url=None, redoc_url=None)

    @app.get("/v1/info")
    def info() -> dict:
        return {"protocol": PROTOCOL, "reward": name, "max_request_bytes": max_request_bytes}

    @app.post(PATH)
    async def score(request: Request) -> Response:
        body = await _read_body(request, max_request_bytes)  # 415 / 413 / 400 as HTTPException
        try:
            images, prompts, metadata = decode_request(body)
        except ValueError as error:
            return JSONResponse({"detail": str(error)}, status_code=400)
        try:
            output = await run_in_threadpool(lambda: check_reward_output(reward_fn(images, prompts, metadata), images, name))
        except RewardError as error:
            return JSONResponse({"detail": str(error)}, status_code=500)
        except Exception as error:  # noqa: BLE001  (the reward's own failure: the server's fault, told in the answer and the log)
            logger.exception("reward %r failed", name)
            return JSONResponse({"detail": f"reward {name!r} failed: {type(error).__name__}: {error}"}, status_code=500)
        tensors = {"heatmaps": output.heatmaps.float().cpu().contiguous()}
        if output.judged is not None:
            tensors["judged"] = output.judged.to(torch.uint8).cpu().contiguous()
        return Response(save_tensors(tensors), media_type=MEDIA_TYPE)

    return app


def serve_reward(name: str, kwargs: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 8100,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:  # fmt: skip
    """Serve a reward with uvicorn (blocking); request bodies over ``max_request_bytes`` are answered 413."""
    import uvicorn

    uvicorn.run(create_reward_app(name, kwargs, max_request_bytes), host=host, port=port, log_level="info")


__all__ = ["MAX_REQUEST_BYTES", "check_max_request_bytes", "create_reward_app", "decode_request", "encode_request", "http_reward", "serve_reward"]
