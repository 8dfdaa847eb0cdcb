"""Search over transcripts with DuckDB.

Only segments from each item's newest ``ok`` run are searched, so an item
processed many times appears once and half-recorded attempts never show.
Ranking: segments holding the whole phrase first, then by the share of the
query's words they hold, then by the recogniser's confidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from archivox.catalog.store import Catalog

_NON_WORD = re.compile(r"[^\w\s']+", re.UNICODE)


def normalise(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


@dataclass(frozen=True)
class SearchHit:
    item_id: str
    path: str
    collection: str
    start_s: float
    end_s: float
    text: str
    score: float
    phrase_start_s: float | None  # the time of the phrase's first word, when word timings allow


_QUERY = """
WITH latest AS (
    SELECT item_id, run_id, path, collection
    FROM items WHERE status = 'ok'
    QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY finished_at DESC) = 1
),
candidates AS (
    SELECT s.item_id, l.path, l.collection, s.run_id, s.segment_index, s.start_s, s.end_s, s.text,
           s.avg_logprob,
           trim(regexp_replace(lower(s.text), '[^[:alnum:][:space:]'']+', ' ', 'g')) AS norm
    FROM segments s JOIN latest l USING (item_id, run_id)
)
SELECT item_id, path, collection, run_id, segment_index, start_s, end_s, text,
       (CASE WHEN (' ' || regexp_replace(norm, '\\s+', ' ', 'g') || ' ') LIKE ('% ' || $phrase || ' %') THEN 1.0 ELSE 0.0 END)
       + len(list_intersect(list_distinct($tokens), string_split(regexp_replace(norm, '\\s+', ' ', 'g'), ' ')))
         / greatest(len(list_distinct($tokens)), 1) AS score,
       avg_logprob
FROM candidates
WHERE score > 0
ORDER BY score DESC, avg_logprob DESC, item_id, start_s
LIMIT $limit
"""


def search(catalog: Catalog, query: str, limit: int = 20) -> list[SearchHit]:
    """Segments matching ``query``, best matches first."""
    phrase = normalise(query)
    if not phrase:
        return []
    tokens = phrase.split()
    connection = catalog.duckdb()
    rows = connection.execute(_QUERY, {"phrase": phrase, "tokens": tokens, "limit": limit}).fetchall()
    hits = []
    for item_id, path, collection, run_id, segment_index, start_s, end_s, text, score, _ in rows:
        hits.append(
            SearchHit(
                item_id=item_id,
                path=path,
                collection=collection or "",
                start_s=float(start_s),
                end_s=float(end_s),
                text=text.strip(),
                score=float(score),
                phrase_start_s=_phrase_start(connection, run_id, item_id, segment_index, tokens),
            )
        )
    return hits


def _phrase_start(connection, run_id: str, item_id: str, segment_index: int, tokens: list[str]) -> float | None:
    words = connection.execute(
        "SELECT word, start_s FROM words WHERE run_id = ? AND item_id = ? AND segment_index = ? ORDER BY word_index",
        [run_id, item_id, segment_index],
    ).fetchall()
    norm = [normalise(w) for w, _ in words]
    for i in range(len(norm) - len(tokens) + 1):
        if norm[i : i + len(tokens)] == tokens:
            return float(words[i][1])
    for i, w in enumerate(norm):
        if w == tokens[0]:
            return float(words[i][1])
    return None
