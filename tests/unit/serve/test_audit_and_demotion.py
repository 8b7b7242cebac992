"""Selective serving in production: the audit stream, automatic demotion and the origins the flywheel learns from.

Through the logging proxy over real HTTP with the router in front of the stand-in LLM (tests/support/fake_openai.py:
it calls get_weather for the request's place) and SLM stand-ins whose confidence features the cluster's gate reads;
the stored calls are read back from the encrypted store with collect."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import openai
import pandas as pd
import pytest

from components.collect.ingest import collect_sources
from components.collect.sources import parse_source
from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.curate.filters import CurateConfig, curate
from components.evaluate.demotion import audited_by_cluster
from components.evaluate.refresh import refresh_splits
from components.evaluate.selective import wilson_interval
from components.serve.proxy import create_app
from components.serve.route_report import route_report, write_route_report
from components.serve.router import agreement
from components.serve.service import RouterConfig, RouterResponder
from components.slm import Generation, parse_completion, render_target
from components.slm.confidence import SelectiveGate
from tests.support.fake_openai import fake_openai_app, serve_in_thread
from tests.unit.serve.test_router_service import CFG, CLIENT_KEY, WEATHER, bag_of_words, body, cluster_model
from tests.unit.serve.test_selective_serving import features, write_gate

SLM_MODEL = f"slm-cluster-{WEATHER}"


def sure_slm(wrong_about: set[str]):
    """An SLM stand-in sure of every answer (the gate accepts them all) that calls get_weather for the request's
    place, except for the places in ``wrong_about``, where it names Davos (a miss against the LLM)."""

    def generate(cluster_id: int, records: list[CallRecord]) -> list[Generation]:
        answers = []
        for record in records:
            place = record.user_request.rstrip("?.! ").split()[-1]
            city = "Davos" if place in wrong_about else place
            text = f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}</tool_call>'
            answers.append(Generation(text, 5.0, 10, 12, features(-0.01)))
        return answers

    return generate


def mask_places(record: CallRecord) -> CallRecord:
    """An on-write anonymizer stand-in (the proxy's ``--anonymize`` hook): each place becomes <LOCATION_n>."""
    text = json.dumps(record.model_dump(mode="json"))
    for number, place in enumerate(("Paris", "Zermatt", "Perth", "Davos")):
        text = text.replace(place, f"<LOCATION_{number}>")
    return CallRecord.model_validate(json.loads(text))


class AuditedProxy:
    """The proxy (optionally anonymizing on write) with the router and the stand-in LLM, on 127.0.0.1."""

    def __init__(self, store: Path, responder: RouterResponder, on_write=None) -> None:
        self.store, self.responder, self.on_write = store, responder, on_write

    def __enter__(self) -> AuditedProxy:
        self.upstream = fake_openai_app()
        self._upstream = serve_in_thread(self.upstream)
        url = self._upstream.__enter__()
        self.app = create_app(
            f"{url}/v1", self.store, CFG, [CLIENT_KEY], responders=[self.responder], on_write=self.on_write
        )
        self._proxy = serve_in_thread(self.app)
        self.client = openai.OpenAI(base_url=f"{self._proxy.__enter__()}/v1", api_key=CLIENT_KEY, max_retries=0)
        return self

    def __exit__(self, *exc) -> None:
        self._proxy.__exit__(*exc)
        self._upstream.__exit__(*exc)
        self.responder.close()

    def ask(self, place: str, **extra) -> str:
        """The model that answered the agent's call for ``place``, once the call is stored."""
        before = self.app.state.stats["recorded"]
        model = self.client.chat.completions.create(**body(WEATHER, place, **extra)).model
        deadline = time.monotonic() + 20
        while self.app.state.stats["recorded"] <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        return model

    def records(self) -> list[CallRecord]:
        return collect_sources([parse_source(f"proxy-store:{self.store}", Path("/"))], CFG).records

    def llm_places(self) -> list[str]:
        return [r["body"]["messages"][-1]["content"].rstrip("?").split()[-1] for r in self.upstream.state.requests]


def selective_router(tmp_path: Path, generator, **router) -> RouterResponder:
    cluster = {"mode": "selective", "base_model": "unused", "known_tools": ["get_weather"], "threshold": 0.5}
    config = RouterConfig.model_validate(
        {
            "clusters": {WEATHER: {**cluster, "calibrator": write_gate(tmp_path)}},
            "promotions_log": str(tmp_path / "promotions.jsonl"),
            **router,
        }
    )
    return RouterResponder(config, cluster_model(), embed=bag_of_words, generator=generator)


def test_audited_calls_are_answered_by_the_slm_and_stored_with_the_llms_answer_scored(tmp_path):
    responder = selective_router(tmp_path, sure_slm({"Zermatt"}), audit_share=0.0, audit_min_per_day=2)
    with AuditedProxy(tmp_path / "store", responder, on_write=mask_places) as proxy:
        models = [proxy.ask(place) for place in ("Paris", "Zermatt", "Perth")]
        stats, stored, llm_places = dict(proxy.app.state.stats), proxy.records(), proxy.llm_places()
    # The agent got the SLM's answer every time; the LLM was asked the day's first two kept calls, afterwards.
    assert models == [SLM_MODEL] * 3
    assert llm_places == ["Paris", "Zermatt"] and (stats["audits"], stats["audit_failures"]) == (2, 0)
    audited = [r for r in stored if r.metadata.get("origin") == "audited"]
    assert [r.metadata["route"]["audit"] for r in audited] == ["match", "miss"]
    assert all(r.metadata["route"]["route"] == "slm" and r.metadata["route"]["decision"] == "accept" for r in audited)
    # Stored anonymized, with the LLM's answer (its cost) as the response; the unaudited call keeps the SLM's.
    assert all("<LOCATION_" in r.user_request for r in stored)
    cities = [json.loads(r.response.tool_calls[0].arguments)["city"] for r in audited]
    assert cities == ["<LOCATION_0>", "<LOCATION_1>"]  # the LLM's answers (the SLM named Davos for Zermatt)
    assert all(r.cost_usd > 0 for r in audited)
    [unaudited] = [r for r in stored if "audit" not in r.metadata["route"]]
    assert not unaudited.cost_usd and "origin" not in unaudited.metadata
    # S2 trains on the audited calls (their answer is the LLM's), never on the SLM's own answer.
    plain = CurateConfig(languages=None, dedupe_exact=False, near_duplicate_threshold=None)
    kept = curate(stored, plain).kept
    assert sorted(r.record_id for r in kept) == sorted(r.record_id for r in audited)
    # The route report: audited accuracy per cluster with its interval, and what the audits cost.
    report = route_report(stored, slm_hourly_cost_usd=0.1)
    cluster = report["clusters"][WEATHER]
    assert (cluster["audited_calls"], cluster["audited_accuracy"]) == (2, 0.5)
    assert cluster["audited_interval"] == pytest.approx(wilson_interval(1, 2))
    assert cluster["audit_cost"] == pytest.approx(sum(r.cost_usd for r in audited))
    # The refresh report's per-cluster audited figures (from the batch it curated) say the same.
    [(cluster_id, refreshed)] = audited_by_cluster(kept).items()
    assert int(cluster_id) == WEATHER and refreshed == {k: v for k, v in cluster.items() if k in refreshed}
    assert "audited accuracy" in write_route_report(report, tmp_path / "route.html").read_text()


def test_deferred_calls_carry_their_origin(tmp_path):
    def unsure(cluster_id: int, records: list[CallRecord]) -> list[Generation]:
        return [Generation('<tool_call>{"name": "get_weather"}</tool_call>', 5.0, 10, 12, features(-3.0))] * len(
            records
        )

    responder = selective_router(tmp_path, unsure, audit_share=1.0)
    with AuditedProxy(tmp_path / "store", responder) as proxy:
        assert proxy.ask("Lima") == "gpt-4o"
        [record] = proxy.records()
    assert record.metadata["origin"] == "deferred" and record.metadata["route"]["decision"] == "defer"
    assert "audit" not in record.metadata["route"]  # a deferred call is not audited: the LLM answered it anyway


def test_a_cluster_whose_audited_calls_fall_below_parity_is_demoted_to_shadow(tmp_path):
    # The SLM is sure of every answer but wrong about Berlin and Tokyo: 1 of 3 audited calls right, below 0.9.
    responder = selective_router(
        tmp_path, sure_slm({"Berlin", "Tokyo"}), audit_share=1.0, demotion={"parity": 0.9, "min_test_calls": 3}
    )
    log = tmp_path / "promotions.jsonl"
    with AuditedProxy(tmp_path / "store", responder) as proxy:
        served = [proxy.ask(place) for place in ("Paris", "Berlin")]
        assert not log.exists()  # two audited calls are too few to say
        served += [proxy.ask("Tokyo"), proxy.ask("Rome")]
        stored = proxy.records()
    # Rollback: from the call after the third audit on, the LLM answers the cluster (shadow), the SLM runs beside.
    assert served == [SLM_MODEL, SLM_MODEL, SLM_MODEL, "gpt-4o"]
    [rome] = [r for r in stored if r.user_request.endswith("Rome?")]
    assert rome.metadata["route"]["route"] == "shadow" and rome.metadata["route"]["agree"] is True
    [line] = [json.loads(text) for text in log.read_text().splitlines()]
    assert {k: line[k] for k in ("event", "cluster_id", "from_mode", "to_mode", "audited_calls", "audited_hits")} == {
        "event": "demotion",
        "cluster_id": WEATHER,
        "from_mode": "selective",
        "to_mode": "shadow",
        "audited_calls": 3,
        "audited_hits": 1,
    }
    assert line["audited_interval"] == pytest.approx(wilson_interval(1, 3))
    assert "audited accuracy 0.333" in line["reason"] and "< 0.90 × LLM 1.000 = 0.900" in line["reason"]
    report = route_report(stored, slm_hourly_cost_usd=0.1, demotions=[line])
    assert report["clusters"][WEATHER]["demotions"] == [line]
    # A restart does not undo it: a router started on a config written before the demotion serves it as shadow,
    # one written after it (S6 or the refresh decided again) as the config says.
    for written_at, mode in (("2026-01-01T00:00:00+00:00", "shadow"), ("2999-01-01T00:00:00+00:00", "selective")):
        config = responder.config.model_copy(update={"written_at": datetime.fromisoformat(written_at)})
        restarted = RouterResponder(config, cluster_model(), embed=bag_of_words, generator=sure_slm(set()))
        assert restarted.routes[WEATHER].mode == mode
        restarted.close()


def test_a_cluster_at_parity_on_its_audits_keeps_its_mode(tmp_path):
    responder = selective_router(
        tmp_path, sure_slm(set()), audit_share=1.0, demotion={"parity": 0.9, "min_test_calls": 3}
    )
    with AuditedProxy(tmp_path / "store", responder) as proxy:
        served = [proxy.ask(place) for place in ("Paris", "Berlin", "Tokyo", "Rome")]
    assert served == [SLM_MODEL] * 4 and not (tmp_path / "promotions.jsonl").exists()
    assert responder.audits.tally.figures(WEATHER).accuracy == 1.0


def test_a_failed_audit_stores_the_slms_call_as_it_was(tmp_path):
    responder = selective_router(tmp_path, sure_slm(set()), audit_share=1.0)
    with AuditedProxy(tmp_path / "store", responder) as proxy:
        assert proxy.ask("Paris", model="broken") == SLM_MODEL  # the stand-in LLM answers this model with a 500
        stats, [record] = dict(proxy.app.state.stats), proxy.records()
    assert (stats["audits"], stats["audit_failures"]) == (0, 1)
    assert "origin" not in record.metadata and "audit" not in record.metadata["route"]
    assert record.metadata["route"]["route"] == "slm" and not record.cost_usd  # the SLM's answer, as served


class MemorySLM:
    """An SLM stand-in that learns: training stores each call's answer by its request; it answers a request it was
    trained on with that answer, sure of it (mean log-prob -0.01), and any other with a guess it is unsure of (-3).
    (The tiny random llama does not learn a request -> city mapping in a few steps, so it cannot show this.)"""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def train(self, records: list[CallRecord]) -> None:
        self.known |= {record.user_request: render_target(record.response) for record in records}

    def __call__(self, cluster_id: int, records: list[CallRecord]) -> list[Generation]:
        guess = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
        return [
            Generation(
                self.known.get(r.user_request, guess),
                5.0,
                10,
                12,
                features(-0.01 if r.user_request in self.known else -3.0),
            )
            for r in records
        ]


def logged_call(place: str) -> CallRecord:
    answer = ToolCall(id="call_1", name="get_weather", arguments=json.dumps({"city": place}))
    return CallRecord(
        record_id=f"log-{place}",
        messages=body(WEATHER, place)["messages"],
        tools=body(WEATHER, place)["tools"],
        response=ChatMessage(role="assistant", tool_calls=[answer]),
    )


def test_coverage_rises_on_a_cluster_once_its_deferred_calls_come_back(tmp_path):
    known, unknown = ["Paris", "Berlin", "Tokyo"], ["Oslo", "Cairo", "Quito", "Perth", "Lima"]
    slm = MemorySLM()
    slm.train([logged_call(place) for place in known])  # the conversion's training calls
    gate = SelectiveGate.load(write_gate(tmp_path))
    held_out = [logged_call(place) for place in known + unknown]  # the LLM's answers are the reference

    def coverage() -> tuple[float, float]:
        """Share of the held-out calls the served gate accepts, and the accepted answers' full-call accuracy."""
        answers = slm(WEATHER, held_out)
        accepted = [(r, a) for r, a in zip(held_out, answers) if gate.verdict(a.confidence).accepted]
        right = [agreement(parse_completion(a.text), r.response) for r, a in accepted]
        return len(accepted) / len(held_out), sum(right) / len(right)

    before = coverage()
    # Production: the router serves the cluster selectively; what the SLM is unsure of is deferred to the LLM, and
    # the day's first two calls it keeps are audited.
    responder = selective_router(tmp_path, slm, audit_share=0.0, audit_min_per_day=2)
    with AuditedProxy(tmp_path / "store", responder) as proxy:
        served = {place: proxy.ask(place) for place in known + unknown}
        stored = proxy.records()
    assert served == {**dict.fromkeys(known, SLM_MODEL), **dict.fromkeys(unknown, "gpt-4o")}
    # The refresh: S2 keeps the audited and deferred calls (the LLM answered them); the audited ones are held out
    # (the threshold is recalibrated on them), the deferred ones trained on.
    plain = CurateConfig(languages=None, dedupe_exact=False, near_duplicate_threshold=None)
    batch = curate(stored, plain).kept
    assert sorted(r.metadata["origin"] for r in batch) == ["audited"] * 2 + ["deferred"] * len(unknown)
    history = [logged_call(place) for place in known] + batch
    assignments = pd.DataFrame({"record_id": [r.record_id for r in history], "cluster_id": WEATHER})
    origins = {r.record_id: r.metadata.get("origin", "log") for r in history}
    splits = refresh_splits(assignments, {r.record_id for r in batch}, {}, 2, 0, 2, origins=origins)
    train_ids, test_ids = (set(splits[splits.split == split].record_id) for split in ("train", "test"))
    assert {origins[r] for r in test_ids} == {"audited"}
    assert {r.record_id for r in batch if origins[r.record_id] == "deferred"} <= train_ids
    slm.train([r for r in history if r.record_id in train_ids])

    after = coverage()
    assert before[0] == pytest.approx(len(known) / len(held_out)) and after[0] == 1.0  # coverage rises...
    assert before[1] == after[1] == 1.0  # ...at the same accuracy on the accepted calls
