"""Table writers: GitHub Markdown, and LaTeX through pandas' ``Styler.to_latex``.

The LaTeX is booktabs (``\\toprule``/``\\midrule``/``\\bottomrule``), escapes every
special character of the cells, headers and caption, and right-aligns numeric columns
(a column whose cells all start with a number, a sign or ±).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

_NUMERIC = re.compile(r"^[-+<>±]?\s*[0-9.]+|^—$|^∞|^$")


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (``|`` inside cells escaped)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _align(df: pd.DataFrame) -> str:
    """``r`` for columns of numbers (or no data), ``l`` otherwise."""
    spec = ""
    for column in df.columns:
        values = [str(v) for v in df[column]]
        numeric = values and all(_NUMERIC.match(v) for v in values)
        spec += "r" if numeric and any(v not in ("", "—") for v in values) else "l"
    return spec


#: Characters of the tables that LaTeX's default fonts lack, as commands (applied after
#: pandas has escaped LaTeX's specials, which it leaves alone).
_UNICODE = {
    "±": r"$\pm$",
    "×": r"$\times$",
    "∞": r"$\infty$",
    "—": "---",
    "ℓ": r"$\ell$",
    "µ": r"$\mu$",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _unicode(text: str) -> str:
    return "".join(_UNICODE.get(ch, ch) for ch in text)


def tex_escape(text: str) -> str:
    """Escape a plain string (a caption) for LaTeX, specials and the table's unicode."""
    return _unicode("".join(_SPECIAL.get(ch, ch) for ch in text))


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs LaTeX table via ``Styler.to_latex``; pandas escapes every cell and
    header (``escape="latex"``), then the unicode the fonts lack becomes commands."""
    styler = (
        df.astype(str)
        .style.hide(axis="index")
        .format(escape="latex")
        .format_index(escape="latex", axis=1)
    )
    tex = styler.to_latex(
        column_format=_align(df),
        hrules=True,
        label=label,
        position="t",
        position_float="centering",
        caption="@@CAPTION@@",
    )
    lines = tex.splitlines()
    body = [_unicode(line) if "@@CAPTION@@" not in line else line for line in lines]
    return "\n".join(body).replace("@@CAPTION@@", tex_escape(caption)) + "\n"


def write_table(
    df: pd.DataFrame, out: Path, name: str, caption: str, note: str = "", common: str = ""
) -> list[Path]:
    """Write ``name.md`` (caption, table, the settings common to every row, note) and
    ``name.tex`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    full_caption = caption + (f". Common to every row: {common}." if common else "")
    text = f"**{caption}**\n\n{to_markdown(df)}"
    if common:
        text += f"\nCommon to every row: {common}.\n"
    if note:
        text += f"\n{note}\n"
    md.write_text(text)
    tex = out / f"{name}.tex"
    tex.write_text(to_latex(df, full_caption, f"tab:{name}"))
    return [md, tex]
