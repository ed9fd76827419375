"""``lqo tune``: offline tuning of the plan book, one template at a time.

The tuner (:mod:`tuner`) proposes candidates per template and measures them
(:mod:`trials`, run here or on Ray executors: :mod:`steps`) in a learned order
(:mod:`order`), and adopts one only after paired, interleaved runs show it faster than
the native text (:mod:`accept`). What it writes is a :class:`lqo.book.book.PlanBook`,
which :mod:`lqo.book` serves; tuning itself never runs on the serving path.
"""
