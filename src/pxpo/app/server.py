"""``pxpo app``: paint + and - on an image, train one step, see the change.

A FastAPI server and one static page (a plain canvas; see static/index.html). One training step runs
at a time across all sessions: a request that finds one running is answered 409 "busy" at once,
so nothing queues up. The server binds 127.0.0.1 unless told otherwise.

API (JSON unless said):
    GET  /api/config                            the default model and the upload limit
    GET  /api/sessions                          the sessions on disk: name, model, prompt, step
    POST /api/sessions  {name, model, prompt, seed}   open (continue) or create a session -> state, and whether it was created
    GET  /api/sessions/{name}                   state: step, size, history of feedback per step, the last step's change
    GET  /api/sessions/{name}/image/{step}      the image after that step (PNG; 404 naming the valid steps)
    POST /api/sessions/{name}/train?width=W&height=H   body: W*H int8 values in {-2, 0, 2} -> state
    GET  /api/sessions/{name}/painted/{step}    the image of that step with the map painted on it (PNG; 404 naming the painted steps)
    GET  /api/sessions/{name}/map/{step}        the map painted on that image, as a transparent PNG layer
    GET  /api/sessions/{name}/difference/{step} where image step differs from image step - 1, its map outlined (PNG)
    POST /api/sessions/{name}/export            draw the feedback-evolution figure -> paths
    GET  /api/sessions/{name}/export.png        that figure
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware

from pxpo.app.sessions import SessionError, SessionManager, parse_painted_map

STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
MAX_UPLOAD_BYTES = 4 * 2**20  # a 2048 x 2048 map
NO_STORE = {"Cache-Control": "no-store"}


class OpenSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    model: str | None = None
    prompt: str | None = None
    seed: int | None = None


def bare_hosts(hosts) -> set[str]:
    """Host names as a Host header's hostname or --host gives them: IPv6 addresses without brackets."""
    return {host.strip("[]") for host in hosts}


class SameOriginOnly(BaseHTTPMiddleware):
    """Refuse other sites' pages (cross-site requests) and other names for this address (DNS rebinding)."""

    def __init__(self, app, hosts: set[str]) -> None:
        super().__init__(app)
        self.hosts, self.names = hosts, bare_hosts(hosts)

    async def dispatch(self, request: Request, call_next):
        refusal = self.refusal(request)
        return refusal if refusal is not None else await call_next(request)

    def refusal(self, request: Request) -> JSONResponse | None:
        """The answer to a request that is refused, or None."""
        netloc = request.headers.get("host") or ""
        host = urlsplit(f"//{netloc}").hostname or ""
        if "*" not in self.hosts and host not in self.names:
            return JSONResponse({"detail": f"host {host!r} is not served here (allowed: {', '.join(sorted(self.hosts))})"}, status_code=403)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != netloc:
                return JSONResponse({"detail": f"requests from {origin} are refused: the pxpo app takes requests from its own page"},
                                    status_code=403)  # fmt: skip
            kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if kind not in ("application/json", "application/octet-stream"):
                return JSONResponse({"detail": f"content type {kind or 'none'!r}: expected application/json or application/octet-stream"},
                                    status_code=415)  # fmt: skip
            return self.too_long(request)
        return None

    @staticmethod
    def too_long(request: Request) -> JSONResponse | None:
        """A state-changing request whose declared body is over the app's limit is refused before it is read (413)."""
        declared, limit = request.headers.get("content-length"), request.app.state.max_upload_bytes
        if declared is not None and not declared.strip().isdigit():
            return JSONResponse({"detail": f"Content-Length {declared!r}: expected a whole number of bytes"}, status_code=400)
        if declared is not None and int(declared) > limit:
            return JSONResponse({"detail": f"a body of {int(declared)} bytes: the limit is {limit} (pxpo app's max_upload_bytes)"}, status_code=413)
        return None


def session_error(request: Request, error: SessionError) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=error.status)


def value_error(request: Request, error: ValueError) -> JSONResponse:  # bad model, config or reward
    return JSONResponse({"detail": str(error)}, status_code=400)


def the_manager(request: Request) -> SessionManager:
    return request.app.state.manager


Manager = Annotated[SessionManager, Depends(the_manager)]
router = APIRouter()


def locked(manager: SessionManager, work):
    """``work()`` under the training lock, or 409 at once when a step is running."""
    if not manager.lock.acquire(blocking=False):
        raise HTTPException(409, "busy: a training step is running; try again when it has finished")
    try:
        return work()
    finally:
        manager.lock.release()


def png(path: Path) -> FileResponse:
    return FileResponse(path, media_type="image/png", headers=NO_STORE)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/api/config")
def config(request: Request, manager: Manager) -> dict:
    return {"default_model": manager.default_model, "max_upload_bytes": request.app.state.max_upload_bytes}


@router.get("/api/sessions")
def sessions(manager: Manager) -> list[dict]:
    """Every session: [{"name", "model", "prompt", "step"}], by name."""
    return manager.summaries()


@router.post("/api/sessions")
def open_session(body: OpenSession, manager: Manager) -> dict:
    """The session's state, with "created": false when it existed (the page says it reopened it)."""

    def work() -> dict:
        existed = manager.exists(body.name)
        return {**manager.open(body.name, body.model, body.prompt, body.seed).state(), "created": not existed}

    return locked(manager, work)


@router.get("/api/sessions/{name}")
def state(name: str, manager: Manager) -> dict:
    return manager.get(name).state()


@router.get("/api/sessions/{name}/image/{step}")
def image(name: str, step: int, manager: Manager) -> FileResponse:
    session = manager.get(name)
    return png(session.image_path(session.checked_image_step(step)))


@router.post("/api/sessions/{name}/train")
async def train(name: str, request: Request, manager: Manager, width: int, height: int, step: int | None = None) -> dict:
    body = await request.body()  # its declared length was checked before (SameOriginOnly)
    session = manager.get(name)
    values = parse_painted_map(body, width, height, session.image_size(), request.app.state.max_upload_bytes)
    return await run_in_threadpool(locked, manager, lambda: session.train_step(values, painted_on=step))


@router.get("/api/sessions/{name}/painted/{step}")
def painted(name: str, step: int, manager: Manager) -> FileResponse:
    """The image of ``step`` with the map painted on it (the page's "before" view)."""
    return png(manager.get(name).painted_overlay(step))


@router.get("/api/sessions/{name}/map/{step}")
def map_layer(name: str, step: int, manager: Manager) -> FileResponse:
    """The map painted on image ``step`` as a transparent PNG layer (the page's "previous map" overlay)."""
    return png(manager.get(name).map_layer(step))


@router.get("/api/sessions/{name}/difference/{step}")
def difference(name: str, step: int, manager: Manager) -> FileResponse:
    """Where image ``step`` differs from image ``step - 1`` (black: unchanged), the map painted on ``step - 1`` outlined."""
    return png(manager.get(name).difference(step))


@router.post("/api/sessions/{name}/export")
def export(name: str, manager: Manager) -> dict:
    session = manager.get(name)
    figure = locked(manager, session.export_figure)
    return {"run_folder": str(session.folder), "lora": str(session.run.lora), "figure": str(figure),
            "figure_url": f"/api/sessions/{name}/export.png"}  # fmt: skip


@router.get("/api/sessions/{name}/export.png")
def export_png(name: str, manager: Manager) -> FileResponse:
    figure = manager.get(name).figure_path
    if not figure.exists():
        raise SessionError(f"session {name!r} has not been exported yet", status=404)
    return png(figure)


def create_app(
    sessions_dir: str | Path,
    default_model: str = "pxpo-tiny",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    timesteps_per_forward: int = 1,
    allowed_hosts: tuple[str, ...] = (),
) -> FastAPI:
    """The app, serving sessions under ``sessions_dir``.

    Requests must name a loopback host (or one of ``allowed_hosts``, e.g. the address given to --host); state-changing
    requests from another origin, or with a content type a form could send (which browsers do not preflight), are refused.
    """
    app = FastAPI(title="pxpo human feedback", docs_url=None, redoc_url=None)
    app.state.manager = SessionManager(sessions_dir, default_model, timesteps_per_forward)
    app.state.max_upload_bytes = max_upload_bytes
    app.add_middleware(SameOriginOnly, hosts=set(LOOPBACK_HOSTS) | set(allowed_hosts))
    app.add_exception_handler(SessionError, session_error)
    app.add_exception_handler(ValueError, value_error)
    app.include_router(router)
    return app


def serve(
    sessions_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, default_model: str = "pxpo-tiny", timesteps_per_forward: int = 1
) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    # an address given with --host is served under that name too; 0.0.0.0 (every interface) under any name
    extra = ("*",) if host in ("0.0.0.0", "::") else () if host in bare_hosts(LOOPBACK_HOSTS) else (host,)
    app = create_app(sessions_dir, default_model, timesteps_per_forward=timesteps_per_forward, allowed_hosts=extra)
    uvicorn.run(app, host=host, port=port, log_level="info")
