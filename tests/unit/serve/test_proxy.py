"""The logging proxy over real HTTP on 127.0.0.1, between the official `openai` client and a fake upstream; the
encrypted store round-trips through `collect --source proxy-store:DIR`."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from components.collect.ingest import CollectConfig, collect_sources
from components.collect.sources import parse_source
from components.serve.proxy import create_app
from tests.support.fake_openai import fake_openai_app, serve_in_thread

CLIENT_KEY = "sk-client-secret-123"
UPSTREAM_KEY = "sk-upstream-secret-456"
CFG = CollectConfig(prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}})
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


class LocalAnswers:
    """A responder standing in for the future SLM router: answers agent 'local-bot' itself."""

    name = "slm:test"

    async def __call__(self, request_body: dict[str, Any], agent: str) -> dict[str, Any] | None:
        if agent != "local-bot":
            return None
        return {
            "id": "local-1",
            "object": "chat.completion",
            "created": 1,
            "model": "tiny-slm",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "answered locally"}}
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        }


def redact_emails(record):
    """A stand-in for S2's analyzer on the on-write hook."""
    message = record.messages[-1]
    clean = message.model_copy(update={"content": (message.content or "").replace("jane@example.com", "<EMAIL_1>")})
    return record.model_copy(update={"messages": [*record.messages[:-1], clean]})


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    store = tmp_path_factory.mktemp("proxy-store")
    upstream_app = fake_openai_app()
    with serve_in_thread(upstream_app) as upstream_url:
        proxy_app = create_app(
            f"{upstream_url}/v1",
            store,
            CFG,
            [CLIENT_KEY, "sk-other"],
            agent="fallback-agent",
            upstream_api_key=UPSTREAM_KEY,
            responders=[LocalAnswers()],
            on_write=None,
        )
        with serve_in_thread(proxy_app) as proxy_url:
            yield {
                "store": store,
                "upstream": upstream_app,
                "upstream_url": upstream_url,
                "proxy": proxy_app,
                "url": proxy_url,
            }


def client(servers, agent: str, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{servers['url']}/v1", api_key=key, max_retries=0, default_headers={"X-Agent-Name": agent}
    )


def written(servers) -> int:
    stats = servers["proxy"].state.stats
    return stats["recorded"] + stats["upstream_errors"]


def wait_for_writes(servers, count: int) -> None:
    """Records are written after the answer is sent: wait until ``count`` calls in all were stored."""
    deadline = time.monotonic() + 10
    while written(servers) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)  # an error line is counted before its write completes


def collected(servers):
    return collect_sources([parse_source(f"proxy-store:{servers['store']}", Path("/"))], CFG)


def by_agent(servers, agent: str):
    return [r for r in collected(servers).records if r.agent == agent]


def test_tool_call_and_stream_round_trip_through_the_encrypted_store(servers):
    base = written(servers)
    weather = client(servers, "weather-bot")
    answer = weather.chat.completions.create(
        model="gpt-4o",
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "system", "content": "You are a weather agent."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
    )
    [call] = answer.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})

    stream = weather.chat.completions.create(
        model="gpt-4o",
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    )
    pieces = [
        chunk.choices[0].delta.tool_calls[0].function.arguments
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.tool_calls
    ]
    assert json.loads("".join(pieces)) == {"city": "Rome"}
    text = client(servers, "chat-bot").chat.completions.create(
        model="gpt-4o", stream=True, messages=[{"role": "user", "content": "hello there"}]
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in text if chunk.choices) == "You said: hello there"
    wait_for_writes(servers, base + 3)

    paris, rome = sorted(by_agent(servers, "weather-bot"), key=lambda r: r.user_request)
    assert (paris.source, paris.model, paris.record_id) == ("proxy", "gpt-4o", answer.id)
    assert [m.role for m in paris.messages] == ["system", "user"] and paris.tools == [WEATHER_TOOL]
    assert paris.response.tool_calls[0].parsed_arguments() == {"city": "Paris"}
    assert (paris.prompt_tokens, paris.completion_tokens) == (100, 20)
    assert paris.cost_usd == pytest.approx((100 * 2.5 + 20 * 10.0) / 1e6)
    assert paris.latency_ms > 0 and paris.timestamp.utcoffset().total_seconds() == 0
    assert rome.response.tool_calls[0].parsed_arguments() == {"city": "Rome"}
    assert (rome.prompt_tokens, rome.completion_tokens) == (100, 20)
    [chat] = by_agent(servers, "chat-bot")
    assert chat.response.content == "You said: hello there" and chat.prompt_tokens is None

    # The upstream got the upstream key, never the client's.
    sent = [request["headers"].get("authorization") for request in servers["upstream"].state.requests]
    assert sent and set(sent) == {f"Bearer {UPSTREAM_KEY}"}


def test_store_is_encrypted_private_and_holds_no_credentials(servers):
    base = written(servers)
    client(servers, "secret-bot").chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "mail jane@example.com please"}]
    )
    wait_for_writes(servers, base + 1)
    from components.core.secure_store import decrypt_lines

    files = sorted(servers["store"].glob("calls-*.jsonl"))
    assert files
    plaintext = b""
    for path in files:
        data = path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert all(line.startswith(b"gAAAAA") for line in data.splitlines())
        assert b"jane@example.com" not in data and b"weather" not in data  # the prompts are encrypted
        plaintext += b"\n".join(line for line in decrypt_lines(iter(data.splitlines()), str(path)) if line)
    # Credentials could only hide in the plaintext: look there, in what the store key decrypts.
    assert b"jane@example.com" in plaintext  # the real calls, decrypted: what is absent below would show
    for credential in (CLIENT_KEY.encode(), UPSTREAM_KEY.encode(), b"authorization", b"Bearer"):
        assert credential not in plaintext
    assert by_agent(servers, "secret-bot")[0].user_request == "mail jane@example.com please"


def test_wrong_or_missing_client_key_is_refused(servers):
    with pytest.raises(openai.AuthenticationError):
        client(servers, "intruder", key="sk-wrong").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert httpx.get(f"{servers['url']}/v1/models").status_code == 401
    assert servers["proxy"].state.stats["unauthorized"] >= 2
    assert not by_agent(servers, "intruder")


def test_healthz_needs_no_key_and_shows_only_status_stats_need_a_key(servers):
    health = httpx.get(f"{servers['url']}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert servers["upstream_url"] not in health.text
    assert httpx.get(f"{servers['url']}/stats").status_code == 401
    stats = httpx.get(f"{servers['url']}/stats", headers={"Authorization": f"Bearer {CLIENT_KEY}"}).json()
    assert (
        stats["upstream"] == f"{servers['upstream_url']}/v1"
        and stats["recorded"] == servers["proxy"].state.stats["recorded"]
    )
    assert "llm_cost_usd" in stats


def test_a_body_over_the_limit_is_refused_with_413_and_neither_forwarded_nor_recorded(tmp_path):
    upstream_app = fake_openai_app()
    with serve_in_thread(upstream_app) as upstream_url:
        app = create_app(f"{upstream_url}/v1", tmp_path, CFG, [CLIENT_KEY], max_body_bytes=2048)
        with serve_in_thread(app) as url:
            agent = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
            small = agent.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            assert small.choices[0].message.content == "You said: hi"
            with pytest.raises(openai.APIStatusError) as refused:
                agent.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x" * 4096}])
            assert refused.value.status_code == 413
            assert refused.value.body["code"] == "request_too_large" and "2048" in refused.value.body["message"]

            # A chunked body declares no length: it is cut off once it passes the limit.
            def chunks():
                yield b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "'
                yield b"y" * 4096
                yield b'"}]}'

            chunked = httpx.post(
                f"{url}/v1/chat/completions", content=chunks(), headers={"Authorization": f"Bearer {CLIENT_KEY}"}
            )
            assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    assert len(upstream_app.state.requests) == 1  # only the small call reached the upstream


def test_models_are_listed_from_the_upstream(servers):
    assert [model.id for model in client(servers, "x", key="sk-other").models.list()] == ["gpt-4o"]


def test_upstream_error_is_returned_unchanged_and_recorded(servers):
    base = written(servers)
    with pytest.raises(openai.InternalServerError) as failure:
        client(servers, "broken-bot").chat.completions.create(
            model="broken", messages=[{"role": "user", "content": "hi"}]
        )
    assert failure.value.status_code == 500
    assert failure.value.body == {"message": "upstream exploded", "type": "server_error"}
    wait_for_writes(servers, base + 1)
    result = collected(servers)
    assert not [r for r in result.records if r.agent == "broken-bot"]
    assert any("HTTP 500" in entry.reason for entry in result.quarantine)


def test_a_responder_answers_without_the_upstream_and_is_recorded(servers):
    base = written(servers)
    before = len(servers["upstream"].state.requests)
    local = client(servers, "local-bot")
    answer = local.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "answered locally"
    streamed = local.chat.completions.create(model="gpt-4o", stream=True, messages=[{"role": "user", "content": "yo"}])
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == "answered locally"
    assert len(servers["upstream"].state.requests) == before
    wait_for_writes(servers, base + 2)
    records = sorted(by_agent(servers, "local-bot"), key=lambda r: r.user_request)
    assert [r.user_request for r in records] == ["hi", "yo"]
    assert all(r.response.content == "answered locally" and r.prompt_tokens == 7 for r in records)
    # Both answers carry the responder's id: the second is kept under a made-unique id, not dropped.
    assert {r.record_id.split("#")[0] for r in records} == {"local-1"} and len({r.record_id for r in records}) == 2


def test_on_write_hook_transforms_the_record_before_it_touches_disk(tmp_path):
    with serve_in_thread(fake_openai_app()) as upstream_url:
        app = create_app(f"{upstream_url}/v1", tmp_path, CFG, [CLIENT_KEY], on_write=redact_emails)
        with serve_in_thread(app) as url:
            openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "write to jane@example.com"}]
            )
            deadline = time.monotonic() + 10
            while app.state.stats["recorded"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
    [record] = collect_sources([parse_source(f"proxy-store:{tmp_path}", Path("/"))], CFG).records
    assert record.user_request == "write to <EMAIL_1>"
    # The fake upstream echoes the prompt; the hook above only cleans the prompt, so the answer still has it.
    assert record.response.content == "You said: write to jane@example.com"


def test_capture_through_s2s_analyzer_writes_no_raw_pii_to_the_store(tmp_path):
    """`llm2slm proxy --anonymize`: the real S2 analyzer on the on-write hook; the fake upstream echoes the prompt,
    so the PII is in the response too, and neither may reach the (decrypted) store."""
    from components.core.secure_store import decrypt_lines
    from tests.support.anonymizer_fixture import shared_anonymizer

    anonymizer = shared_anonymizer()
    values = ["John Smith", "john.smith@example.com", "(415) 867-5309"]
    prompt = f"Hi, I am {values[0]}, write to {values[1]} or call me at {values[2]}."
    with serve_in_thread(fake_openai_app()) as upstream_url:
        app = create_app(
            f"{upstream_url}/v1",
            tmp_path,
            CFG,
            [CLIENT_KEY],
            on_write=lambda record: anonymizer.anonymize_record(record)[0],
        )
        with serve_in_thread(app) as url:
            answer = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": prompt}]
            )
            deadline = time.monotonic() + 30
            while app.state.stats["recorded"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    assert answer.choices[0].message.content == f"You said: {prompt}"  # the agent still gets the real answer
    stored = [
        line
        for path in tmp_path.rglob("*")
        if path.is_file()
        for line in decrypt_lines(iter(path.read_bytes().splitlines()), str(path))
        if line
    ]
    assert stored, "nothing was recorded"
    for value in [*values, "867-5309"]:
        assert not any(value.encode() in line for line in stored), value
    [record] = collect_sources([parse_source(f"proxy-store:{tmp_path}", Path("/"))], CFG).records
    expected = "Hi, I am <PERSON_1>, write to <EMAIL_ADDRESS_1> or call me at <PHONE_NUMBER_1>."
    assert record.user_request == expected and record.response.content == f"You said: {expected}"


def stored_lines(store: Path) -> list[bytes]:
    from components.core.secure_store import decrypt_lines

    return [
        line
        for path in store.rglob("*")
        if path.is_file()
        for line in decrypt_lines(iter(path.read_bytes().splitlines()), str(path))
        if line
    ]


def wait_for(app, key: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while app.state.stats[key] < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # an error line is counted before its write completes


def test_a_failed_upstream_call_under_anonymize_stores_its_request_anonymized_and_no_error_body(tmp_path):
    """429s and 4xx are common, and upstream error messages quote the prompt: under --anonymize the store keeps
    the request through S2's analyzer and the error's status and type only."""
    from tests.support.anonymizer_fixture import shared_anonymizer

    anonymizer = shared_anonymizer()
    prompt = "I am John Smith, mail john.smith@example.com"
    with serve_in_thread(fake_openai_app()) as upstream_url:
        app = create_app(
            f"{upstream_url}/v1", tmp_path, CFG, [CLIENT_KEY], on_write=lambda r: anonymizer.anonymize_record(r)[0]
        )
        with serve_in_thread(app) as url:
            with pytest.raises(openai.BadRequestError) as failure:
                openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0).chat.completions.create(
                    model="echo-error", messages=[{"role": "user", "content": prompt}]
                )
            wait_for(app, "upstream_errors")
    assert "john.smith@example.com" in str(failure.value.body)  # the agent still gets the upstream's answer
    [line] = stored_lines(tmp_path)
    for value in ("John Smith", "john.smith", "invalid request"):
        assert value.encode() not in line, value
    stored = json.loads(line)
    assert stored["error"] == {"status": 400, "type": "invalid_request_error"}
    assert "<EMAIL_ADDRESS_1>" in json.dumps(stored["request_record"])
    result = collect_sources([parse_source(f"proxy-store:{tmp_path}", Path("/"))], CFG)
    assert result.records == [] and any("HTTP 400" in entry.reason for entry in result.quarantine)


def test_a_call_the_analyzer_fails_on_is_quarantined_with_the_reason_not_stored_raw(tmp_path):
    def failing_analyzer(record):
        raise ValueError(f"could not parse {record.user_request}")  # the message quotes the text

    with serve_in_thread(fake_openai_app()) as upstream_url:
        app = create_app(f"{upstream_url}/v1", tmp_path, CFG, [CLIENT_KEY], on_write=failing_analyzer)
        with serve_in_thread(app) as url:
            openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "mail jane@example.com"}]
            )
            wait_for(app, "recorded")
    [line] = stored_lines(tmp_path)
    assert b"jane@example.com" not in line and json.loads(line)["quarantined"] == "anonymization failed: ValueError"
    result = collect_sources([parse_source(f"proxy-store:{tmp_path}", Path("/"))], CFG)
    assert result.records == []
    assert [entry.reason for entry in result.quarantine] == [
        "not recorded by the proxy: anonymization failed: ValueError"
    ]


def test_the_proxy_command_wires_the_analyzer_when_asked_to_anonymize(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import components.serve.proxy as proxy_module
    from components.core.schema import CallRecord, ChatMessage
    from flows.cli import app

    served = {}
    monkeypatch.setattr(proxy_module, "serve", lambda *args, **kwargs: served.update(kwargs))
    monkeypatch.setenv("LLM2SLM_PROXY_KEYS", CLIENT_KEY)
    monkeypatch.setenv("LLM2SLM_STORE_KEY_FILE", str(tmp_path / "store.key"))
    arguments = ["proxy", "--upstream-url", "http://127.0.0.1:9/v1", "--store", str(tmp_path / "store")]
    plain = CliRunner().invoke(app, arguments)
    assert plain.exit_code == 0, plain.output
    assert served["on_write"] is None
    anonymizing = CliRunner().invoke(app, [*arguments, "--anonymize"])
    assert anonymizing.exit_code == 0, anonymizing.output
    record = CallRecord(
        record_id="r1",
        messages=[ChatMessage(role="user", content="Mail john.smith@example.com")],
        response=ChatMessage(role="assistant", content="Done."),
    )
    written = served["on_write"](record).user_request
    # params.yaml's style: a surrogate address of the same form, never the raw one
    assert "john.smith" not in written and re.fullmatch(r"Mail [\w.+-]+@[\w-]+\.\w+", written), written
    # The deny list of the anonymize: section (read from --workdir, as in `run`) is the proxy's too.
    from components.core.config import load_params

    params = load_params()
    params["anonymize"]["deny_list_file"] = "deny.yaml"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "deny.yaml").write_text("PERSON: [zorblax]\n")  # a word no recognizer would tag on its own
    with_deny_list = [*arguments, "--anonymize", "--params", str(tmp_path / "params.yaml"), "--workdir", str(tmp_path)]
    result = CliRunner().invoke(app, with_deny_list)
    assert result.exit_code == 0, result.output
    nickname = record.model_copy(update={"messages": [ChatMessage(role="user", content="tell zorblax hello")]})
    assert "zorblax" not in served["on_write"](nickname).user_request
