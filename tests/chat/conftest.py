"""Shared fixtures: a Runtime over mcsd-tiny in a temp dir, served on 127.0.0.1 with real HTTP."""

import time

import pytest

from synclearn.chat.runtime import Runtime

MODEL = "mcsd-tiny-random"


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def runtime(tmp_path):
    rt = Runtime.open(MODEL, tmp_path / "data", checkpoint_every_s=0)
    yield rt
    rt.close()


def serve_runtime(rt, **options):
    from synclearn.chat.server import RunningServer, create_app

    options.setdefault("close_runtime", False)
    return RunningServer(create_app(rt, **options))


@pytest.fixture
def server(runtime):
    srv = serve_runtime(runtime)
    yield srv
    srv.stop()


def openai_client(url: str, api_key: str = "unused", **headers):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=60, default_headers=headers or None)
