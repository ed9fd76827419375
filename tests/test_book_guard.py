"""Where a verified plan is served: constant-sensitive templates stay inside the literal
ranges their plan was verified on; tuning tests only candidates that could be adopted."""

from __future__ import annotations

from types import SimpleNamespace

from lqo.book.book import AcceptanceVerdict
from lqo.book.book import Candidate, PlanBook
from lqo.book.ranges import LiteralRanges
from lqo.book.serve import BookServer
from lqo.tune.steps import trial_step
from lqo.book.template import template_key

Q10 = """SELECT c_custkey, sum(l_extendedprice * (1 - l_discount)) AS revenue
FROM customer, orders, lineitem, nation
WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey
  AND o_orderdate >= CAST('{lo}' AS date) AND o_orderdate < CAST('{hi}' AS date)
  AND l_returnflag = '{flag}' AND c_nationkey = n_nationkey
GROUP BY c_custkey ORDER BY revenue DESC LIMIT 20"""

TUNED = [dict(lo="1993-10-01", hi="1994-01-01", flag="R"), dict(lo="1994-02-01", hi="1994-08-01", flag="R"),
         dict(lo="1993-11-01", hi="1994-03-01", flag="A")]


def _book(native_ms: list[float]) -> PlanBook:
    book = PlanBook(schema="sha1:x", meta={"range_guard": True})
    keys = [template_key(Q10.format(**p)) for p in TUNED]
    e = book.entry(keys[0].key, "q10", Q10.format(**TUNED[0]))
    e.instances = [f"q10_v{i}" for i in range(3)]
    e.native_ms = dict(zip(e.instances, native_ms))
    arm = Candidate("arm:join_order", "arm", ("join_order",), origin="arm:join_order")
    e.candidates[arm.id] = arm
    e.verdicts[arm.id] = AcceptanceVerdict(True, "accepted", median_ratio=0.6, ci_low=0.55, ci_high=0.65, worst_instance=0.7)
    e.adopt(arm.id)
    e.ranges = LiteralRanges.build(keys).to_json()
    return book


def test_a_constant_sensitive_template_serves_its_plan_only_inside_the_verified_ranges():
    server = BookServer(_book([80.0, 590.0, 120.0]))  # native times 7x apart: sensitive
    for p in TUNED:  # every instance it was verified on is inside
        assert server.serve(Q10.format(**p)).disabled == ("join_order",)
    inside = server.serve(Q10.format(lo="1993-12-15", hi="1994-05-01", flag="N"))  # text slots are no range
    assert inside.disabled == ("join_order",) and inside.fallback is None
    wide = server.serve(Q10.format(lo="1992-01-01", hi="1998-01-01", flag="R"))
    assert wide.disabled == () and not wide.forced and wide.sql == wide.original_sql
    assert "constant-sensitive" in wide.fallback and "'1992-01-01' lies outside" in wide.fallback and wide.source == "book"


def test_a_template_whose_native_times_agree_serves_its_plan_everywhere():
    server = BookServer(_book([80.0, 95.0, 120.0]))
    assert server.serve(Q10.format(lo="1992-01-01", hi="1998-01-01", flag="R")).disabled == ("join_order",)


def test_the_guard_is_off_unless_the_book_was_tuned_with_it():
    book = _book([80.0, 590.0, 120.0])
    book.meta["range_guard"] = False
    assert BookServer(book).serve(Q10.format(lo="1992-01-01", hi="1998-01-01", flag="R")).disabled == ("join_order",)


def test_a_book_without_ranges_loads_and_serves_unguarded():
    book = _book([80.0, 590.0, 120.0])
    data = book.to_json()
    for t in data["templates"]:
        del t["ranges"]  # written before ranges were recorded
    server = BookServer(PlanBook.from_json(data))
    assert server.serve(Q10.format(lo="1992-01-01", hi="1998-01-01", flag="R")).disabled == ("join_order",)


def test_a_candidate_screened_far_above_the_current_choice_gets_no_acceptance_test():
    e = _book([80.0, 95.0, 120.0]).by_template()["q10"]  # adopted at 0.6x native
    tested = []
    ctx = SimpleNamespace(config=SimpleNamespace(screen_below=0.95),
                          accept=lambda t, entry, c: tested.append(c.id) or AcceptanceVerdict(False, "slower"))
    for ratio, expect_test in ((0.9, False), (0.64, True)):
        ctx.screen = lambda t, entry, c, r=ratio: (r, 0)
        _, _, verdict = trial_step(ctx, None, e, Candidate(f"arm:x{ratio}", "arm", ("x",)))
        assert (verdict is not None) == expect_test, ratio
    assert tested == ["arm:x0.64"]
    e.adopt("native")  # nothing adopted: the plain bar
    ctx.screen = lambda t, entry, c: (0.9, 0)
    assert trial_step(ctx, None, e, Candidate("arm:y", "arm", ("y",)))[2] is not None


def test_book_show_names_the_templates_served_inside_their_ranges_only(tmp_path, capsys):
    from lqo.cli import main
    import json

    _book([80.0, 590.0, 120.0]).save(tmp_path / "m" / "book.json")
    assert main(["book", "show", str(tmp_path / "m"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["templates"][0]["in_verified_ranges_only"] is True
    assert main(["book", "show", str(tmp_path / "m")]) == 0
    assert "constant-sensitive" in capsys.readouterr().out
