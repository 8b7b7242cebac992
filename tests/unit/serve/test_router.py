"""Router decisions and guardrails (pure logic); the SLM message comes from components.slm.parse_completion."""

from components.serve.router import ClusterRoute, agreement, check_tool_calls, decide, route_summary
from components.slm import parse_completion

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
REQUEST = {"model": "gpt", "messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER]}


def test_outliers_unknown_tools_and_modes():
    routes = {
        0: ClusterRoute("on", frozenset({"get_weather"})),
        1: ClusterRoute("shadow", frozenset({"get_weather"})),
        2: ClusterRoute("off", frozenset({"get_weather"})),
        3: ClusterRoute("on", frozenset({"other"})),
    }
    assert decide(-1, REQUEST, routes, "a").route == "llm"
    assert decide(0, REQUEST, routes, "a").route == "slm"
    assert decide(1, REQUEST, routes, "a").route == "shadow"
    assert decide(2, REQUEST, routes, "a").route == "llm"
    assert decide(3, REQUEST, routes, "a").reason.endswith("unknown to the cluster")
    assert decide(9, REQUEST, routes, "a").route == "llm"


def test_canary_is_seeded_and_takes_its_share():
    routes = {0: ClusterRoute("canary", frozenset({"get_weather"}), canary_share=0.3)}
    taken = [decide(0, REQUEST, routes, f"call-{i}", seed=7).route for i in range(1000)]
    assert taken == [decide(0, REQUEST, routes, f"call-{i}", seed=7).route for i in range(1000)]
    assert 0.25 < taken.count("slm") / 1000 < 0.35
    assert set(taken) == {"slm", "llm"}


def test_guardrail_rejects_garbage_unknown_tool_and_bad_arguments():
    good = parse_completion('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    assert check_tool_calls(good, REQUEST) is None
    assert check_tool_calls(parse_completion("qz lorem ;;"), REQUEST) == "no tool call parsed"
    other = parse_completion('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>')
    assert check_tool_calls(other, REQUEST) == "tool not offered by the request"
    bad = parse_completion('<tool_call>{"name": "get_weather", "arguments": {"city": 3}}</tool_call>')
    reason = check_tool_calls(bad, REQUEST)
    assert reason == "arguments invalid at city" and "3" not in reason


def test_agreement_and_summary():
    a = parse_completion('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    b = parse_completion('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>')
    assert agreement(a, a) and not agreement(a, b)
    rows = [
        {"cluster_id": 0, "route": "slm"},
        {"cluster_id": 0, "route": "shadow", "agree": True},
        {"cluster_id": -1, "route": "llm"},
        {"cluster_id": 0, "route": "fallback"},
    ]
    summary = route_summary(rows, llm_cost_per_call=0.01, slm_cost_per_call=0.001)
    assert summary["overall"]["slm_share"] == 0.25
    assert summary["clusters"][0]["slm_share"] == 1 / 3 and summary["clusters"][0]["agreement"] == 1.0
    assert abs(summary["overall"]["cost_saved_per_1k"] - 2.25) < 1e-9
