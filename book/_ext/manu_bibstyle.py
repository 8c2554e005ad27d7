"""Author-year bibliography labels for the book: "Liu et al., 2025", with a/b suffixes when two entries collide.

sphinxcontrib-bibtex's `author_year` citation style writes "Liu et al., 2024" in the text but leaves the
bibliography numbered ([1], [2], ...), and it cannot tell two "Liu et al., 2024" apart. This local extension
registers a pybtex style, `manu_authoryear` (the `plain` formatting with author-year labels), so that the text,
with `bibtex_reference_style: label`, and the bibliography show the same, unambiguous label.
"""
from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _surname(person) -> str:
    """The surname with LaTeX decoded ({\\c{c}} -> ç) and braces dropped."""
    return " ".join(n.render_as("text") for n in person.rich_prelast_names + person.rich_last_names)


def _clean(text: str) -> str:
    return text.replace("{", "").replace("}", "")


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_label(self, entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        year = entry.fields.get("year", "n.d.")
        if not persons:
            return f"{_clean(entry.fields.get('title', entry.key))[:20]}, {year}"
        names = [_surname(p) for p in persons]
        if len(names) == 1:
            who = names[0]
        elif len(names) == 2:
            who = f"{names[0]} and {names[1]}"
        else:
            who = f"{names[0]} et al."
        return f"{who}, {year}"

    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        total = Counter(labels)
        seen: Counter = Counter()
        for label in labels:
            if total[label] == 1:
                yield label
            else:
                yield label + chr(ord("a") + seen[label])
                seen[label] += 1


class AuthorYearStyle(PlainStyle):
    default_label_style = "manu_authoryear"


register_plugin("pybtex.style.labels", "manu_authoryear", AuthorYearLabelStyle)
register_plugin("pybtex.style.formatting", "manu_authoryear", AuthorYearStyle)


def setup(app):
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
