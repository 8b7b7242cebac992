"""S2 curate: filter (schema, refusals, language, near-duplicates) and anonymize the collected calls with Presidio
and stable pseudonyms, and write the audit. Imports core only."""

from components.curate.anonymize import AnonymizeConfig, Anonymizer, anonymize_records, load_deny_list
from components.curate.audit import render_audit_html
from components.curate.filters import CurateConfig, curate

__all__ = [
    "AnonymizeConfig",
    "Anonymizer",
    "CurateConfig",
    "anonymize_records",
    "curate",
    "load_deny_list",
    "render_audit_html",
]
