"""The generation of the rewrite generator (:mod:`lqo.sql.rewrites`), readable without
sqlglot: a plan book stores a rewrite's rendered text, so a rewrite proposed by an older
generator could be one the current generator refuses. The tuner stamps each rewrite
candidate with the generation that proved it; the book server serves a rewrite only when
its stamp is the current generation (else the instance runs as written).

Raise it whenever the generator refuses something it used to write, or writes a text
differently.

>>> REWRITE_GENERATION >= 2
True
"""

# 1: the first generator (no stamp in the book). 2: eager aggregation refuses float sums,
# avg and computed arguments; NOT MATERIALIZED refuses bodies whose rows depend on order.
REWRITE_GENERATION = 2
