"""Option names, matched exactly: no prefix matching, and "did you mean" for a mistyped one.

argparse (and jsonargparse above it) takes any unambiguous prefix of an option by default, so
``--trainer.max_epoch 1`` silently sets ``max_epochs``: a typo that changes a run without a word.
Every nml parser is built with ``allow_abbrev=False`` (:data:`EXACT`) and with the error of
:func:`suggesting`, which adds the closest known options to an "unrecognized arguments" error (the
options the given one is a prefix of or the last part of, ``--root`` -> ``--data.root``, else
``difflib``'s closest), searching the parser and its subcommands' parsers.
"""

from __future__ import annotations

import difflib
import re

EXACT = {"allow_abbrev": False}  # parser kwargs: an option is its whole name or nothing

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)", re.IGNORECASE)


def known_options(parser) -> set[str]:
    """The long option strings of ``parser`` and of every subcommand parser below it."""
    known: set[str] = set()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            known.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(getattr(action, "choices", None), dict):  # subcommands: name -> parser
                stack.extend(c for c in action.choices.values() if hasattr(c, "_actions"))
    return known


def did_you_mean(message: str, known: set[str]) -> str:
    """``message`` with, for each unrecognized ``--option`` in it, the closest known ones."""
    m = _UNRECOGNIZED.search(message)
    if not m or "did you mean" in message:  # an error re-raised by the parser above: said once
        return message
    hints = []
    for given in (a.split("=", 1)[0] for a in m.group(1).split() if a.startswith("--")):
        longer = sorted(k for k in known if k.startswith(given))  # what prefix matching would have taken
        grouped = sorted(k for k in known if k.endswith("." + given[2:]))  # the option inside a group
        close = (longer + grouped)[:3] or difflib.get_close_matches(given, known, n=3, cutoff=0.75)
        if close:
            hints.append(f"{given}: did you mean {' or '.join(close)}?")
    return f"{message} ({'; '.join(hints)})" if hints else message


def suggesting(parser_class: type) -> type:
    """``parser_class`` whose errors name the closest options (:func:`did_you_mean`)."""

    class Suggesting(parser_class):
        def error(self, message: str, ex: Exception | None = None):
            return super().error(did_you_mean(message, known_options(self)), ex)

    Suggesting.__name__ = Suggesting.__qualname__ = f"Suggesting{parser_class.__name__}"
    return Suggesting
