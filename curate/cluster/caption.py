"""DataComp's caption pre-filter for the image-based baseline (``caption_filter`` in
mlfoundations/datacomp 4a8df19 ``baselines/apply_filter.py``)::

    caption_num_words = df.text.apply(lambda x: len(fasttext.tokenize(x)))
    caption_num_chars = df.text.apply(len)
    lang_preds, _ = lang_detect_model.predict([x.replace("\\n", " ") for x in df.text], k=1)
    fasttext_en = [x[0].replace("__label__", "") == "en" for x in lang_preds]
    mask = fasttext_en & (caption_num_words > 1) & (caption_num_chars > 5)

fastText's tokenizer (``Dictionary::readWord``) splits the UTF-8 bytes on the ASCII
delimiters space, \\n, \\r, \\t, \\v, \\f and \\0, and every \\n is also a token of its own
(``</s>``), so the token count is the number of delimiter-free runs plus the newlines. The
language is the project's ``language`` filter: DataComp's exact fastText call with
``fasttext_model=lid.176.bin``, else py3langid's packaged model. A null caption fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.filters import FilterSpec

_TOKEN = re.compile(r"[^ \n\r\t\v\f\x00]+")
MIN_TOKENS = 2  # DataComp: > 1
MIN_CHARS = 6  # DataComp: > 5
REASON_CHARS = "caption: 5 characters or fewer"
REASON_TOKENS = "caption: fewer than 2 words (fastText tokens)"
REASON_LANGUAGE = "caption: not English"
REASONS = (None, REASON_CHARS, REASON_TOKENS, REASON_LANGUAGE)


def fasttext_token_count(text: str) -> int:
    """``len(fasttext.tokenize(text))``."""
    return len(_TOKEN.findall(text)) + text.count("\n")


class CaptionFilter:
    """The pre-filter, its language model loaded once."""

    def __init__(self, fasttext_model: Path | None = None, lang: str = "en") -> None:
        params: dict[str, object] = {"lang": lang}
        if fasttext_model is not None:
            params["fasttext_model"] = str(fasttext_model)
        self.language = FilterSpec("language", params).resolve(None)

    def codes(self, texts: list[str | None]) -> np.ndarray:
        """Per caption a uint8 index into ``REASONS``: 0 passes, else the first failing rule
        (length, words, language; the language model runs only on captions that pass the
        first two)."""
        code = np.zeros(len(texts), dtype=np.uint8)
        for i, text in enumerate(texts):
            if text is None or len(text) < MIN_CHARS:
                code[i] = 1
            elif fasttext_token_count(text) < MIN_TOKENS:
                code[i] = 2
        alive = np.flatnonzero(code == 0)
        if alive.size:
            batch = pa.table({"text": pa.array([texts[i] for i in alive], pa.string())})
            english = self.language.mask(batch)
            code[alive[~english]] = 3
        return code
