"""Merging decodes word by word (ROVER), and decoding a view at several speeds."""

from __future__ import annotations

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.tasks.transcribe import (
    Segment, TranscribeOptions, Transcript, Word, combine, combine_votes, transcribe_candidates,
)
from archivox.tasks.vote import vote
from signals import word_error_rate

TRUTH = "we walked down to the river and back"


def _seg(start_s: float, end_s: float, text: str, probability: float = 0.8, logprob: float = -0.3,
         flags=()) -> Segment:
    """A segment whose words share its span evenly, each as sure as ``probability``."""
    parts = text.split()
    step = (end_s - start_s) / len(parts)
    words = [Word(start_s + i * step, start_s + (i + 1) * step, " " + w, probability) for i, w in enumerate(parts)]
    return Segment(0, start_s, end_s, text, logprob, 0.05, 1.2, words=words, flags=list(flags))


def _t(*segments: Segment) -> Transcript:
    return Transcript(list(segments), "en", 1.0, 20.0, "tiny.en", "0" * 64)


def test_each_word_is_the_one_most_decodes_share():
    # Every decode has one word wrong, each a different one: no decode is
    # right, so choosing one cannot be, but the vote is.
    results = {
        "denoised": _t(_seg(0.0, 4.0, "we walked down to the liver and back", 0.9)),
        "pre_denoise": _t(_seg(0.1, 4.0, "she walked down to the river and back", 0.7)),
        "mix": _t(_seg(0.0, 4.1, "we walked town to the river and back", 0.6)),
    }
    merged = vote(results)
    assert merged.text() == TRUTH
    assert merged.candidate == "vote" and [s.candidate for s in merged.segments] == ["vote"]
    assert merged.evidence["vote"]["decodes"] == 3 and merged.evidence["vote"]["words"] == 8
    assert merged.evidence["vote"]["unanimous_share"] == pytest.approx(5 / 8)
    assert set(merged.evidence["scores"]) == set(results)
    assert all(v < 1.0 for v in merged.evidence["agreement_with_chosen"].values())
    # Each word carries how many of the decodes read it: the disputed ones are those to listen to.
    shares = {w.word.strip(): w.agreement for w in merged.segments[0].words}
    assert shares == {"we": pytest.approx(2 / 3, abs=1e-4), "walked": 1.0, "down": pytest.approx(2 / 3, abs=1e-4),
                      "to": 1.0, "the": 1.0, "river": pytest.approx(2 / 3, abs=1e-4), "and": 1.0, "back": 1.0}
    # The decodes themselves are left as they were.
    assert results["denoised"].text() == "we walked down to the liver and back"
    assert all(w.agreement is None for s in results["denoised"].segments for w in s.words)


def test_a_word_one_decode_adds_or_drops_is_outvoted():
    results = {
        "a": _t(_seg(0.0, 4.0, "we walked down to the river and back")),
        "b": _t(_seg(0.0, 4.0, "we walked down to the river and back again")),  # an insertion
        "c": _t(_seg(0.0, 4.0, "we walked to the river and back")),  # a deletion
    }
    assert vote(results).text() == TRUTH


def test_a_loop_in_one_decode_is_outvoted_and_a_shared_loop_is_flagged():
    loop = "and back and back and back and back and back"
    results = {
        "a": _t(_seg(0.0, 4.0, TRUTH)),
        "b": _t(_seg(0.0, 4.0, TRUTH)),
        "c": _t(_seg(0.0, 4.0, "we walked down to the river " + loop, 0.95, flags=["repetition"])),
    }
    merged = vote(results)
    assert merged.text() == TRUTH and merged.segments[0].flags == []

    # Where most decodes share the loop, it stays, flagged, never dropped silently.
    shared = {n: _t(_seg(0.0, 4.0, "we walked down to the river " + loop)) for n in "abc"}
    kept = vote(shared)
    assert kept.text().endswith(loop) and "repetition" in kept.segments[0].flags
    assert kept.segments[0].compression_ratio > 1.5


def test_ties_go_to_the_more_confident_decode():
    results = {
        "unsure_1": _t(_seg(0.0, 2.0, "the liver", 0.3)),
        "sure_1": _t(_seg(0.0, 2.0, "the river", 0.9)),
        "unsure_2": _t(_seg(0.0, 2.0, "the liver", 0.3)),
        "sure_2": _t(_seg(0.0, 2.0, "the river", 0.8)),
    }
    assert vote(results).text() == "the river"


def test_voted_words_keep_their_spelling_times_and_the_confident_decodes_segments():
    results = {
        "a": _t(_seg(0.0, 2.0, "Hello, world.", 0.9), _seg(2.0, 4.0, "It rained.", 0.9)),
        "b": _t(_seg(0.05, 4.0, "hello world it rained", 0.5)),
        "c": _t(_seg(0.0, 4.0, "hello word it rained", 0.4)),
    }
    merged = vote(results)
    # Compared without case or punctuation; written as the most confident decode wrote them.
    assert [s.text for s in merged.segments] == ["Hello, world.", "It rained."]
    assert [s.index for s in merged.segments] == [0, 1]
    starts = [w.start_s for s in merged.segments for w in s.words]
    assert starts == sorted(starts) and starts[0] == 0.0
    for seg in merged.segments:
        assert seg.start_s <= seg.words[0].start_s and seg.words[-1].end_s <= seg.end_s


def test_stretches_between_shared_pauses_are_voted_apart():
    # "c" hears the second sentence better, "a" the first; the pause between them is shared.
    results = {
        "a": _t(_seg(0.0, 2.0, "the tape was found", 0.9), _seg(5.0, 7.0, "in the addict", 0.9)),
        "b": _t(_seg(0.0, 2.0, "the tape was found", 0.5), _seg(5.0, 7.0, "in the attic", 0.5)),
        "c": _t(_seg(0.0, 2.0, "a tape was bound", 0.4), _seg(5.0, 7.0, "in the attic", 0.95)),
    }
    merged = vote(results)
    assert merged.text() == "the tape was found in the attic"
    assert merged.evidence["vote"]["units"] == 2


def test_a_long_stretch_is_voted_in_parts_without_losing_or_doubling_words():
    sentences = [f"sentence number {i} was read aloud" for i in range(20)]

    def decode(shift_s: float, wrong: int) -> Transcript:
        segs = [_seg(4.0 * i + shift_s, 4.0 * i + 4.0 + shift_s,
                     s.replace("read", "red") if i == wrong else s) for i, s in enumerate(sentences)]
        return _t(*segs)

    # 80 s of speech without a pause all decodes share.
    results = {"a": decode(0.0, 3), "b": decode(0.05, 11), "c": decode(-0.05, 17)}
    merged = vote(results)
    assert merged.evidence["vote"]["units"] >= 2
    assert merged.text() == " ".join(sentences)


def test_decodes_without_word_times_are_voted_by_their_text():
    plain = {n: _t(Segment(0, 0.0, 3.0, text, -0.3, 0.05, 1.2)) for n, text in
             (("a", "one two three four"), ("b", "one too three four"), ("c", "one two tree four"))}
    assert vote(plain).text() == "one two three four"


def test_text_only_in_silence_is_flagged_from_the_regions():
    results = {n: _t(_seg(0.0, 2.0, "we walked"), _seg(8.0, 9.0, "Thank you.")) for n in "abc"}
    merged = vote(results, regions=[(0.0, 2.2)])
    assert "in_silence" in merged.segments[1].flags and "in_silence" not in merged.segments[0].flags
    # Without regions the flag comes from the decodes' own segments.
    results["a"].segments[1].flags = ["in_silence"]
    assert "in_silence" in vote(results).segments[1].flags
    assert all(not s.flags for s in vote(results, flag=False).segments[:1])


def test_empty_decodes_give_an_empty_vote():
    merged = vote({n: _t() for n in "abc"})
    assert merged.text() == "" and merged.segments == [] and merged.evidence["vote"]["words"] == 0


def test_combine_follows_the_options():
    results = {n: _t(_seg(0.0, 2.0, text, p)) for n, text, p in
               (("a", "the liver", 0.9), ("b", "the river", 0.5), ("c", "the river", 0.4))}
    def copy():
        return {n: Transcript.from_dict(t.to_dict()) for n, t in results.items()}

    assert combine(copy(), TranscribeOptions()).text() == "the river"
    assert combine(copy(), TranscribeOptions(stretch_factors=(1.0,), combine="vote")).text() == "the river"
    for options in (TranscribeOptions(combine="choose"), TranscribeOptions(stretch_factors=(1.0,))):
        chosen = combine(copy(), options)  # "auto" with one speed chooses
        assert chosen.candidate in results and chosen.candidate != "vote"
    # Two decodes: nothing to vote with, so the evidence chooses.
    two = {n: Transcript.from_dict(results[n].to_dict()) for n in "ab"}
    assert combine(two, TranscribeOptions()).candidate == "a"


def test_stretch_and_combine_options_are_validated():
    with pytest.raises(ConfigError, match=r"stretch_factors=1.5 is out of range; valid range is \[0.8, 1.25\]"):
        TranscribeOptions(stretch_factors=(1.0, 1.5))
    with pytest.raises(ConfigError, match="distinct"):
        TranscribeOptions(stretch_factors=(1.0, 1.0))
    with pytest.raises(ConfigError, match="combine='best'.*'auto', 'vote' or 'choose'"):
        TranscribeOptions(combine="best")
    with pytest.raises(ConfigError, match="'dsp@1.1' is not VIEW@FACTOR.*pre_denoise"):
        TranscribeOptions(extra_decodes=("dsp@1.1",))
    with pytest.raises(ConfigError, match=r"extra_decodes factor=2.0 is out of range; valid range is \[0.8, 1.25\]"):
        TranscribeOptions(extra_decodes=("mix@2",))


def test_extra_decodes_widen_only_a_vote_over_speeds():
    assert TranscribeOptions().decodes() == {
        "denoised": (1.0, 1.05, 0.95, 1.1, 0.9), "mix": (1.0, 1.05, 0.95, 1.1, 0.9), "gtcrn": (1.0, 1.05, 0.95)}
    # A view not decoded, or a factor it is decoded at already, adds nothing.
    options = TranscribeOptions(candidates=("gtcrn", "mix"), stretch_factors=(1.0, 1.1),
                                extra_decodes=("denoised@0.9", "mix@1.1", "mix@0.95"))
    assert options.decodes() == {"gtcrn": (1.0, 1.1), "mix": (1.0, 1.1, 0.95)}
    assert TranscribeOptions(asr_input="restored").decodes() == {"restored": (1.0, 1.05, 0.95)}
    # One speed chooses between the views; extra decodes would turn that into a vote.
    one_speed = TranscribeOptions(stretch_factors=(1.0,))
    assert set(one_speed.decodes().values()) == {(1.0,)} and not combine_votes(one_speed)
    assert combine_votes(TranscribeOptions(stretch_factors=(1.0,), extra_decodes=(), combine="vote"))


@pytest.mark.slow
def test_each_speed_is_decoded_and_its_times_come_back_to_the_items_clock():
    """Real decodes of a view at three speeds: the same words at the same times, and the vote reads them."""
    tts = pytest.importorskip("archivox.tts")
    text = "The old recording was restored and then transcribed by the archive team."
    speech = 0.5 * tts.synthesize(text, rate_hz=16_000).astype(np.float32)
    audio = np.concatenate([np.zeros(16_000, np.float32), speech, np.zeros(24_000, np.float32)])
    options = TranscribeOptions(device="cpu", asr_input="restored", stretch_factors=(1.0, 1.1, 0.9))
    merged, results = transcribe_candidates({"restored": audio}, options)
    assert list(results) == ["restored", "restored@1.1", "restored@0.9"]
    assert merged.candidate == "vote" and word_error_rate(merged.text(), text) <= 0.2, merged.text()
    reference = results["restored"]
    ref_words = [w for s in reference.segments for w in s.words]
    for name in ("restored@1.1", "restored@0.9"):
        tr = results[name]
        assert tr.duration_s == pytest.approx(reference.duration_s, abs=1e-3)
        words = [w for s in tr.segments for w in s.words]
        # The speech ends about 5 s in: unmapped, the last word would be 0.5 s off at 1.1.
        assert abs(words[-1].end_s - ref_words[-1].end_s) < 0.25, name
        assert abs(words[0].start_s - ref_words[0].start_s) < 0.25, name
    # The default: every view at three speeds (and some at two more).
    assert TranscribeOptions().stretch_factors == (1.0, 1.05, 0.95)


def test_a_word_timed_into_a_pause_still_votes():
    # Whisper times a word a little outside its segment now and then; a
    # word whose middle lands in the pause between two stretches is not lost.
    results = {n: _t(_seg(0.0, 2.0, "the tape"), _seg(5.0, 7.0, "was found")) for n in "abc"}
    for n in "ab":
        last = results[n].segments[0].words[-1]
        last.start_s, last.end_s = 2.1, 2.9  # past its segment's end, inside the pause
    assert vote(results).text() == "the tape was found"


def test_word_edits_counts_insertions_deletions_and_substitutions():
    from archivox.tasks.transcribe import word_distance, word_edits

    assert word_edits("a b c".split(), "a x c d".split()) == 2  # one substitution, one insertion
    assert word_edits([], "a b".split()) == 2 and word_edits("a b".split(), []) == 2
    assert word_edits("the cat sat".split(), "cat sat the".split()) == 2
    assert word_edits("kitten sitting".split(), "kitten sitting".split()) == 0
    assert word_distance("We walked, to the river.", "we walked to the liver") == pytest.approx(1 / 5)
