"""An option whose value may be left out: ``edgeopt sweep --ray`` means ``--ray local``.

click takes the word after an option as its value whatever that word is, and typer passes no ``flag_value`` to
click. So the command reads its arguments before click does: where the option is the last word, or is followed
by another option, or by a word that is not its value (``is_value`` says no: for ``--ray``, the sweep file),
the value it has when given alone is put in after it. ``--ray=ADDRESS`` and words after ``--`` are left as they
are.
"""
from __future__ import annotations

from typing import Callable, Sequence

import typer.core

__all__ = ["fill_in", "optional_value_command"]


def fill_in(args: Sequence[str], option: str, flag_value: str, is_value: Callable[[str], bool]) -> list[str]:
    """``args`` with ``flag_value`` after each ``option`` that has no value of its own."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        out.append(word)
        if word == "--":  # what follows is positional, an option's name included
            out.extend(args[i + 1:])
            break
        if word == option:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or nxt.startswith("-") or not is_value(nxt):
                out.append(flag_value)
            else:
                out.append(nxt)
                i += 1  # its value: not read again as an option
        i += 1
    return out


def optional_value_command(option: str, flag_value: str, is_value: Callable[[str], bool]) -> type:
    """A typer command class whose ``option`` may be given without a value (then it is ``flag_value``)."""

    class OptionalValueCommand(typer.core.TyperCommand):
        def parse_args(self, ctx, args):
            return super().parse_args(ctx, fill_in(args, option, flag_value, is_value))

    return OptionalValueCommand
