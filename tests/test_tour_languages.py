"""`attend tour --lang`: the tour in the five languages of the seeds."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from attend.apps import tour

TEXTS = Path(tour.__file__).parent / "tour_text"


def _fields(s: str) -> list[str]:
    return sorted(re.findall(r"\{(\w*)\}", s))


def test_every_language_has_every_sentence_with_the_same_placeholders():
    en = json.loads((TEXTS / "en.json").read_text(encoding="utf-8"))
    for lang in tour.LANGS[1:]:
        other = json.loads((TEXTS / f"{lang}.json").read_text(encoding="utf-8"))
        assert other.keys() == en.keys(), lang
        for key, value in en.items():
            assert _fields(other[key]) == _fields(value), f"{lang}.json {key}: placeholders differ"
        translated = [k for k in en if other[k] != en[k]]
        assert len(translated) >= len(en) // 2, f"{lang}.json: most sentences are not translated"


@pytest.mark.parametrize("lang", ["en", "id", "pl", "zh", "es"])
def test_tour_prints_in_each_language_with_the_same_numbers(lang):
    out_en, out = io.StringIO(), io.StringIO()
    tour.run(out_en, lang="en")
    tour.run(out, lang=lang)
    text = out.getvalue()
    words = tour.texts(lang)
    assert words["section1"] in text and words["section5"] in text
    assert text.rstrip().endswith(words["guide"].format(lang=lang))
    numbers = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")
    assert numbers.findall(text) == numbers.findall(out_en.getvalue())  # the same computation


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="lang"):
        tour.run(io.StringIO(), lang="fr")
