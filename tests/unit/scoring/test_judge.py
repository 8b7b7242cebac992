"""The optional LLM judge talks to an OpenAI-compatible endpoint, reads the key from the environment, and is off by
default."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from components.scoring.judge import JudgeConfig, make_judge, parse_grade


class FakeChatCompletions(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChatCompletions.seen.append((self.path, self.headers.get("Authorization"), body))
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Grade: 7"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_judge_grades_through_an_openai_compatible_endpoint(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), FakeChatCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("JUDGE_KEY", "sk-test")
        judge = make_judge(
            JudgeConfig(
                enabled=True,
                base_url=f"http://127.0.0.1:{server.server_port}/v1",
                model="judge-model",
                api_key_env="JUDGE_KEY",
            )
        )
        assert judge("Paris", "It is Paris.") == 0.7
    finally:
        server.shutdown()
    path, authorization, body = FakeChatCompletions.seen[-1]
    assert path == "/v1/chat/completions" and authorization == "Bearer sk-test"
    assert body["model"] == "judge-model" and "It is Paris." in body["messages"][0]["content"]


def test_judge_is_off_by_default_and_needs_its_key():
    assert make_judge(JudgeConfig()) is None
    with pytest.raises(ValueError, match="NO_SUCH_KEY"):
        make_judge(JudgeConfig(enabled=True, api_key_env="NO_SUCH_KEY"))
    assert parse_grade("10/10") == 1.0 and parse_grade("I'd say 3") == 0.3 and parse_grade("no idea") == 0.0
