"""`panel serve explorer --address localhost [--args --runs DIR --run NAME]`: the linked-views
explorer (`app_hooks.py` refuses to serve it without `--address`)."""

from explorer.app import build_app

build_app().template.servable(title="vit-jax-va explorer")
