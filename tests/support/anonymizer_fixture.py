"""One Presidio + spaCy Anonymizer per test session (loading takes seconds), shared by the S2 test modules."""

from functools import lru_cache

from components.curate.anonymize import AnonymizeConfig, Anonymizer

CFG = AnonymizeConfig(input="data/collected.parquet", output="data/curated.parquet", audit="reports/anon.json")


@lru_cache(maxsize=1)
def shared_anonymizer() -> Anonymizer:
    return Anonymizer(CFG)
