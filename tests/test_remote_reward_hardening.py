"""The remote reward protocol's edges (issue 20): redirects, truncated answers, dtypes, content types, sizes,
and which side's fault a status names (4xx the client's, 500 the reward's)."""

import http.client
import socket
import threading
from contextlib import contextmanager

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from safetensors.torch import save
from serving import serving

from pxpo.rewards import RewardError, load_reward
from pxpo.rewards.remote import create_reward_app, decode_request, encode_request

IMAGES, PROMPTS, METADATA = torch.rand(2, 3, 16, 16), ["a", "b"], [{}, {}]


def failing():
    """A reward that raises an ordinary exception (for the tests)."""

    def reward(images, prompts, metadata):
        raise KeyError("no such class")

    return reward


def post(url: str, body: bytes, headers: dict[str, str], encode_chunked: bool = False) -> tuple[int, bytes]:
    """(status, body) of a POST to url's /v1/reward with exactly these headers (http.client adds no Content-Type)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", "/v1/reward", body=body, headers=headers, encode_chunked=encode_chunked)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextmanager
def raw_server(answer: bytes, connections: int):
    """A loopback socket server that reads each request in full and answers the raw bytes ``answer``, then closes;
    it serves at most ``connections`` connections. Yields (url, list of the requests' first lines)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    listener.settimeout(10)
    seen: list[bytes] = []

    def run() -> None:
        for _ in range(connections):
            try:
                conn, _ = listener.accept()
            except OSError:  # closed or timed out: the test is over
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    data += conn.recv(65536) or b"\r\n\r\n"
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                seen.append(head.split(b"\r\n")[0])
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        listener.close()
        thread.join(timeout=10)


# 1. redirects: never followed, refused in one line naming both places


@pytest.mark.slow
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_client_never_follows_a_redirect_to_another_origin(status):
    other = FastAPI()
    received = []

    @other.api_route("/v1/reward", methods=["GET", "POST"])
    def score(request: Request) -> Response:
        received.append(request.method)
        return Response(save({"heatmaps": torch.zeros(2, 16, 16)}), media_type="application/octet-stream")

    with serving(other) as elsewhere:
        redirecting = FastAPI()

        @redirecting.post("/v1/reward")
        def moved() -> Response:
            return Response(status_code=status, headers={"Location": elsewhere + "/v1/reward"})

        with serving(redirecting) as url:
            reward = load_reward("http", url=url, retries=2, backoff=0.01)
            with pytest.raises(RewardError) as info:
                reward(IMAGES, PROMPTS, METADATA)
    message = str(info.value)
    assert received == []  # the other origin heard nothing
    assert "\n" not in message and f"{url}/v1/reward" in message and f"redirected to {elsewhere}/v1/reward" in message
    assert "does not follow redirects" in message


# 2. a truncated answer: one line naming the URL, retried like a dropped connection


@pytest.mark.slow
def test_a_truncated_answer_is_retried_then_named_in_one_line():
    truncated = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"x" * 10
    with raw_server(truncated, connections=2) as (url, seen):
        reward = load_reward("http", url=url, retries=1, backoff=0.01, timeout=10)
        with pytest.raises(RewardError) as info:
            reward(IMAGES, PROMPTS, METADATA)
    message = str(info.value)
    assert len(seen) == 2  # tried again once, as the protocol says for a connection that breaks off
    assert "\n" not in message and f"reward server {url}/v1/reward" in message
    assert "cut its answer short (10 of 1000 bytes) after 2 tries" in message


# 3. dtypes: only the ones docs/reward_protocol.md names


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.float16, torch.bool])
def test_the_client_refuses_a_heatmap_dtype_the_protocol_does_not_name(dtype):
    rogue = FastAPI()

    @rogue.post("/v1/reward")
    def score() -> Response:
        return Response(save({"heatmaps": torch.zeros(2, 16, 16, dtype=dtype)}), media_type="application/octet-stream")

    with serving(rogue) as url:
        name = str(dtype).removeprefix("torch.")
        with pytest.raises(RewardError, match=rf"^reward server {url}/v1/reward answered heatmaps of dtype {name}: expected float32$"):
            load_reward("http", url=url)(IMAGES, PROMPTS, METADATA)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.float16, torch.int8])
def test_the_server_refuses_an_image_dtype_the_protocol_does_not_name(dtype):
    body = save({"images": torch.zeros(2, 3, 4, 4, dtype=dtype)}, metadata={"prompts": '["a", "b"]', "metadata": "[{}, {}]"})
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"^images of dtype {name}: expected float32 or uint8$"):
        decode_request(body)


# 4. the server checks the content type and the size before it reads a body


@pytest.mark.slow
def test_the_server_refuses_other_content_types_with_415():
    body = encode_request(IMAGES, PROMPTS, METADATA)
    with serving(create_reward_app("blue_penalty")) as url:
        for content_type in ["text/plain", "application/x-www-form-urlencoded", None]:
            status, answer = post(url, body, {} if content_type is None else {"Content-Type": content_type})
            assert status == 415 and b"expected Content-Type: application/octet-stream" in answer, (content_type, answer)
        assert post(url, body, {"Content-Type": "Application/Octet-Stream; charset=binary"})[0] == 200  # case and parameters aside


@pytest.mark.slow
def test_the_server_refuses_a_body_over_its_limit_with_413_without_reading_it():
    body = encode_request(IMAGES[:1, :, :4, :4], PROMPTS[:1], METADATA[:1])
    octets = {"Content-Type": "application/octet-stream"}
    with serving(create_reward_app("blue_penalty", max_request_bytes=1000)) as url:
        assert len(body) < 1000 and post(url, body, octets)[0] == 200
        # declared too large: answered at once, though the body never comes (reading it would wait for the timeout)
        status, answer = post(url, b"", {**octets, "Content-Length": str(10**12)})
        assert status == 413 and b"1000000000000 bytes" in answer and b"limit of 1000 bytes" in answer
        # no Content-Length (chunked): read up to the limit, then refused
        status, answer = post(url, iter([b"x" * 600, b"x" * 600]), octets, encode_chunked=True)
        assert status == 413 and b"more than the limit of 1000 bytes" in answer
        status, _ = post(url, iter([body[:100], body[100:]]), octets, encode_chunked=True)
        assert status == 200


@pytest.mark.slow
@pytest.mark.parametrize("size", [300, 1500])  # a body the server's socket takes whole (413 arrives), one it does not (reset)
def test_the_client_names_the_servers_limit_when_its_request_is_too_large(size):
    with serving(create_reward_app("blue_penalty", max_request_bytes=2**20)) as url:
        reward = load_reward("http", url=url, retries=1, backoff=0.01, timeout=10)
        limit = r"(more than the limit of|its limit is) 1048576 bytes \(pxpo serve-reward --max-request-bytes"
        with pytest.raises(RewardError, match=rf"^reward server {url}/v1/reward .*{limit}"):
            reward(torch.rand(1, 3, size, size), ["a"], [{}])


def test_serve_reward_passes_max_request_bytes_and_refuses_a_bad_one(monkeypatch, capsys):
    from pxpo.cli import main
    from pxpo.rewards import remote

    calls = []
    monkeypatch.setattr(remote, "serve_reward", lambda *args, **kwargs: calls.append(kwargs))
    assert main(["serve-reward", "blue_penalty", "--port", "1", "--max-request-bytes", "4096"]) == 0
    assert calls[-1]["max_request_bytes"] == 4096
    assert main(["serve-reward", "blue_penalty", "--port", "1"]) == 0
    assert calls[-1]["max_request_bytes"] == remote.MAX_REQUEST_BYTES
    assert main(["serve-reward", "blue_penalty", "--max-request-bytes", "0"]) == 2
    assert "error: max_request_bytes = 0: expected a positive number of bytes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve-reward", "--help"])
    assert f"(default: {remote.MAX_REQUEST_BYTES}, 256 MiB)" in " ".join(capsys.readouterr().out.split())  # the help tells the truth


# 5. the client's faults are 4xx, the reward's 500


def test_non_finite_images_are_the_clients_fault():
    images = IMAGES.clone()
    images[1, 0, 2, 3] = float("nan")
    images[0, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^images hold 2 non-finite values \(in images \[0, 1\]\): expected finite numbers in \[0, 1\]$"):
        decode_request(encode_request(images, PROMPTS, METADATA))


@pytest.mark.slow
def test_the_server_answers_400_to_nan_images_and_500_when_the_reward_raises():
    images = IMAGES.clone()
    images[1, 0, 2, 3] = float("nan")
    with serving(create_reward_app("blue_penalty")) as url:
        with pytest.raises(RewardError, match=r"answered 400: images hold 1 non-finite values \(in images \[1\]\)"):
            load_reward("http", url=url, retries=0)(images, PROMPTS, METADATA)
    with serving(create_reward_app("test_remote_reward_hardening:failing")) as url:
        with pytest.raises(RewardError, match=r"answered 500: reward 'test_remote_reward_hardening:failing' failed: KeyError: 'no such class'"):
            load_reward("http", url=url, retries=0)(IMAGES, PROMPTS, METADATA)


@pytest.mark.parametrize("header, problem", [
    ({"prompts": '"ab"', "metadata": "[{}, {}]"}, "prompts: expected a JSON list of 2 strings"),
    ({"prompts": '["a", 2]', "metadata": "[{}, {}]"}, "prompts: expected a JSON list of 2 strings"),
    ({"prompts": '["a", "b"]', "metadata": "7"}, "metadata: expected a JSON list of 2 objects"),
    ({"prompts": '["a", "b"]', "metadata": '[{}, "x"]'}, "metadata: expected a JSON list of 2 objects"),
])  # fmt: skip
def test_prompts_and_metadata_of_the_wrong_kind_are_the_clients_fault(header, problem):
    with pytest.raises(ValueError, match=problem):
        decode_request(save({"images": torch.zeros(2, 3, 4, 4)}, metadata=header))
