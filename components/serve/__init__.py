"""Serving: the logging proxy (S1's live source), the router that sends each call to its cluster's SLM or the LLM,
the OpenAI-compatible SLM server, exports, the audit stream and the route report (the engines and the adapter pool are
components/slm's). Imports core, collect (the proxy writes its store), discover's cluster model, slm and evaluate's
gate rule (a cluster whose audited calls fail it is demoted: components/evaluate/demotion.py)."""

from components.serve.proxy import PROXY_KEYS_ENV, serve
from components.serve.route_report import RouteReportConfig, route_report, write_route_report
from components.serve.service import RouterResponder, load_router_config

__all__ = [
    "PROXY_KEYS_ENV",
    "RouteReportConfig",
    "RouterResponder",
    "load_router_config",
    "route_report",
    "serve",
    "write_route_report",
]
