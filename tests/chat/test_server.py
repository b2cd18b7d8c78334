"""The OpenAI-compatible server, over real HTTP on 127.0.0.1, with the official openai client."""

import threading

import httpx
import openai
import pytest
import torch

from synclearn.chat.openai_api import ServerLimits
from synclearn.chat.runtime import Runtime
from synclearn.cli import main as cli_main
from synclearn.learn import Learner
from synclearn.model import load_model
from tests.chat.conftest import MODEL, openai_client, serve_runtime, wait_until

USER = [{"role": "user", "content": "hello there"}]


def completion(client, messages=USER, session=None, **kw):
    """(ChatCompletion, session id) through the official client."""
    headers = {"X-Session-Id": session} if session else None
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=kw.pop("max_tokens", 8),
                                                           extra_headers=headers, **kw)
    return raw.parse(), raw.headers["x-session-id"]


def test_models_and_non_streaming_completion(server, runtime):
    client = openai_client(server.url)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    comp, sid = completion(client)
    choice = comp.choices[0]
    assert comp.object == "chat.completion" and comp.model == MODEL and comp.system_fingerprint == "wv0"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert comp.usage.completion_tokens <= 8 and comp.usage.prompt_tokens > 0
    extra = comp.model_extra["synclearn"]
    assert extra["session_id"] == sid and extra["versions"] == [0, 0]
    row = runtime.log.get(extra["interaction_id"])
    assert (row["session_id"], row["prompt"], row["response"]) == (sid, "hello there", choice.message.content)


def test_sparse_decode_is_served_and_reported(tmp_path):
    rt = Runtime.open(MODEL, tmp_path / "data", checkpoint_every_s=0, sampling={"sparse": 0.25})
    try:
        with serve_runtime(rt) as srv:
            comp, _ = completion(openai_client(srv.url), temperature=0)
            assert comp.model_extra["synclearn"]["sparse"] == "predictor k=64/256"  # 25% of mcsd-tiny's d_ff
        dense = rt.new_session(sparse=None)
        assert dense.send("hello there", max_new_tokens=8).sparse is None
    finally:
        rt.close()


def test_sparse_decode_names_what_it_cannot_do():
    from synclearn.chat import ChatSession
    from synclearn.model import MCSDConfig, build_model

    no_predictor = build_model(MCSDConfig(d_model=16, n_layers=1, n_channels=2, d_ff=32, predictor_rank=0, chunk_size=8))
    with pytest.raises(ValueError, match="no predictor.*sparse_mode=topk"):
        ChatSession(no_predictor, sparse=0.1)
    assert ChatSession(no_predictor, sparse=0.1, sparse_mode="topk").sparse.k == 3  # round(0.1 * 32)
    with pytest.raises(ValueError, match="needs an MCSD model"):
        ChatSession(torch.nn.Linear(2, 2), sparse=0.5)
    with pytest.raises(ValueError, match="share=1.5"):
        ChatSession(no_predictor, sparse=1.5, sparse_mode="topk")


def test_streaming_and_session_state(server, runtime):
    client = openai_client(server.url)
    stream = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}, extra_headers={"X-Session-Id": "s1"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].system_fingerprint == "wv0"
    extra = finals[0].model_extra["synclearn"]
    assert runtime.log.get(extra["interaction_id"])["response"] == text
    assert chunks[-1].usage.completion_tokens <= 12 and not chunks[-1].choices

    # the history extends the session's exactly: only the new user turn is fed
    tok = runtime.model.tokenizer
    follow = USER + [{"role": "assistant", "content": text}, {"role": "user", "content": "and then?"}]
    comp, _ = completion(client, follow, session="s1")
    assert comp.model_extra["synclearn"]["prefilled_tokens"] == len(tok.chat([{"role": "user", "content": "and then?"}]))
    assert [r["turn"] for r in runtime.log.by_session("s1")] == [0, 1]

    # a history the session did not produce: reset and prefill it, same as a fresh model would
    edited = [{"role": "system", "content": "be brief"}, *USER, {"role": "assistant", "content": "hi!"},
              {"role": "user", "content": "who are you?"}]
    comp, _ = completion(client, edited, session="s1", max_tokens=10, temperature=0)
    assert comp.model_extra["synclearn"]["prefilled_tokens"] == len(tok.chat([{"role": "user", "content": "who are you?"}]))
    reference = load_model(MODEL)
    ids = [tok.BOS] + tok.chat(edited[:-1], add_generation_prompt=False) + tok.chat(edited[-1:])
    assert comp.choices[0].message.content == reference.generate(ids, max_new_tokens=10, stop=["\x00"]).text
    assert len(runtime.log.by_session("s1")) == 3  # the replayed history is not logged again


def test_sessions_are_isolated_and_bounded(runtime):
    with serve_runtime(runtime, limits=ServerLimits(max_sessions=2)) as srv:
        client = openai_client(srv.url)
        a, _ = completion(client, session="alice")
        completion(client, session="bob")
        a_id = a.model_extra["synclearn"]["interaction_id"]
        r = httpx.post(srv.url + "/v1/feedback", json={"interaction_id": a_id, "score": -1.0},
                       headers={"X-Session-Id": "bob"})
        assert r.status_code == 404 and "bob" in r.json()["error"]["message"]
        assert runtime.log.get(a_id)["feedback_score"] is None
        if hasattr(Learner, "forget"):
            r = httpx.post(srv.url + "/v1/forget", json={"ids": [a_id]}, headers={"X-Session-Id": "bob"}, timeout=60)
            assert r.status_code == 404 and runtime.log.get(a_id) is not None
        # a third session evicts the least recently used; alice continues by prefill
        completion(client, session="carol")
        status = httpx.get(srv.url + "/v1/learner/status").json()
        assert status["sessions"] == 2
        follow = USER + [{"role": "assistant", "content": a.choices[0].message.content},
                         {"role": "user", "content": "still there?"}]
        comp, _ = completion(client, follow, session="alice")
        assert comp.model_extra["synclearn"]["interaction_id"] > a_id
        assert [r["turn"] for r in runtime.log.by_session("alice")] == [0, 1]


def test_attach_teach_detach_while_serving(server, runtime):
    client = openai_client(server.url)
    url = server.url
    # a random model's replies may be empty (nothing to learn): give the log learnable rows to replay
    runtime.log.append_many([{"session_id": "seed", "prompt": f"q{i}", "response": f"answer {i}"} for i in range(4)])
    r = httpx.post(url + "/v1/learner/attach", json={"batch_size": 2, "max_defer_s": 0.2, "poll_s": 0.05,
                                                     "new_repeats": 1, "idle_replay": True})
    assert r.status_code == 200 and r.json()["attached"] is True
    assert httpx.post(url + "/v1/learner/attach").status_code == 409
    errors, stop = [], threading.Event()

    def chat_loop(name):
        try:
            for i in range(40):  # bounded; stops early once the learner has stepped
                if stop.is_set():
                    break
                completion(client, [{"role": "user", "content": f"fact {i}: {name} likes tea"}], session=f"{name}{i}")
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=chat_loop, args=(n,)) for n in ("ann", "ben")]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: httpx.get(url + "/v1/learner/status").json()["learner"]["steps"] >= 3, 60, what="3 steps")
        comp, _ = completion(client)
        assert int(comp.system_fingerprint[2:]) >= 3  # the reply was computed from learned weights
        stream = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=16, stream=True)
        next(iter(stream))  # a stream in flight while the learner detaches
        status = httpx.post(url + "/v1/learner/detach", timeout=60).json()
        assert list(stream)[-1].choices[0].finish_reason in ("stop", "length")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors and status["attached"] is False and status["learner"]["errors"] == []
    version = runtime.version
    completion(client)
    assert runtime.version == version  # detached: nothing learns any more
    assert httpx.post(url + "/v1/learner/detach").json()["attached"] is False  # idempotent


def test_attach_command_against_a_running_server(runtime, capsys):
    with serve_runtime(runtime, api_key="sekrit") as srv:
        assert cli_main(["attach", srv.url, "--api-key", "wrong"]) == 1
        assert "401" in capsys.readouterr().err and not runtime.attached
        assert cli_main(["attach", srv.url + "/v1", "--api-key", "sekrit", "--batch-size", "2"]) == 0
        assert '"attached": true' in capsys.readouterr().out and runtime.attached
        assert runtime.attach_options == {"batch_size": 2}
        assert cli_main(["attach", srv.url, "--api-key", "sekrit", "--status"]) == 0
        assert '"weight_version"' in capsys.readouterr().out
        assert cli_main(["attach", srv.url, "--api-key", "sekrit", "--detach"]) == 0
        assert not runtime.attached


def test_feedback_through_the_api(server, runtime):
    client = openai_client(server.url)
    first, sid = completion(client)
    second, _ = completion(client, USER + [{"role": "assistant", "content": first.choices[0].message.content},
                                           {"role": "user", "content": "more"}], session=sid)
    headers = {"X-Session-Id": sid}
    r = httpx.post(server.url + "/v1/feedback", json={"score": 1.0}, headers=headers)
    last = second.model_extra["synclearn"]["interaction_id"]
    assert r.status_code == 200 and r.json()["interaction_id"] == last
    first_id = first.model_extra["synclearn"]["interaction_id"]
    r = httpx.post(server.url + "/v1/feedback", json={"interaction_id": first_id, "correction": "Hello! How can I help?"},
                   headers=headers)
    assert r.status_code == 200
    assert runtime.log.get(last)["feedback_score"] == 1.0
    assert runtime.log.get(first_id)["feedback_correction"] == "Hello! How can I help?"


def test_forget_through_the_api_is_scoped_to_the_session(server, runtime):
    client = openai_client(server.url)
    url = server.url
    for sid, text in (("alice", "my locker code is 4417"), ("alice", "the weather is mild"),
                      ("bob", "my locker code is 9902")):
        completion(client, [{"role": "user", "content": text}], session=sid)
        # a correction makes the turn learnable even when the random model's reply is empty
        httpx.post(url + "/v1/feedback", json={"correction": "Noted."}, headers={"X-Session-Id": sid})
    httpx.post(url + "/v1/learner/attach", json={"batch_size": 2, "idle_replay": True, "poll_s": 0.05,
                                                 "new_repeats": 1})
    wait_until(lambda: runtime.learner.committed_steps >= 2, 60, what="two learner steps")
    r = httpx.post(url + "/v1/forget", json={"match": "locker code"}, headers={"X-Session-Id": "alice"}, timeout=120)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["session_id"] == "alice" and report["mode"] in ("exact", "noop")
    assert [runtime.log.get(i) for i in report["ids"]] == [None]
    assert [row["prompt"] for row in runtime.log.by_session("alice")] == ["the weather is mild"]
    assert [row["prompt"] for row in runtime.log.by_session("bob")] == ["my locker code is 9902"]
    assert httpx.get(url + "/v1/learner/status").json()["attached"] is True  # re-attached after the forget
    r = httpx.post(url + "/v1/forget", json={"session": True, "mode": "auto"}, headers={"X-Session-Id": "alice"},
                   timeout=120)
    assert r.status_code == 200 and runtime.log.by_session("alice") == []
    assert len(runtime.log.by_session("bob")) == 1
    httpx.post(url + "/v1/learner/detach", timeout=60)


def _bad_requests(url, key):
    auth = {"Authorization": f"Bearer {key}"}
    ok_body = {"model": MODEL, "messages": USER}
    big = "x" * 300

    def post(path, body=None, content=None, headers=auth):
        return httpx.post(url + path, json=body, content=content, headers=headers, timeout=30)

    chat = "/v1/chat/completions"
    return [
        ("no key", 401, lambda: post(chat, ok_body, headers={})),
        ("wrong key", 401, lambda: post(chat, ok_body, headers={"Authorization": "Bearer nope"})),
        ("key on another route", 401, lambda: httpx.get(url + "/v1/learner/status")),
        ("attach without key", 401, lambda: post("/v1/learner/attach", {}, headers={})),
        ("malformed JSON", 400, lambda: post(chat, content=b'{"model": ')),
        ("not an object", 400, lambda: post(chat, [ok_body])),
        ("NaN", 400, lambda: post(chat, content=b'{"model": "mcsd-tiny-random", "messages": [], "temperature": NaN}')),
        ("missing messages", 400, lambda: post(chat, {"model": MODEL})),
        ("empty messages", 400, lambda: post(chat, {"model": MODEL, "messages": []})),
        ("messages not a list", 400, lambda: post(chat, {"model": MODEL, "messages": "hi"})),
        ("content not text", 400, lambda: post(chat, {"model": MODEL, "messages": [{"role": "user", "content": 5}]})),
        ("unknown role", 400, lambda: post(chat, {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]})),
        ("ends with assistant", 400, lambda: post(chat, {"model": MODEL, "messages": USER + [
            {"role": "assistant", "content": "x"}]})),
        ("two users in a row", 400, lambda: post(chat, {"model": MODEL, "messages": USER + USER})),
        ("temperature as string", 400, lambda: post(chat, {**ok_body, "temperature": "0.5"})),
        ("stream as string", 400, lambda: post(chat, {**ok_body, "stream": "yes"})),
        ("max_tokens float", 400, lambda: post(chat, {**ok_body, "max_tokens": 1.5})),
        ("max_tokens zero", 400, lambda: post(chat, {**ok_body, "max_tokens": 0})),
        ("max_tokens over limit", 400, lambda: post(chat, {**ok_body, "max_tokens": 33})),
        ("n = 2", 400, lambda: post(chat, {**ok_body, "n": 2})),
        ("tools", 400, lambda: post(chat, {**ok_body, "tools": [{"type": "function"}]})),
        ("NUL in content", 400, lambda: post(chat, {"model": MODEL, "messages": [{"role": "user", "content": "a\x00b"}]})),
        ("lone surrogate", 400, lambda: post(chat, content=b'{"model": "mcsd-tiny-random", "messages": '
                                                           b'[{"role": "user", "content": "\\ud800"}]}')),
        ("prompt too long", 400, lambda: post(chat, {"model": MODEL, "messages": [{"role": "user", "content": big}]})),
        ("body too large", 413, lambda: post(chat, {"model": MODEL, "messages": [{"role": "user", "content": big * 10}]})),
        ("unknown model", 404, lambda: post(chat, {**ok_body, "model": "gpt-4"})),
        ("bad session id", 400, lambda: post(chat, ok_body, headers={**auth, "X-Session-Id": "a b/c"})),
        ("unknown attach option", 400, lambda: post("/v1/learner/attach", {"batch": 2})),
        ("attach wrong type", 400, lambda: post("/v1/learner/attach", {"batch_size": "2"})),
        ("feedback without session", 400, lambda: post("/v1/feedback", {"score": 1.0})),
        ("feedback without content", 400, lambda: post("/v1/feedback", {}, headers={**auth, "X-Session-Id": "s"})),
        ("feedback score out of range", 400, lambda: post("/v1/feedback", {"score": 5},
                                                           headers={**auth, "X-Session-Id": "s"})),
        ("feedback on nothing", 404, lambda: post("/v1/feedback", {"score": 1.0}, headers={**auth, "X-Session-Id": "s"})),
        ("forget two selectors", 400, lambda: post("/v1/forget", {"session": True, "match": "x"},
                                                   headers={**auth, "X-Session-Id": "s"})),
        ("forget bad mode", 400, lambda: post("/v1/forget", {"session": True, "mode": "fast"},
                                              headers={**auth, "X-Session-Id": "s"})),
        ("forget ids wrong type", 400, lambda: post("/v1/forget", {"ids": ["1"]}, headers={**auth, "X-Session-Id": "s"})),
        ("unknown route", 404, lambda: httpx.get(url + "/v1/nothing", headers=auth)),
        ("wrong method", 405, lambda: httpx.get(url + chat, headers=auth)),
    ]


def test_bad_requests_get_clear_4xx_and_change_nothing(runtime):
    key = "k-123"
    limits = ServerLimits(max_body_bytes=2000, max_prompt_tokens=200, max_tokens=32, default_max_tokens=8)
    with serve_runtime(runtime, api_key=key, limits=limits) as srv:
        client = openai_client(srv.url, key)
        completion(client, session="s0")  # one good turn, so there is state to protect
        weights = {n: p.detach().clone() for n, p in runtime.model.named_parameters()}
        rows, version = runtime.log.count(), runtime.version
        status = httpx.get(srv.url + "/v1/learner/status", headers={"Authorization": f"Bearer {key}"}).json()
        for what, code, send in _bad_requests(srv.url, key):
            r = send()
            assert r.status_code == code, (what, r.status_code, r.text)
            error = r.json()["error"]
            assert error["message"] and error["type"], what
        assert httpx.get(srv.url + "/health").json() == {"status": "ok"}  # never needs the key
        # the official client raises its typed errors
        with pytest.raises(openai.AuthenticationError):
            openai_client(srv.url, "wrong").models.list()
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4", messages=USER)
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=1000)
        after = httpx.get(srv.url + "/v1/learner/status", headers={"Authorization": f"Bearer {key}"}).json()
    assert runtime.log.count() == rows and runtime.version == version and not runtime.attached
    assert all(torch.equal(p, weights[n]) for n, p in runtime.model.named_parameters())
    assert after["sessions"] == status["sessions"] and after["log_rows"] == status["log_rows"]


def test_concurrent_clients_with_the_learner_attached(server, runtime):
    url = server.url
    httpx.post(url + "/v1/learner/attach", json={"batch_size": 2, "idle_replay": True, "max_defer_s": 0.2})
    results, errors = {}, []

    def client_run(k):
        try:
            client = openai_client(url, **{"X-Session-Id": f"c{k}"})
            history = []
            for turn in range(3):
                history.append({"role": "user", "content": f"client {k} turn {turn}"})
                if (k + turn) % 2:
                    chunks = list(client.chat.completions.create(model=MODEL, messages=history, max_tokens=10,
                                                                 stream=True))
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    text = client.chat.completions.create(model=MODEL, messages=history, max_tokens=10) \
                        .choices[0].message.content
                history.append({"role": "assistant", "content": text})
            results[k] = history
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=client_run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    status = httpx.post(url + "/v1/learner/detach", timeout=60).json()
    assert not errors and len(results) == 4
    assert status["learner"]["errors"] == [] and status["learner"]["steps"] >= 1
    for k, history in results.items():
        rows = runtime.log.by_session(f"c{k}")
        assert [r["prompt"] for r in rows] == [m["content"] for m in history[0::2]]
        assert [r["response"] for r in rows] == [m["content"] for m in history[1::2]]


def test_shutdown_checkpoints_and_a_restart_resumes(tmp_path):
    rt = Runtime.open(MODEL, tmp_path / "data", checkpoint_every_s=0)
    srv = serve_runtime(rt, close_runtime=True)
    client = openai_client(srv.url)
    rt.attach(batch_size=2, idle_replay=True, max_steps=3)
    for i in range(3):
        completion(client, [{"role": "user", "content": f"remember {i}"}])
    wait_until(lambda: rt.learner.committed_steps >= 3, 60, what="3 steps")
    srv.stop()  # graceful shutdown: detach, final checkpoint, close the log
    weights = {n: p.detach().clone() for n, p in rt.model.named_parameters()}
    version, steps = rt.version, rt.learner.committed_steps
    manifest = rt.last_checkpoint
    assert manifest["weight_version"] == version and manifest["committed_steps"] == steps
    again = Runtime.open(MODEL, tmp_path / "data", checkpoint_every_s=0)
    try:
        assert again.version == version and again.learner.committed_steps == steps
        assert all(torch.equal(p, weights[n]) for n, p in again.model.named_parameters())
        assert again.log.count() == 3 and again.status()["checkpoint"]["seq"] == manifest["seq"]
    finally:
        again.close()


def test_the_server_describes_itself(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"model", "messages", "max_tokens", "stream", "user"} <= set(request["properties"])
    assert "tokenizer" in request["properties"]["max_tokens"]["description"]
    assert "X-Session-Id" in [p["name"] for p in schema["paths"]["/v1/feedback"]["post"]["parameters"]]
    for path in ("/v1/learner/attach", "/v1/forget", "/v1/learner/status"):
        assert path in schema["paths"]
    attach = schema["components"]["schemas"]["AttachRequest"]["properties"]
    assert {"batch_size", "new_repeats", "idle_replay"} <= set(attach)
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "synclearn" in page.text


def test_the_openai_user_field_names_the_session(server, runtime):
    client = openai_client(server.url)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER, max_tokens=4, user="carla")
    assert raw.headers["x-session-id"] == "carla" and len(runtime.log.by_session("carla")) == 1
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER, max_tokens=4, user="carla",
                                                           extra_headers={"X-Session-Id": "dora"})
    assert raw.headers["x-session-id"] == "dora"  # the header wins
    with pytest.raises(openai.BadRequestError, match="user"):
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, user="not a session id!")


def test_a_session_in_use_is_never_evicted(runtime):
    from synclearn.chat.sessions import SessionTable

    table = SessionTable(runtime, capacity=1)
    first = table.get("a")  # a request holds "a" (about to take its lock) ...
    other = table.get("b")  # ... while another session's request arrives and would evict it
    assert table.get("a") is first  # so two requests of "a" share one ChatSession and its lock
    for entry in (first, first, other):
        table.release(entry)
    table.get("c")
    assert len(table) == 1  # released entries are evicted again


def test_forget_everywhere_needs_the_operator(runtime):
    with serve_runtime(runtime, api_key="user-key", admin_key="owner-key") as srv:
        user, owner = {"Authorization": "Bearer user-key"}, {"Authorization": "Bearer owner-key"}
        for sid, text in (("s1", "my parrot is Kiki"), ("s2", "hello"), ("s3", "the Parrot sings")):
            completion(openai_client(srv.url, "user-key"), [{"role": "user", "content": text}], session=sid)
        r = httpx.post(srv.url + "/v1/forget", json={"match": "parrot", "scope": "all"}, headers=user)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert len(runtime.log.select_ids(match="parrot")) == 2
        r = httpx.post(srv.url + "/v1/forget", json={"match": "parrot", "scope": "all", "mode": "auto"},
                       headers=owner, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["deleted"] == 2 and r.json()["mode"] in ("exact", "noop")
        assert [row["prompt"] for row in runtime.log.iter_rows()] == ["hello"]
        status = httpx.get(srv.url + "/v1/learner/status", headers=owner).json()
        assert status["recent_forgets"][0]["scope"] == "all" and status["recent_forgets"][0]["deleted"] == 2
        t = runtime.log.by_session("s2")[0]["created_at"]
        r = httpx.post(srv.url + "/v1/forget", json={"since": t, "until": t}, headers={**user, "X-Session-Id": "s2"})
        assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/forget", json={"since": t - 1}, headers={**user, "X-Session-Id": "s2"},
                       timeout=120)
        assert r.status_code == 200 and runtime.log.count() == 0
