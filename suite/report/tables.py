"""Small table writers (Markdown and LaTeX) with no extra dependencies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs LaTeX table."""

    def esc(value: object) -> str:
        return str(value).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{esc(caption)}}}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{" + "l" * len(df.columns) + "}",
        r"\toprule",
        " & ".join(esc(c) for c in df.columns) + r" \\",
        r"\midrule",
        *(" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out: Path, name: str, caption: str, note: str = "") -> list[Path]:
    """Write ``name.md`` (with caption and note) and ``name.tex`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(f"**{caption}**\n\n{to_markdown(df)}" + (f"\n{note}\n" if note else ""))
    tex = out / f"{name}.tex"
    tex.write_text(to_latex(df, caption, f"tab:{name}"))
    return [md, tex]
