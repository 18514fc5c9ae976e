"""The concept guide (docs/): every page's examples print what the page says they print,
the four translations keep the English pages' code, output, figures and links, and the
site builds offline (Sphinx, warnings are errors) with every page loading in a real
headless Chromium without errors or network requests."""
from __future__ import annotations

import contextlib
import io
import io as _io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LANGS = ("en", "id", "pl", "zh", "es")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def pages(lang: str) -> list[Path]:
    return sorted((DOCS / lang).glob("[0-9][0-9]-*.md"))


def blocks(text: str) -> list[tuple[str, str, int, int]]:
    """Fenced blocks: (info string, body, start, end)."""
    return [(m.group(1).strip(), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]


def examples(text: str) -> list[tuple[str, str | None]]:
    """Each python block and the ```text block right after it (its printed output), if any."""
    found = blocks(text)
    out = []
    for k, (info, body, _, end) in enumerate(found):
        if info != "python":
            continue
        expected = None
        if k + 1 < len(found) and found[k + 1][0] == "text" and not text[end:found[k + 1][2]].strip():
            expected = found[k + 1][1]
        out.append((body, expected))
    return out


def without_comments(code: str) -> str:
    """The code's tokens without comments (translations may translate comments)."""
    toks = [t for t in tokenize.generate_tokens(_io.StringIO(code).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)]
    return " ".join(t.string for t in toks)


def figures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)


def links(text: str) -> list[str]:
    return [t for t in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", text)]


EN = pages("en")


def test_there_is_a_page_per_concept():
    assert len(EN) == 13
    import importlib.util

    spec = importlib.util.spec_from_file_location("attend_docs_figures", DOCS / "figures.py")
    figs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figs)
    for page in EN:
        text = page.read_text(encoding="utf-8")
        assert text.startswith("# "), page.name
        kinds = [b[0] for b in blocks(text)]
        assert "none" in kinds, f"{page.name}: no equation block"
        assert any(expected for _, expected in examples(text)), f"{page.name}: no example with checked output"
        shown = figures(text)
        assert shown and all(f.startswith("../_generated/") for f in shown), page.name
        for f in shown:  # each figure is drawn by docs/figures.py
            assert Path(f).stem in figs.FIGURES, f"{page.name}: {f} is not drawn by docs/figures.py"


@pytest.mark.parametrize("page", EN, ids=[p.stem for p in EN])
def test_examples_print_what_the_page_says(page):
    text = page.read_text(encoding="utf-8")
    ns: dict = {"__name__": "__main__"}
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    try:
        for k, (code, expected) in enumerate(examples(text)):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, f"{page.name} example {k + 1}", "exec"), ns)
            printed = buf.getvalue()
            if expected is None:
                assert printed == "", f"{page.name} example {k + 1} prints output the page does not show"
            else:
                assert printed.rstrip("\n") == expected.rstrip("\n"), f"{page.name} example {k + 1}"
    finally:
        torch.set_printoptions(profile="default")
        torch.set_num_threads(threads)


TRANSLATED = [(lang, p) for lang in LANGS[1:] for p in EN]


@pytest.mark.parametrize("lang,page", TRANSLATED, ids=[f"{lang}-{p.stem}" for lang, p in TRANSLATED])
def test_translations_keep_code_output_figures_and_links(lang, page):
    mine = DOCS / lang / page.name
    assert mine.exists(), f"docs/{lang}/{page.name} is missing"
    en, tr = page.read_text(encoding="utf-8"), mine.read_text(encoding="utf-8")
    en_ex, tr_ex = examples(en), examples(tr)
    assert len(tr_ex) == len(en_ex), f"docs/{lang}/{page.name}: {len(tr_ex)} examples, English has {len(en_ex)}"
    for k, ((a, a_out), (b, b_out)) in enumerate(zip(en_ex, tr_ex)):
        assert without_comments(b) == without_comments(a), f"docs/{lang}/{page.name} example {k + 1}: code differs"
        assert b_out == a_out, f"docs/{lang}/{page.name} example {k + 1}: printed output differs"
    assert figures(tr) == figures(en), f"docs/{lang}/{page.name}: figures differ"
    assert links(tr) == links(en), f"docs/{lang}/{page.name}: links differ"
    assert [b[0] for b in blocks(tr)] == [b[0] for b in blocks(en)], f"docs/{lang}/{page.name}: blocks differ"
    assert tr.startswith("# ") and tr.split("\n", 1)[0] != en.split("\n", 1)[0], "the title is translated"


@pytest.mark.parametrize("lang", LANGS[1:])
def test_each_language_has_its_contents_page(lang):
    index = (DOCS / lang / "index.md").read_text(encoding="utf-8")
    for p in EN:
        assert f"\n{p.stem}\n" in index, f"docs/{lang}/index.md does not list {p.stem}"


# -- the site ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx", reason="Sphinx is not installed (extra 'docs')")
    pytest.importorskip("myst_parser", reason="myst-parser is not installed (extra 'docs')")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # what scripts/docs runs: warnings (a missing image, a broken link, a page in no contents) are errors
    r = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", str(DOCS), str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_the_site_builds_with_every_page_and_figure(site):
    for lang in LANGS:
        for p in [DOCS / lang / "index.md", *EN]:
            assert (site / lang / (p.stem + ".html")).exists(), f"{lang}/{p.stem}.html"
    for lang, code in (("zh", "zh-Hans"), ("pl", "pl"), ("en", "en")):  # browsers pick fonts by it
        assert f'<html lang="{code}"' in (site / lang / "12-word-sense.html").read_text(encoding="utf-8")
    images = {p.name for p in (site / "_images").iterdir()}
    for p in EN:
        for f in figures(p.read_text(encoding="utf-8")):
            assert Path(f).name in images


def test_every_page_loads_in_chromium_offline(site, browser):
    pages_html = sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)
    assert len(pages_html) >= 5 * 14 + 1
    problems = []
    page = browser.new_page()
    events: list[str] = []
    page.on("console", lambda m: events.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: events.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: events.append(f"request failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith("file://") else events.append(f"network request: {r.url}"))
    for path in pages_html:
        events.clear()
        page.goto(path.as_uri(), wait_until="load")
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        title = page.title()
        if events or broken or not title:
            problems.append((str(path.relative_to(site)), events[:], broken))
    page.close()
    assert problems == []
