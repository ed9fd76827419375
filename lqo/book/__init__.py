"""Recurring workloads, the serving side: template identity and the verified plan book.

A query's *template key* is its text with literals replaced by slots
(:func:`template.template_key`). ``lqo tune`` (:mod:`lqo.tune`) explores candidate
plans per template offline and writes a :class:`book.PlanBook`, a small JSON file; this
package loads it and serves it by template look-up (:mod:`serve`), without a model on
the hot path.
"""
