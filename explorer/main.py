"""`panel serve explorer [--args --runs DIR --run NAME]`: the linked-views explorer."""

from explorer.app import build_app

build_app().template.servable(title="vit-jax-va explorer")
