"""Search over transcripts with DuckDB.

Only each item's newest ``ok`` run is searched, so an item processed many
times appears once and half-recorded attempts never show.

Ranking:

1. the whole phrase, word for word. Matched on the ``words`` table, so a
   phrase that Whisper split over two segments is still found, at the time
   of its first word;
2. then segments holding some of the query's words, by the share of the
   query's *content* words they hold (a query's "the" and "of" would
   otherwise make every segment a partial hit);
3. then by the recogniser's confidence.

Segments that the hallucination check flagged are returned with their flags,
never hidden: a researcher decides what a flag means for their question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from archivox.catalog.store import Catalog

_NON_WORD = re.compile(r"[^\w\s']+", re.UNICODE)

# Function words that carry no topic. Kept short on purpose: a longer list
# starts removing words people do search for ("war", "home", "first").
STOP_WORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "had", "has", "have", "he", "her", "his", "i", "in", "is", "it", "its", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them", "then", "there", "they", "this", "to", "was", "we", "were", "what", "when", "which", "who", "will", "with", "you", "your"]
)


def normalise(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def content_tokens(tokens: list[str]) -> list[str]:
    """The query words that partial matches are scored on.

    A query made only of stop words ("to be or not to be") keeps them all,
    since then they are the content.
    """
    content = [t for t in dict.fromkeys(tokens) if t not in STOP_WORDS]
    return content or list(dict.fromkeys(tokens))


@dataclass(frozen=True)
class SearchHit:
    item_id: str
    path: str
    collection: str
    start_s: float
    end_s: float
    text: str
    score: float  # 2.0 for the whole phrase, else the share of content words held (0-1]
    phrase_start_s: float | None  # the time of the phrase's (or first matching word's) start, when word timings allow
    flags: tuple[str, ...] = field(default=())  # hallucination flags of the segment
    language: str = ""


# Items' newest ok run, optionally narrowed by collection and language. A
# failed rerun leaves the earlier transcript searchable; a withdrawal (the
# file left the archive, see archivox.prune) does not.
_LATEST = """
latest AS (
    SELECT item_id, run_id, path, collection, status
    FROM items WHERE status IN ('ok', 'withdrawn')
    QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY finished_at DESC) = 1
),
scope AS (
    SELECT item_id, run_id, path, collection FROM latest
    WHERE status = 'ok' AND ($collection IS NULL OR collection = $collection)
)
"""

_NORM_SQL = "trim(regexp_replace(regexp_replace(lower({col}), '[^[:alnum:][:space:]'']+', ' ', 'g'), '\\s+', ' ', 'g'))"

# Words are numbered through the whole item (not per segment) so that a
# phrase can run from one segment into the next. Candidates start where the
# first query word is; the next n words are joined and compared as text,
# which also copes with one spoken word normalising into two ("twenty-one").
_PHRASE_QUERY = f"""
WITH {_LATEST},
numbered AS (
    SELECT w.item_id, w.run_id, w.segment_index, w.start_s,
           {_NORM_SQL.format(col="w.word")} AS norm,
           row_number() OVER (PARTITION BY w.item_id ORDER BY w.segment_index, w.word_index) AS pos
    FROM words w JOIN scope s USING (item_id, run_id)
),
starts AS (SELECT * FROM numbered WHERE norm = $first OR starts_with(norm, $first || ' ')),
joined AS (
    SELECT st.item_id, st.run_id, st.segment_index, st.start_s,
           string_agg(n.norm, ' ' ORDER BY n.pos) AS following
    FROM starts st JOIN numbered n
      ON n.item_id = st.item_id AND n.pos BETWEEN st.pos AND st.pos + $span - 1
    GROUP BY ALL
)
SELECT j.item_id, s.path, s.collection, j.start_s AS phrase_start_s,
       g.start_s, g.end_s, g.text, g.avg_logprob, g.flags, g.language
FROM joined j
JOIN scope s USING (item_id, run_id)
JOIN segments g ON g.item_id = j.item_id AND g.run_id = j.run_id AND g.segment_index = j.segment_index
WHERE starts_with(j.following || ' ', $phrase || ' ')
  AND ($language IS NULL OR g.language = $language)
ORDER BY g.avg_logprob DESC, j.item_id, j.start_s
LIMIT $limit
"""

_PARTIAL_QUERY = f"""
WITH {_LATEST},
candidates AS (
    SELECT g.item_id, s.path, s.collection, g.run_id, g.segment_index, g.start_s, g.end_s, g.text,
           g.avg_logprob, g.flags, g.language,
           string_split({_NORM_SQL.format(col="g.text")}, ' ') AS norm_words
    FROM segments g JOIN scope s USING (item_id, run_id)
)
SELECT item_id, path, collection, run_id, segment_index, start_s, end_s, text, avg_logprob, flags, language,
       len(list_intersect($content, norm_words)) / len($content) AS score
FROM candidates
WHERE score > 0 AND ($language IS NULL OR language = $language)
ORDER BY score DESC, avg_logprob DESC, item_id, start_s
LIMIT $limit
"""


def search(
    catalog: Catalog,
    query: str,
    limit: int = 20,
    collection: str | None = None,
    language: str | None = None,
) -> list[SearchHit]:
    """Transcript segments matching ``query``, best matches first.

    ``collection`` and ``language`` (a code such as ``en``, as detected or
    given in the manifest) narrow the search to those items and segments.
    """
    phrase = normalise(query)
    if not phrase or limit <= 0:
        return []
    tokens = phrase.split()
    connection = catalog.duckdb()
    common = {"collection": collection, "language": language, "limit": limit}

    hits: list[SearchHit] = []
    seen: set[tuple[str, float]] = set()
    rows = connection.execute(
        _PHRASE_QUERY, {**common, "first": tokens[0], "phrase": phrase, "span": len(tokens)}
    ).fetchall()
    for item_id, path, coll, phrase_start_s, start_s, end_s, text, _, flags, lang in rows:
        seen.add((item_id, float(start_s)))
        hits.append(_hit(item_id, path, coll, start_s, end_s, text, 2.0, phrase_start_s, flags, lang))

    if len(hits) < limit:
        content = content_tokens(tokens)
        rows = connection.execute(_PARTIAL_QUERY, {**common, "content": content, "limit": limit + len(hits)}).fetchall()
        for item_id, path, coll, run_id, segment_index, start_s, end_s, text, _, flags, lang, score in rows:
            if (item_id, float(start_s)) in seen:
                continue
            first_time = _first_word_time(connection, run_id, item_id, segment_index, content)
            hits.append(_hit(item_id, path, coll, start_s, end_s, text, float(score), first_time, flags, lang))
            if len(hits) >= limit:
                break
    return hits[:limit]


def _hit(item_id, path, collection, start_s, end_s, text, score, phrase_start_s, flags, language) -> SearchHit:
    return SearchHit(
        item_id=item_id,
        path=path,
        collection=collection or "",
        start_s=float(start_s),
        end_s=float(end_s),
        text=(text or "").strip(),
        score=score,
        phrase_start_s=None if phrase_start_s is None else float(phrase_start_s),
        flags=tuple(flags or ()),
        language=language or "",
    )


def _first_word_time(connection, run_id: str, item_id: str, segment_index: int, content: list[str]) -> float | None:
    words = connection.execute(
        "SELECT word, start_s FROM words WHERE run_id = ? AND item_id = ? AND segment_index = ? ORDER BY word_index",
        [run_id, item_id, segment_index],
    ).fetchall()
    wanted = set(content)
    for word, start_s in words:
        if wanted & set(normalise(word).split()):
            return float(start_s)
    return None
