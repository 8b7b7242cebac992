"""S3 discover: embed each call's task text, cluster (UMAP + HDBSCAN), keep cluster ids stable across refits, label
clusters, score their SLM fitness and split them; the saved cluster model assigns new calls. Imports core only."""

from components.discover.discovery import DiscoverConfig, discover, embed_records, write_cluster_report
from components.discover.identity import assign, load_model, save_model

__all__ = ["DiscoverConfig", "assign", "discover", "embed_records", "load_model", "save_model", "write_cluster_report"]
