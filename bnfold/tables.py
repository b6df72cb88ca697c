"""The one plain-text table every report prints: columns as wide as their widest cell, two spaces apart."""

from __future__ import annotations

from typing import List, Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], left: int = 0) -> List[str]:
    """Lines of `header` and `rows`; the first `left` columns are left-aligned and the rest right-aligned
    (left=0: every column left-aligned). Trailing spaces are trimmed."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    align_all_left = left == 0
    return ["  ".join(cell.ljust(width) if align_all_left or i < left else cell.rjust(width)
                      for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in cells]
