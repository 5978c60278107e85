"""Every node's help page is what its schema says now: the defaults and tooltips it quotes cannot drift, and no
tooltip calls a choice or number the default unless it is."""

import re

import pytest

from devkit import node_docs


@pytest.fixture(scope="module")
def rendered():
    return node_docs.pages()


def test_committed_help_pages_are_the_generated_ones(rendered):
    committed = {p.stem: p.read_text() for p in node_docs.PAGES.glob("*.md")}
    assert set(committed) == set(rendered)
    stale = [node_id for node_id, text in rendered.items() if committed[node_id] != text]
    assert not stale, f"run `python -m devkit.node_docs`: stale pages {stale}"


def test_a_tooltip_that_names_the_default_names_the_real_one(rendered):
    checked = 0
    for text in rendered.values():
        for name, default, tooltip in re.findall(r"^- \*\*(\w+)\*\*(?: \(optional\))? \(default `([^`]*)`\): (.*)$",
                                                 text, re.M):
            for claimed in re.findall(r"([\w+.\-]+) \(default\)", tooltip):
                assert claimed == default, (name, claimed, default)
                checked += 1
            for claimed in re.findall(r"default(?: is|:)? ([\d.e\-]+)", tooltip):
                assert float(claimed) == float(default), (name, claimed, default)
                checked += 1
    assert checked >= 1  # the Transfer mode's tooltip names its default
