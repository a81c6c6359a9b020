"""`panel serve explorer`: the explorer app (the linked views arrive with the explorer issue)."""

import panel as pn

pn.extension()

pn.Column(
    "# vit-jax-va explorer",
    "The linked importance, strength and pattern views are not built yet. "
    "Meanwhile, `vit-va convert` turns a timm ViT into a vit_jax_va checkpoint.",
).servable(title="vit-jax-va")
