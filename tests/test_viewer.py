"""attend.viz.html: the offline attention viewer. Hostile token text stays text (checked by
parsing the page and in a real headless Chromium driven by Playwright), NaN weights and
long inputs, saving, and the page's controls."""
from __future__ import annotations

import base64
import json
import os
from html.parser import HTMLParser

import pytest
import torch

from attend.viz import AttentionView, attention_page

HOSTILE = ["</script><img src=x onerror=alert(1)>", "<script>window.__pwned=1</script>", "\"'><svg onload=alert(2)>",
           "a\u2028b\u2029c", "\u202eevil\u202c", "&lt;&amp;", "x" * 3000, "<!--", "]]>", "{{x}}"]


def _weights(layers, heads, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layers, heads, n, n, generator=g).softmax(-1)


class _Structure(HTMLParser):
    """Every element and attribute of a page, and the text of its JSON block."""

    def __init__(self):
        super().__init__()
        self.elements, self.data_json, self._in_data = [], None, False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, tuple(sorted(a for a, _ in attrs))))
        self._in_data = dict(attrs).get("id") == "attend-data"

    def handle_data(self, data):
        if self._in_data:
            self.data_json = data
            self._in_data = False


def _structure(page):
    s = _Structure()
    s.feed(page)
    return s


def test_hostile_tokens_add_no_markup():
    benign = attention_page([[f"t{i}" for i in range(len(HOSTILE))]], [_weights(2, 3, len(HOSTILE))])
    hostile = attention_page([HOSTILE], [_weights(2, 3, len(HOSTILE))], labels=["</title><script>alert(3)</script>"],
                             title="<b>title</b>")
    a, b = _structure(benign), _structure(hostile)
    assert a.elements == b.elements  # no new element or attribute anywhere
    doc = json.loads(b.data_json)
    assert doc["texts"][0]["sections"][0]["rows"] == HOSTILE  # and the tokens arrive intact
    assert doc["title"] == "<b>title</b>"
    block = b.data_json
    for bad in ("<", ">", "\u2028", "\u2029"):
        assert bad not in block


def test_weights_round_trip_and_nan_marked():
    w = _weights(2, 2, 4)
    w[1, 0, 2, 3] = float("nan")
    w[0, 1, 0, 0] = float("inf")
    doc = json.loads(_structure(attention_page([list("abcd")], [w])).data_json)
    sec = doc["texts"][0]["sections"][0]
    assert sec["store"] == "full" and len(sec["maps"]) == 2 * 2
    q = torch.tensor([list(base64.b64decode(m)) for m in sec["maps"]], dtype=torch.float32).view(2, 2, 4, 4)
    assert q[1, 0, 2, 3] == 255 and q[0, 1, 0, 0] == 255
    ok = torch.isfinite(w)
    assert torch.all((q[ok] / 254 - w[ok]).abs() <= 0.5 / 254 + 1e-6)


def test_per_layer_lists_and_shape_errors():
    layers = [torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3)]  # what models return: (1, H, n, n) per layer
    doc = json.loads(_structure(attention_page([["a", "b", "c"]], [layers])).data_json)
    sec = doc["texts"][0]["sections"][0]
    assert (sec["layers"], sec["heads"]) == (2, 2)
    with pytest.raises(ValueError, match=r"attentions\[0\]: weights over 3 tokens, but the text has 2"):
        attention_page([["a", "b"]], [layers])
    with pytest.raises(ValueError, match="attentions: 1 entries for 2 texts"):
        attention_page([["a"], ["b"]], [torch.rand(1, 1, 1, 1)])
    with pytest.raises(TypeError, match=r"tokens\[0\]: expected a list of strings"):
        attention_page([[1, 2]], [torch.rand(1, 1, 2, 2)])
    with pytest.raises(ValueError, match=r"attentions\[0\]: weights over 3 tokens, but the text has 2"):
        attention_page([["a", "b"]], [torch.rand(2, 2, 2, 3)])
    with pytest.raises(ValueError, match=r"attentions\[0\]: expected shape \(layers, heads, n, n\)"):
        attention_page([["a", "b"]], [torch.rand(2, 2)])


def test_long_inputs_are_refused_clearly_but_moderate_ones_fit():
    with pytest.raises(ValueError, match="600 tokens; the viewer shows at most max_tokens=512"):
        attention_page([["w"] * 600], [torch.zeros(1, 1, 600, 600)], max_tokens=512)
    with pytest.raises(ValueError, match="5000 tokens; the viewer shows at most max_tokens=4096"):
        attention_page([["w"] * 5000], [torch.zeros(1, 1, 1, 1)])
    page = attention_page([["w"] * 300], [torch.zeros(2, 4, 300, 300)], aggregates=())
    assert len(page) < 2_000_000  # 2 x 4 x 300^2 bytes, base64


def test_page_is_self_contained():
    page = attention_page([["a", "b"]], [torch.rand(1, 1, 2, 2)])
    assert "http://" not in page and "https://" not in page and " src=" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_save_never_overwrites_without_force(tmp_path):
    view = AttentionView([["a", "b"]], [torch.rand(1, 1, 2, 2)])
    path = tmp_path / "v.html"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="force"):
        view.save(path)
    assert path.read_text() == "keep me"
    view.save(path, force=True)
    assert path.read_text().startswith("<!DOCTYPE html>")


def test_a_lone_surrogate_in_the_title_or_a_label_is_saved_as_a_question_mark(tmp_path):
    # (a folder name with an undecodable byte reaches the title: before, the page could not be written)
    view = AttentionView([["a", "b\udcff"]], [torch.rand(1, 1, 2, 2)], title="Attention of bad\udcffname",
                         labels=["x\udcffy"])
    page = open(view.save(tmp_path / "v.html"), encoding="utf-8").read()
    assert "<title>Attention of bad?name</title>" in page and "x?y" in page and "b?" in page


def test_jupyter_repr_is_a_sandboxed_frame():
    view = AttentionView([HOSTILE[:2]], [torch.rand(1, 1, 2, 2)])
    frame = view._repr_html_()
    s = _structure(frame)
    assert [e[0] for e in s.elements] == ["iframe"]
    assert 'sandbox="allow-scripts allow-downloads"' in frame


def test_every_argument_is_checked_by_name():
    w = [torch.rand(1, 1, 2, 2)]
    for kw, error, message in [
        (dict(note=object()), TypeError, "note: expected None or a string, got object"),
        (dict(title=3), TypeError, "title: expected None or a string, got int"),
        (dict(labels=[1]), TypeError, "labels: expected None or a list of strings"),
        (dict(labels="ab"), TypeError, "labels: expected None or a list of strings, got str"),
        (dict(max_tokens="5"), ValueError, "max_tokens: expected an int >= 1, got '5'"),
        (dict(max_tokens=0), ValueError, "max_tokens: expected an int >= 1, got 0"),
    ]:
        with pytest.raises(error, match=message):
            AttentionView([["a", "b"]], w, **kw)
    with pytest.raises(TypeError, match="attentions: expected a list with the weights of each text, got int"):
        attention_page([["a"]], 3)
    attention_page([["a", "b"]], torch.rand(1, 1, 1, 2, 2))  # a tensor (texts, layers, heads, n, n) is a list too
    with pytest.raises(TypeError, match="path: expected a str or os.PathLike, got int"):
        AttentionView([["a", "b"]], w).save(3)


def test_a_text_without_tokens_is_refused():
    with pytest.raises(ValueError, match=r"tokens\[1\]: no tokens; the viewer needs at least one per text"):
        AttentionView([["a"], []], [torch.rand(1, 1, 1, 1), torch.rand(1, 1, 0, 0)])
    with pytest.raises(ValueError, match=r"tokens\[0\]: no tokens"):
        attention_page([[]], [torch.zeros(1, 1, 0, 0)])


def test_saving_onto_a_folder_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder, not a file"):
        AttentionView([["a"]], [torch.rand(1, 1, 1, 1)]).save(tmp_path, force=True)
    assert os.listdir(tmp_path) == []  # no temp file left behind


@pytest.mark.parametrize("weights, error, message", [
    (torch.rand(0, 2, 3, 3), ValueError, r"attentions\[0\]: 0 layers and 2 heads \(shape \(0, 2, 3, 3\)\); the viewer "
                                         r"needs at least one layer and one head"),
    (torch.rand(2, 0, 3, 3), ValueError, r"attentions\[0\]: 2 layers and 0 heads"),
    ([], TypeError, r"attentions\[0\]: expected a tensor \(layers, heads, n, n\) or a list of per-layer tensors"),
    (torch.ones(2, 2, 3, 3, dtype=torch.complex64), TypeError,
     r"attentions\[0\]: weights must be real numbers, got dtype torch\.complex64"),
    ([torch.rand(2, 3, 3), torch.ones(2, 3, 3, dtype=torch.complex64)], TypeError,
     r"attentions\[0\]\[1\]: weights must be real numbers"),
    (-torch.rand(2, 2, 3, 3) * 0.9 - 0.01, ValueError, r"attentions\[0\]: weights must be in \[0, 1\] \(attention "
                                                r"probabilities\), got -0\.\d+ at layer 0, head 0, row 0, column 0"),
    (torch.full((1, 1, 3, 3), 0.2).index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(2), torch.tensor(1)),
                                             torch.tensor(3.5)),
     ValueError, r"got 3\.5 at layer 0, head 0, row 2, column 1"),
    ([torch.rand(3, 3, 3), torch.rand(2, 3, 3)], ValueError,
     r"attentions\[0\]: layer 1 has shape \(2, 3, 3\), but layer 0 has \(3, 3, 3\) \(heads, n, n\); every layer "
     r"needs the same heads and tokens"),
    ([torch.rand(1, 2, 3, 3), torch.rand(2, 2, 3, 3)], ValueError,
     r"attentions\[0\]: layer 1 has shape \(2, 2, 3, 3\); expected \(heads, n, n\) or \(1, heads, n, n\)"),
])
def test_weights_that_are_not_attention_weights_are_refused(weights, error, message):
    with pytest.raises(error, match=message):
        AttentionView([["a", "b", "c"]], [weights])


def test_weights_within_rounding_of_0_and_1_and_non_finite_ones_are_drawn():
    w = torch.full((1, 2, 3, 3), 1 / 3)
    w[0, 0, 0] = torch.tensor([1.0005, -0.0005, 0.0])  # rounding of 16-bit softmax
    w[0, 1, 1, 1], w[0, 1, 2, 2] = float("nan"), float("-inf")  # drawn red, as documented
    doc = json.loads(_structure(attention_page([["a", "b", "c"]], [w])).data_json)
    q = [b for m in doc["texts"][0]["sections"][0]["maps"] for b in base64.b64decode(m)]
    assert q[:3] == [254, 0, 0] and q[9 + 4] == 255 and q[9 + 8] == 255
    attention_page([["a", "b"]], [torch.ones(1, 1, 2, 2, dtype=torch.bool)])  # real numbers in [0, 1]


class _FakeEncoder:
    """What AttentionView.from_encoder needs of a SentenceEncoder."""

    def __init__(self):
        self.calls = 0

    def embed_tokens(self, texts, need_weights=False):
        from types import SimpleNamespace

        self.calls += 1
        tokens = ["[CLS]", *texts[0].split(), "[SEP]"]
        limit = getattr(self, "max_length", len(tokens))
        tokens, cut = tokens[:limit], len(tokens) > limit  # (as the tokenizer truncates, and says so)
        n = len(tokens)
        return (SimpleNamespace(tokens=[tokens], cut=(cut,)),
                SimpleNamespace(attentions=tuple(_weights(1, 2, n, seed=i)[0].unsqueeze(0) for i in range(2))))


def test_title_none_means_the_default_in_the_constructor_and_from_encoder():
    w = [torch.rand(1, 1, 2, 2)]
    title = lambda page: json.loads(_structure(page).data_json)["title"]
    assert title(AttentionView([["a", "b"]], w, title=None).html) == "Attention"
    assert title(attention_page([["a", "b"]], w, title=None)) == "Attention"
    encoder = _FakeEncoder()
    assert title(AttentionView.from_encoder(encoder, ["a bank"], title=None).html) == "Attention"
    assert title(AttentionView.from_encoder(encoder, ["a bank"], title="mine").html) == "mine"
    calls = encoder.calls
    for kw, error, message in [(dict(title=3), TypeError, "title: expected None or a string, got int"),
                               (dict(max_tokens=0), ValueError, "max_tokens: expected an int >= 1, got 0")]:
        with pytest.raises(error, match=message):
            AttentionView.from_encoder(encoder, ["a bank"], **kw)
        with pytest.raises(error, match=message):
            AttentionView([["a", "b"]], w, **kw)
    assert encoder.calls == calls  # refused before the encoder ran
    with pytest.raises(TypeError, match="encoder: expected a SentenceEncoder .*, got str"):
        AttentionView.from_encoder("enc", ["a"])
    encoder.max_length = 3  # the encoder cut the text at its limit: the label says so
    labels = [t["label"] for t in json.loads(_structure(AttentionView.from_encoder(encoder, ["a bank", "a"]).html)
                                             .data_json)["texts"]]
    assert labels == ["a bank (its first 3 tokens: the encoder's limit)", "a"]  # ("a": 3 tokens, all read)


def test_save_names_the_path_given_and_writes_only_html(tmp_path):
    view = AttentionView([["a"]], [torch.rand(1, 1, 1, 1)])
    missing = tmp_path / "nodir" / "x.html"
    with pytest.raises(FileNotFoundError, match=f"path: {missing}: the folder {tmp_path / 'nodir'} does not exist") as e:
        view.save(missing)
    assert ".tmp-" not in str(e.value)
    for name, message in [("v.png", r"path: .*v\.png: extension '\.png' is not \.html or \.htm \(the viewer is an "
                                    r"HTML page\)"),
                          ("v", r"path: .*v: no file extension: it must be \.html or \.htm")]:
        with pytest.raises(ValueError, match=message):
            view.save(tmp_path / name, force=True)
    assert os.listdir(tmp_path) == []  # nothing written
    assert view.save(tmp_path / "v.HTM") == str(tmp_path / "v.HTM")
    assert (tmp_path / "v.HTM").read_text().startswith("<!DOCTYPE html>")


# -- in a real browser -------------------------------------------------------------------

def _open(browser, tmp_path, view):
    path = tmp_path / "view.html"
    view.save(path)
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    events = {"console": [], "dialogs": [], "requests": []}
    page.on("console", lambda m: events["console"].append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: events["console"].append(f"pageerror: {e}"))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.on("request", lambda r: events["requests"].append(r.url))
    page.goto(path.as_uri())
    page.wait_for_function("window.attendView !== undefined")
    return page, events, path.as_uri()


def test_browser_loads_clicks_and_exports(browser, tmp_path):
    toks = [["[CLS]", "the", "bank", "of", "the", "river", "[SEP]"], ["[CLS]", "money", "at", "the", "bank", "[SEP]"]]
    view = AttentionView(toks, [_weights(3, 4, 7, 1), _weights(3, 4, 6, 2)], labels=["river", "money"])
    page, events, url = _open(browser, tmp_path, view)
    first = page.evaluate("attendView.exportPNG()")
    assert first.startswith("data:image/png;base64,")
    page.click("button.head[data-head='2']")  # add head 3 to the drawing
    assert page.evaluate("attendView.exportPNG()") != first
    page.hover("#canvas", position={"x": 120, "y": 5 + 2 * 18 + 9})  # the token "bank"
    assert page.text_content("#status").startswith("bank attends to")
    page.click("button.tab[data-view='model']")
    assert page.locator("canvas.thumb").count() == 3 * 4 + 4  # every layer x head, and mean, max, rollout, flow
    page.click("canvas.thumb[data-layer='1'][data-head='3']")  # zoom into layer 2, head 4
    assert page.evaluate("[attendView.state.view, attendView.state.sel, attendView.state.focus]") == ["heat", "layer:1", 3]
    page.click("button.tab[data-view='model']")
    page.click("canvas.thumb[data-agg='rollout']")
    assert page.evaluate("attendView.state.sel") == "agg:rollout"
    page.hover("#canvas", position={"x": 130 + 24 * 2 + 5, "y": 120 + 24 * 2 + 5})  # row "bank", column "bank"
    assert page.text_content("#status").startswith("bank \u2192 bank: ")
    assert "(attention rollout (Abnar & Zuidema 2020))" in page.text_content("#status")
    page.select_option("#text", "1")
    assert page.evaluate("attendView.state.text") == 1
    assert events["console"] == [] and events["dialogs"] == []
    assert events["requests"] == [url]  # nothing fetched but the page itself
    page.close()


def test_browser_runs_no_hostile_token(browser, tmp_path):
    view = AttentionView([HOSTILE], [_weights(2, 2, len(HOSTILE))], labels=["<img src=y onerror=alert(4)>"])
    page, events, _ = _open(browser, tmp_path, view)
    for mode in ("head", "model", "heat"):
        page.click(f"button.tab[data-view='{mode}']")
        page.hover("#canvas" if mode != "model" else "#grid")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('img, svg, iframe').length") == 0
    assert page.evaluate("document.scripts.length") == 2  # the data block and the viewer
    assert events["dialogs"] == [] and events["console"] == []
    page.close()
