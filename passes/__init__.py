"""The FX graph passes of AsymRnR: pure functions from graph to graph, no runtime state.

They live at the top of the repository (graph code apart from runtime code) and install as
``asymrnr_fx.passes``, never as a top-level ``passes`` package (see pyproject.toml):

* :mod:`.sites`: find every ``scaled_dot_product_attention`` call and decide whether it is
  video self-attention (and if not, why not);
* :mod:`.grid`: the video token grid and the text/video layout of a sequence;
* :mod:`.masks`: what a per-query attention mask does to the video rows;
* :mod:`.rewrite`: rewrite the chosen sites into match -> reduce -> attend -> restore;
* :mod:`.walk`: the backward graph walk the other two share.
"""
