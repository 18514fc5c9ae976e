"""The embedded corpus: English -> French-like sentence pairs from a small grammar.

Written for this project (its own vocabulary and rules, deterministic from a seed), so
the translator can be trained and judged without downloading anything. It has the
phenomena that make translation more than word-for-word substitution, which is what
attention has to learn to align:

- adjective placement: colour and most adjectives follow the noun ("the black cat" ->
  "le chat noir"), a few precede it ("the small cat" -> "le petit chat");
- gender and number agreement of articles, demonstratives and adjectives ("the black
  mice" -> "les souris noires"), elision and contraction ("the tree" -> "l'arbre",
  "this tree" -> "cet arbre", "near the garden" -> "près du jardin");
- English "a"/"an";
- tense: present, past ("ate" -> "a mangé", two words) and future ("will eat" ->
  "mangera", one word), with subject-verb agreement;
- relative clauses ("the cat that saw the dog ...") and clauses joined by "and", so
  sentences reach 40-60 words.

>>> from attend.data import synthetic_pairs
>>> synthetic_pairs(2, seed=1)[0]  # doctest: +SKIP
('the small dogs chased a red apple .', 'les petits chiens ont chassé une pomme rouge .')
"""
from __future__ import annotations

import random
from typing import Optional

from .. import _check

__all__ = ["synthetic_pairs", "SYNTHETIC_EXAMPLE"]

SYNTHETIC_EXAMPLE = ("the black cat ate the mouse .", "le chat noir a mangé la souris .")

# (english singular, english plural, french singular, french plural, gender)
_NOUNS = [
    ("cat", "cats", "chat", "chats", "m"), ("dog", "dogs", "chien", "chiens", "m"),
    ("mouse", "mice", "souris", "souris", "f"), ("bird", "birds", "oiseau", "oiseaux", "m"),
    ("girl", "girls", "fille", "filles", "f"), ("boy", "boys", "garçon", "garçons", "m"),
    ("woman", "women", "femme", "femmes", "f"), ("man", "men", "homme", "hommes", "m"),
    ("child", "children", "enfant", "enfants", "m"), ("horse", "horses", "cheval", "chevaux", "m"),
    ("cow", "cows", "vache", "vaches", "f"), ("apple", "apples", "pomme", "pommes", "f"),
    ("car", "cars", "voiture", "voitures", "f"), ("book", "books", "livre", "livres", "m"),
    ("tree", "trees", "arbre", "arbres", "m"), ("house", "houses", "maison", "maisons", "f"),
    ("garden", "gardens", "jardin", "jardins", "m"), ("river", "rivers", "rivière", "rivières", "f"),
    ("table", "tables", "table", "tables", "f"), ("letter", "letters", "lettre", "lettres", "f"),
    ("friend", "friends", "ami", "amis", "m"), ("teacher", "teachers", "professeur", "professeurs", "m"),
    ("owl", "owls", "hibou", "hiboux", "m"), ("egg", "eggs", "œuf", "œufs", "m"),
]
# (english, m sg, f sg, m pl, f pl, precedes the noun in French)
_ADJECTIVES = [
    ("black", "noir", "noire", "noirs", "noires", False), ("white", "blanc", "blanche", "blancs", "blanches", False),
    ("red", "rouge", "rouge", "rouges", "rouges", False), ("green", "vert", "verte", "verts", "vertes", False),
    ("happy", "heureux", "heureuse", "heureux", "heureuses", False),
    ("tired", "fatigué", "fatiguée", "fatigués", "fatiguées", False),
    ("lazy", "paresseux", "paresseuse", "paresseux", "paresseuses", False),
    ("angry", "fâché", "fâchée", "fâchés", "fâchées", False),
    ("small", "petit", "petite", "petits", "petites", True), ("big", "grand", "grande", "grands", "grandes", True),
    ("young", "jeune", "jeune", "jeunes", "jeunes", True), ("pretty", "joli", "jolie", "jolis", "jolies", True),
]
# (en 3sg, en plural, en past, fr 3sg, fr 3pl, fr past participle, fr future 3sg, fr future 3pl)
_VERBS = [
    ("eats", "eat", "ate", "mange", "mangent", "mangé", "mangera", "mangeront"),
    ("sees", "see", "saw", "voit", "voient", "vu", "verra", "verront"),
    ("chases", "chase", "chased", "chasse", "chassent", "chassé", "chassera", "chasseront"),
    ("likes", "like", "liked", "aime", "aiment", "aimé", "aimera", "aimeront"),
    ("finds", "find", "found", "trouve", "trouvent", "trouvé", "trouvera", "trouveront"),
    ("watches", "watch", "watched", "regarde", "regardent", "regardé", "regardera", "regarderont"),
    ("follows", "follow", "followed", "suit", "suivent", "suivi", "suivra", "suivront"),
    ("takes", "take", "took", "prend", "prennent", "pris", "prendra", "prendront"),
]
# (english, french; "de" contracts with the article)
_PREPOSITIONS = [("in", "dans"), ("near", "près de"), ("with", "avec"), ("under", "sous"),
                 ("behind", "derrière"), ("far from", "loin de")]
_VOWEL_SOUND = set("aeiouhœéè")


def _elide(words: list[str]) -> list[str]:
    """French elision and contraction on a word list: le/la + vowel -> l', ce + vowel -> cet,
    de + le -> du, de + les -> des."""
    elided: list[str] = []
    for w in words:
        if elided and w[0] in _VOWEL_SOUND and elided[-1] in ("le", "la"):
            elided[-1] = "l'"
        elif elided and w[0] in _VOWEL_SOUND and elided[-1] == "ce":
            elided[-1] = "cet"
        elided.append(w)
    out: list[str] = []
    for w in elided:
        if out and out[-1] == "de" and w in ("le", "les"):
            out[-1] = "du" if w == "le" else "des"
        else:
            out.append(w)
    return out


class _Grammar:
    def __init__(self, rng: random.Random, relative_p: float, pp_p: float):
        self.rng, self.relative_p, self.pp_p = rng, relative_p, pp_p

    def noun_phrase(self, depth: int) -> tuple[list[str], list[str], bool]:
        """Returns (english words, french words, plural)."""
        r = self.rng
        en_sg, en_pl, fr_sg, fr_pl, gender = r.choice(_NOUNS)
        plural = r.random() < 0.35
        det = r.choice(["the", "the", "a", "this"]) if not plural else r.choice(["the", "the", "some", "these"])
        fr_det = {"the": "les" if plural else ("le" if gender == "m" else "la"),
                  "a": "un" if gender == "m" else "une", "some": "des",
                  "this": "ce" if gender == "m" else "cette", "these": "ces"}[det]
        slot = (2 if plural else 0) + (1 if gender == "f" else 0) + 1
        # up to two adjectives, at most one on each side of the French noun
        first = r.choice(_ADJECTIVES)
        adjs = [] if r.random() < 0.4 else [first]
        if adjs and r.random() < 0.3:
            adjs.append(r.choice([a for a in _ADJECTIVES if a[5] != first[5]]))
        fr_pre = [a[slot] for a in adjs if a[5]]
        fr_post = [a[slot] for a in adjs if not a[5]]
        en = [det] + [a[0] for a in adjs] + [en_pl if plural else en_sg]
        if en[0] == "a" and en[1][0] in "aeiou":
            en[0] = "an"
        fr = [fr_det] + fr_pre + [fr_pl if plural else fr_sg] + fr_post
        if depth > 0 and r.random() < self.relative_p:
            ven, vfr = self.verb_phrase(plural, depth - 1)
            en, fr = en + ["that"] + ven, fr + ["qui"] + vfr
        return en, fr, plural

    def verb_phrase(self, plural: bool, depth: int) -> tuple[list[str], list[str]]:
        r = self.rng
        v = r.choice(_VERBS)
        tense = r.choice(["present", "past", "future"])
        if tense == "present":
            en, fr = [v[1] if plural else v[0]], [v[4] if plural else v[3]]
        elif tense == "past":
            en, fr = [v[2]], ["ont" if plural else "a", v[5]]
        else:
            en, fr = ["will", v[1]], [v[7] if plural else v[6]]
        oen, ofr, _ = self.noun_phrase(depth)
        en, fr = en + oen, fr + ofr
        if depth > 0 and r.random() < self.pp_p:
            pen, pfr = r.choice(_PREPOSITIONS)
            nen, nfr, _ = self.noun_phrase(depth - 1)
            en, fr = en + pen.split() + nen, fr + pfr.split() + nfr
        return en, fr

    def clause(self, depth: int) -> tuple[list[str], list[str]]:
        sen, sfr, plural = self.noun_phrase(depth)
        ven, vfr = self.verb_phrase(plural, depth)
        return sen + ven, sfr + vfr


def _join(words: list[str]) -> str:
    return " ".join(words).replace("' ", "'")


_SHORTEST = 6  # tokens of the shortest sentence: determiner, noun, verb, determiner, noun, "."


def synthetic_pairs(n: int, *, seed: int = 0, max_clauses: int = 3, depth: int = 2,
                    relative_p: float = 0.3, pp_p: float = 0.3,
                    max_words: Optional[int] = None) -> list[tuple[str, str]]:
    """``n`` (english, french) sentence pairs, deterministic from ``seed``.

    Each sentence is 1..``max_clauses`` clauses (1 in 2 have one, 1 in 6 three) joined by "and" / "et"; noun phrases may
    carry a relative clause and verb phrases a prepositional phrase, nested ``depth`` deep.
    ``max_words`` drops (and redraws) sentences whose English side is longer.
    """
    _check.integer(n, "n", low=0)
    _check.integer(max_clauses, "max_clauses", low=1)
    _check.integer(depth, "depth", low=0)
    _check.integer(max_words, "max_words", low=_SHORTEST, optional=True,
                   expected=f"an int >= {_SHORTEST} (the shortest sentence, 'the cat eats the dog .', has {_SHORTEST} "
                            "tokens), or None")
    for name, p in (("relative_p", relative_p), ("pp_p", pp_p)):
        _check.number(p, name, low=0, high=1, expected="a probability in [0, 1]")
    rng = random.Random(seed)
    g = _Grammar(rng, relative_p, pp_p)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        en: list[str] = []
        fr: list[str] = []
        for c in range(min(max_clauses, rng.choice([1, 1, 1, 2, 2, 3]))):
            cen, cfr = g.clause(depth)
            if c:
                en, fr = en + ["and"], fr + ["et"]
            en, fr = en + cen, fr + cfr
        if max_words is not None and len(en) + 1 > max_words:
            continue
        out.append((_join(en + ["."]), _join(_elide(fr) + ["."])))
    return out
