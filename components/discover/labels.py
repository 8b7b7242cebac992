"""Cluster names: the class-based TF-IDF (c-TF-IDF) terms of each cluster, as in BERTopic, without template words,
anonymization placeholders or an agent's boilerplate."""

from __future__ import annotations

import re

import numpy as np

from components.discover.clustering import OUTLIER

# Section names of the task_text template: present in every text, so they must never name a cluster.
_TEMPLATE_WORDS = ["system", "tools", "request"]
# S2's pseudonyms (<PERSON_1>, <LOCATION_2>...) say nothing about the task; keep them out of the labels.
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")
# A term in more than this share of all calls (given at least _BOILERPLATE_MIN_TEXTS calls) is boilerplate;
# judged on a sample of at most _BOILERPLATE_SAMPLE calls (a share needs no more).
_BOILERPLATE_SHARE = 0.9
_BOILERPLATE_MIN_TEXTS = 20
_BOILERPLATE_SAMPLE = 5000


def label_clusters(texts: list[str], labels: np.ndarray, top_terms: int) -> dict[int, list[str]]:
    """The ``top_terms`` highest c-TF-IDF terms of each cluster (outliers excluded), as in BERTopic.

    All texts of a cluster form one document; a term's weight is its L1-normalised frequency in the cluster times
    ``log(1 + A / f)``, with ``A`` the average number of words per cluster and ``f`` the term's total frequency.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    labels = np.asarray(labels)
    cluster_ids = sorted(int(c) for c in set(labels.tolist()) if c != OUTLIER)
    if not cluster_ids:
        return {}
    texts = [_PLACEHOLDER.sub(" ", text) for text in texts]
    stop_words = set(ENGLISH_STOP_WORDS) | set(_TEMPLATE_WORDS) | _boilerplate_terms(texts, ENGLISH_STOP_WORDS)
    members: dict[int, list[str]] = {c: [] for c in cluster_ids}
    for text, label in zip(texts, labels.tolist()):
        if label != OUTLIER:
            members[label].append(text)
    documents = [" ".join(members[c]) for c in cluster_ids]
    vectorizer = CountVectorizer(stop_words=sorted(stop_words))
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(float)
    except ValueError:  # only stop words (or nothing) in the texts
        return {c: [] for c in cluster_ids}
    term_frequency = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    average_words = counts.sum() / len(cluster_ids)
    inverse_frequency = np.log(1.0 + average_words / np.maximum(counts.sum(axis=0), 1.0))
    scores = term_frequency * inverse_frequency
    vocabulary = vectorizer.get_feature_names_out()
    result = {}
    for row, cluster_id in enumerate(cluster_ids):
        order = np.argsort(-scores[row], kind="stable")[:top_terms]
        result[cluster_id] = [str(vocabulary[i]) for i in order if scores[row, i] > 0]
    return result


def _boilerplate_terms(texts: list[str], stop_words: frozenset[str]) -> set[str]:
    """Terms in nearly every call (an agent's shared system prompt): they name no task, yet their sheer
    frequency would top every cluster's c-TF-IDF. Only judged on enough calls to tell boilerplate from chance."""
    from sklearn.feature_extraction.text import CountVectorizer

    if len(texts) < _BOILERPLATE_MIN_TEXTS:
        return set()
    if len(texts) > _BOILERPLATE_SAMPLE:
        picked = np.random.default_rng(0).choice(len(texts), _BOILERPLATE_SAMPLE, replace=False)
        texts = [texts[i] for i in sorted(picked)]
    try:
        presence = CountVectorizer(stop_words=sorted(stop_words), binary=True).fit(texts)
    except ValueError:
        return set()
    share = np.asarray(presence.transform(texts).mean(axis=0)).ravel()
    return {str(term) for term, s in zip(presence.get_feature_names_out(), share) if s > _BOILERPLATE_SHARE}
