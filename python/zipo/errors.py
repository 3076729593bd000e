"""Messages to the user in the language they call ZiPo from: Python, or R through the zipo R
package.

Each message is written once, where the problem is found: an :class:`InputError` carries the
problem and its fix in each language (``fix={"python": ..., "r": ...}``), and a notice
(:func:`notice`) is one line that stops nothing, in each language where they differ. The R
package calls :func:`speak_r` when it imports the core, so that errors then read in R's terms
(``sce[rownames(model), ]`` rather than ``adata[:, model.var_names]``), and after each call it
shows the notices left for it (:func:`take_notices`) as R messages.
"""

from __future__ import annotations

import warnings
from typing import Mapping

LANGUAGES = ("python", "r")
_language = "python"
_notices: list[str] = []  # for R to show (speak_r)


class InputError(ValueError):
    """Bad input, with the fix in each language.

    ``problem`` says what is wrong and ``fix`` what to do, each one string when it reads the
    same in every language, else per language (``{"python": ..., "r": ...}``). The message
    (``str(error)``) is ``problem + sep + fix`` in the language in use (the problem alone where
    it names its own fix: ``fix=""``); :meth:`message` renders it in another.
    """

    def __init__(self, problem: str | Mapping[str, str], fix: str | Mapping[str, str] = "",
                 sep: str = "; "):
        self.problem, self.fix = _per_language(problem), _per_language(fix)
        self.sep = sep
        super().__init__(self.message(_language))

    def message(self, language: str = "python") -> str:
        """The message in ``language`` (Python's words where none are given for it)."""
        problem = self.problem.get(language, self.problem["python"])
        fix = self.fix.get(language, self.fix["python"])
        return f"{problem}{self.sep}{fix}" if fix else problem


def _per_language(text: str | Mapping[str, str]) -> dict[str, str]:
    """``{"python": ..., "r": ...}`` from one text for all languages or a mapping."""
    texts = dict.fromkeys(LANGUAGES, text) if isinstance(text, str) else dict(text)
    if "python" not in texts or set(texts) - set(LANGUAGES):
        raise TypeError(f"messages need a 'python' text and only {LANGUAGES}, got {set(texts)}")
    return texts


def language() -> str:
    """The language messages are written in: ``"python"``, or ``"r"`` inside the R package."""
    return _language


def notice(message: str | Mapping[str, str], stacklevel: int = 2) -> None:
    """Tell the user one thing that went differently from what they may expect, without
    stopping: a ``UserWarning`` in Python; in R, kept for the R package to show as a
    ``message()`` when the call returns (:func:`take_notices`). ``message`` is one text, or
    one per language as an :class:`InputError`'s parts are."""
    texts = _per_language(message)
    message = texts.get(_language, texts["python"])
    if _language == "r":
        _notices.append(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def take_notices() -> list[str]:
    """The notices given since the last call (in R; always empty in Python)."""
    taken = list(_notices)
    _notices.clear()
    return taken


def speak_r() -> None:
    """Write every later message in R's terms, and keep notices for R (:func:`take_notices`)."""
    global _language
    _language = "r"
