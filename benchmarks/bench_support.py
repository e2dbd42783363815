"""Helpers shared by the search benchmarks: the default teacher's logits computed once, and a
document's measured block replaced between its markers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_default_logits(work: Path) -> None:
    """Compute the default search's teacher logits once, into `work/logits` (copy that folder
    into each run's own cache)."""
    from akd_mobile.data import load_dataset
    from akd_mobile.search import SearchConfig
    from akd_mobile.teachers import cached_logits, load_teacher

    config = SearchConfig()
    os.environ["AKD_CACHE_DIR"] = str(work)
    cached_logits(load_teacher(config.teacher), load_dataset(config.data, seed=config.seed))


def fill_block(doc: Path, name: str, block: str) -> None:
    """Put `block` between the markers `<!-- NAME:start -->` and `<!-- NAME:end -->` in `doc`,
    replacing what lay there; a doc without the markers gets them, around the block, at its end.
    Markers out of order or repeated stop the benchmark (SystemExit) and leave the doc as it was."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    marked = f"{start}\n{block}\n{end}"
    text = doc.read_text() if doc.exists() else ""
    counts = (text.count(start), text.count(end))
    if counts == (1, 1) and text.index(start) < text.index(end):
        text = text[: text.index(start)] + marked + text[text.index(end) + len(end):]
    elif counts == (0, 0):
        text = (text.rstrip() + "\n\n" if text.strip() else "") + marked + "\n"
    else:
        raise SystemExit(f"{doc}: the markers of block {name!r} are not one start followed by one end; fix them by hand")
    doc.write_text(text)
