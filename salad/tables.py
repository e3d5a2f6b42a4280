"""Fixed-width text tables for terminals: the one layout `salad score`, `salad parity` and `salad bench` print."""

from __future__ import annotations

from collections.abc import Sequence


def fixed_width(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Rows of cells as aligned columns two spaces apart: the first `left` columns flush left, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    )
