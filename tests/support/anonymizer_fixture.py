"""One Presidio + spaCy Anonymizer per test session (loading takes seconds), shared by the S2 test modules."""

from functools import lru_cache

from components.curate.anonymize import AnonymizeConfig, Anonymizer
from components.curate.pseudonyms import PseudonymConfig

# Tags, not the default surrogates: a test then sees exactly which span was replaced by which entity type.
CFG = AnonymizeConfig(
    input="data/collected.parquet",
    output="data/curated.parquet",
    audit="reports/anon.json",
    pseudonyms=PseudonymConfig(style="tag"),
)


@lru_cache(maxsize=1)
def shared_anonymizer() -> Anonymizer:
    return Anonymizer(CFG)
