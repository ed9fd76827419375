"""Long literal lists are keyed from a cut text, and only where that gives the full key."""

from __future__ import annotations

import random

import pytest

from lqo.book import template
from lqo.book.template import template_key

PAD = " " * template.LONG_TEXT
NUMS = "(" + ", ".join(map(str, range(100))) + ")"
STRS = "(" + ", ".join(f"'{i}'" for i in range(100)) + ")"


@pytest.mark.parametrize("sql", [
    f"SELECT x FROM t WHERE x IN {NUMS} AND y = 'z'",
    f"SELECT x FROM t WHERE x IN {STRS} AND y IN {NUMS}",
    f"SELECT '{NUMS}' AS s, x FROM t WHERE x IN (1, 2)",             # a list inside a string
    f"SELECT x FROM t /* {NUMS} */ WHERE x IN {NUMS}",                # inside a comment
    f'SELECT x AS "{STRS}" FROM t WHERE x = 5',                       # inside a quoted name
    f"SELECT x FROM t WHERE x IN {NUMS} -- {NUMS}\n AND y IN {NUMS}",
    f"SELECT x FROM t WHERE x IN ({', '.join(['1'] * 50 + ['1.5'] * 50)})",   # mixed types: no list slot
    f"SELECT x FROM t WHERE x IN ({', '.join(['-1', '2'] * 50)})",
    f"SELECT x FROM t WHERE x IN ({', '.join([repr('a') + repr('b')] * 100)})".replace('"', ""),
    f"SELECT x FROM t WHERE x IN ({', '.join(['1.5e3'] * 100)}) -- '",
    f"SELECT x FROM t WHERE x - ({', '.join(['1'] * 100)})",
    f"SELECT x FROM t WHERE x IN {STRS} AND y = '{NUMS}' || E'{STRS}'",
    f"SELECT x FROM t WHERE x IN ({', '.join(['5'] * 100)})::INT[] AND y IN ({', '.join(['1', '-'] * 50)}1)",
    f"SELECT x FROM t WHERE x IN ({', '.join(['5'] * 100)}, 'a')",
])
def test_cut_key_is_the_full_key(sql):
    for text in (sql + PAD, PAD + sql):
        assert template_key(text) == template._template_key(text)


def test_random_long_texts_key_like_the_token_by_token_reading():
    rng = random.Random(3)
    pieces = ["1", "-2", "3.5", "'a'", "'b''c'", "'--'", "/* ( */", "(", ")", ",", "x", '"q,("', " ", "-- c\n", "E'\\''"]
    for _ in range(300):
        body = ", ".join(rng.choice(pieces[:5]) for _ in range(rng.randint(60, 120)))
        noise = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        text = f"SELECT x FROM t WHERE {noise} x IN ({body}) {noise}" + PAD
        assert template_key(text) == template._template_key(text), text[:300]
