"""Schemathesis against the server's own /openapi.json, over real HTTP: generated requests
(valid ones and ones that break the schema) to every route never get a server error (5xx)."""

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the importorskip)
from hypothesis.errors import Unsatisfiable  # noqa: E402

from synclearn.chat.openai_api import ServerLimits  # noqa: E402
from synclearn.chat.runtime import Runtime  # noqa: E402
from tests.chat.conftest import MODEL, serve_runtime  # noqa: E402

EXAMPLES = 8  # per operation and mode: the default run stays well under a minute


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    rt = Runtime.open(MODEL, tmp_path_factory.mktemp("schema") / "data", checkpoint_every_s=0)
    limits = ServerLimits(max_prompt_tokens=256, max_tokens=8, default_max_tokens=4, max_body_bytes=20_000)
    srv = serve_runtime(rt, limits=limits)
    yield srv, rt
    srv.stop()
    rt.close()


def test_no_request_gets_a_server_error(served):
    srv, rt = served
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 9
    seen = []

    for operation, mode in [(op, mode) for op in operations for mode in schemathesis.GenerationMode]:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(timeout=120)
            seen.append((case.method, response.status_code))
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            if response.status_code >= 400:  # every refusal is an OpenAI-style error body
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            if rt.attached:  # a generated attach: keep the learner from hogging the cores
                httpx.post(srv.url + "/v1/learner/detach", timeout=120)

        try:
            check()
        except Unsatisfiable:  # negative mode on a route without parameters or body: nothing to break
            assert mode == schemathesis.GenerationMode.NEGATIVE, operation.path
    assert any(code == 200 for _, code in seen) and any(400 <= code < 500 for _, code in seen)
