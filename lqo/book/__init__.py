"""Recurring workloads, the serving side: template identity and the verified plan book.

Two words name a query's template, and they are not the same thing:

- its **template label** is the workload manifest's ``template`` field (``q07``; the
  query id by default): how the workload's author groups queries. Train/test splits go
  by it (:meth:`lqo.model_dir.ModelDir.split_queries`), and a book entry keeps it for
  display (``BookEntry.template``, ``TemplateInstances.label``);
- its **template key** is what lqo computes from the text alone
  (:func:`template.template_key`: the text with its literals replaced by typed slots,
  ``TemplateKey.key``). The plan book is keyed by it (``BookEntry.key``) and serving
  looks it up; instances that share a label usually share a key, but a key never
  depends on the label.

``lqo tune`` (:mod:`lqo.tune`) explores candidate plans per template key offline and
writes a :class:`book.PlanBook`, a small JSON file; this package loads it and serves it
by template-key look-up (:mod:`serve`), without a model on the hot path.
"""
