"""A server mounted in a FastAPI app (its lifespan enters ``async with server:``), and
``aioflows serve`` from the command line."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from serving_support import child_server, uvicorn_serving

import aioflows as af


class Upper(af.Endpoint):
    def load(self) -> None:
        self.suffix = "!"

    async def process(self, body: Any, state: dict[str, Any], stats: af.Stats) -> Any:
        return body["text"].upper() + self.suffix


async def test_a_fastapi_app_mounts_the_server_and_runs_it_in_its_lifespan() -> None:
    server = af.Server()
    server.add("upper", Upper())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server:  # Starlette does not run a mounted app's lifespan (starlette#649)
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/ml", server.asgi())

    @app.get("/own")
    async def own() -> dict[str, str]:
        return {"host": "fastapi"}

    async with uvicorn_serving(app) as url:
        async with af.Client(f"{url}/ml") as client:
            assert await client.predict("upper", {"text": "hi"}) == "HI!"
            request_id = await client.submit("upper", {"text": "there"})
            assert (await client.wait(request_id, timeout=10))["result"] == "THERE!"
            assert [e["name"] for e in await client.endpoints()] == ["upper"]
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/own")).json() == {"host": "fastapi"}
            assert (await http.get("/ml/healthz")).json() == {"status": "ok"}
            assert "aioflows_requests_total" in (await http.get("/ml/metrics")).text
    assert server.phase == "stopped"


async def test_mounted_without_the_lifespan_every_route_says_how_to_fix_it() -> None:
    server = af.Server()
    server.add("upper", Upper())
    app = FastAPI()
    app.mount("/ml", server.asgi())
    async with uvicorn_serving(app) as url, af.Client(f"{url}/ml") as client:
        with pytest.raises(af.ServingError) as refused:
            await client.predict("upper", {"text": "hi"})
    assert refused.value.status_code == 503
    assert "async with server:" in refused.value.error


SERVED = textwrap.dedent(
    """
    import aioflows as af


    class Upper(af.Endpoint):
        def process(self, body, state, stats):
            return body.upper()


    class Broken(af.Endpoint):
        def load(self):
            raise OSError("model.bin is missing")


    server = af.Server(api_keys=["k-123"])
    server.add("upper", Upper())
    broken = af.Server()
    broken.add("healthy", Upper())
    broken.add("sentiment", Broken())
    """
)


def test_aioflows_serve_serves_a_file_on_the_given_port(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(SERVED)
    with child_server(Path("app.py"), "server", cwd=tmp_path) as (_, url):
        headers = {"Authorization": "Bearer k-123"}
        answer = httpx.post(f"{url}/v1/endpoints/upper/predict", json="hi", headers=headers)
        assert answer.json() == {"result": "HI"}
        assert httpx.get(f"{url}/v1/endpoints").status_code == 401


def test_aioflows_serve_exits_non_zero_naming_the_endpoint_whose_load_failed(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(SERVED)
    done = subprocess.run(
        [sys.executable, "-m", "aioflows", "serve", "app.py:broken", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "aioflows: error: endpoint 'sentiment' failed to load: OSError: model.bin is missing"
    )
    assert 'File "' in done.stderr  # the user's traceback
    assert "aioflows/serving" not in done.stderr  # without the library's frames


def test_aioflows_serve_refuses_what_is_not_a_server(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(SERVED)
    for target, message in [
        ("app.py:Upper", "is not an af.Server"),
        ("app.py:nothing", "has no object 'nothing'"),
        ("missing.py", "no such file"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "aioflows", "serve", target, "--port", "0"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, target
        assert message in done.stderr, (target, done.stderr)
