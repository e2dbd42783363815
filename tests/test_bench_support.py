"""The benchmarks' one way of writing their measured block into a doc."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_support import fill_block  # noqa: E402


def test_fill_block_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\nprose\n\n<!-- b:start -->\nold b\n<!-- b:end -->\n")
    fill_block(doc, "a", "new a\nsecond line")
    assert doc.read_text() == ("# Title\n\n<!-- a:start -->\nnew a\nsecond line\n<!-- a:end -->\n\nprose\n\n"
                               "<!-- b:start -->\nold b\n<!-- b:end -->\n")


def test_fill_block_appends_the_markers_when_the_doc_lacks_them(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nprose\n\n")
    fill_block(doc, "a", "figures")
    assert doc.read_text() == "# Title\n\nprose\n\n<!-- a:start -->\nfigures\n<!-- a:end -->\n"
    fill_block(doc, "a", "newer figures")
    assert doc.read_text() == "# Title\n\nprose\n\n<!-- a:start -->\nnewer figures\n<!-- a:end -->\n"


def test_fill_block_creates_a_missing_doc(tmp_path):
    doc = tmp_path / "new.md"
    fill_block(doc, "a", "figures")
    assert doc.read_text() == "<!-- a:start -->\nfigures\n<!-- a:end -->\n"


def test_fill_block_refuses_markers_out_of_order_and_leaves_the_doc(tmp_path):
    doc = tmp_path / "doc.md"
    for text in ("<!-- a:end -->\nprose\n<!-- a:start -->\n", "<!-- a:start -->\nprose\n",
                 "<!-- a:start -->\n<!-- a:end -->\n<!-- a:start -->\n<!-- a:end -->\n"):
        doc.write_text(text)
        with pytest.raises(SystemExit, match="markers of block 'a'"):
            fill_block(doc, "a", "figures")
        assert doc.read_text() == text
