"""Recurring workloads: template identity, the verified plan book, tuning and serving.

A query's *template* is its text with literals replaced by slots
(:func:`template.template_key`). ``lqo tune`` explores candidate plans per template
offline and adopts one only after paired, interleaved runs show it faster than the
native text (:mod:`accept`); the result is a :class:`book.PlanBook`, a small JSON file
served by template look-up without a model on the hot path.
"""
