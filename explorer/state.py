"""The selection of one browser session: one `param.Parameterized` that every view reads.

Views never talk to each other; a click in a view sets parameters here, and every view that
depends on those parameters re-renders. `heads` holds every selected head (flat index
`layer * heads + head`); `head` is the primary one, which the single-head views (B3, D2-D5)
show and which is highlighted most strongly.
"""

from __future__ import annotations

import param

from explorer.data import METRICS, SCOPES, SPACES, RunData
from vit_jax_va.masks import PRUNE_MODES

# What D3 draws: the selected source token's links at or above the threshold and its strongest
# targets (a handful of links that can be followed), or every link above the threshold of
# every source (up to MAX_LINKS: a field in which the head's overall pattern shows).
LINKS = {"source": "source token", "all": "all above threshold"}


class ExplorerState(param.Parameterized):
    """Selection state for one run in one browser session."""

    image = param.Integer(default=0, bounds=(0, None), doc="selected image (index into the run)")
    head = param.Integer(default=0, bounds=(0, None), doc="primary selected head, flat index")
    heads = param.List(default=[0], item_type=int, doc="every selected head, flat indices")
    source_token = param.Integer(default=0, bounds=(0, None),
                                 doc="source token of D2/D3 (query row of D4); 0 is CLS")
    metric = param.Selector(default="probability", objects=list(METRICS))
    scope = param.Selector(default="image", objects=list(SCOPES))
    scope_class = param.Integer(default=-1, doc="class of the class scope; -1: the image's class")
    mode = param.Selector(default="head", objects=list(PRUNE_MODES),
                          doc="prune mode of B3 (the top-5 after pruning)")
    threshold = param.Number(default=0.05, bounds=(0.0, 1.0),
                             doc="attention weight at or above which D2/D3 draw a link")
    space = param.Selector(default="patch", objects=list(SPACES), doc="pattern space of D1")
    links = param.Selector(default="source", objects=list(LINKS),
                           doc="D3: the source token's links, or every link above the threshold")

    def __init__(self, data: RunData, **params):
        self.data = data
        super().__init__(**params)
        self.param.image.bounds = (0, data.num_images - 1)
        self.param.head.bounds = (0, data.num_heads_total - 1)
        self.param.source_token.bounds = (0, data.num_tokens - 1)
        self.param.metric.objects = data.metrics
        self.param.scope.objects = data.scopes
        if "metric" not in params:
            self.metric = data.default_metric
        spaces = [s for s in SPACES if s in data.patterns]
        self.param.space.objects = spaces or list(SPACES)
        if self.space not in self.param.space.objects:
            self.space = self.param.space.objects[0]
        if "threshold" not in params:
            # Twice the uniform weight: a link means "more than an even share of attention".
            self.threshold = min(1.0, 2.0 / data.num_tokens)
        if "head" not in params and "heads" not in params:
            # Open on the most important head of the run.
            self.select_heads(data.ranked_heads()[:1])

    @param.depends("head", watch=True)
    def _primary_is_selected(self):
        if self.head not in self.heads:
            self.heads = [self.head]

    @property
    def layer(self) -> int:
        return self.head // self.data.num_heads

    @property
    def head_in_layer(self) -> int:
        return self.head % self.data.num_heads

    def select_head(self, flat: int) -> None:
        """Select one head (a click in B1, the heat map, C1 or D1)."""
        self.select_heads([int(flat)])

    def select_heads(self, flats) -> None:
        """Select several heads (a brush in C1 or D1); the first becomes the primary head."""
        flats = [int(h) for h in dict.fromkeys(flats) if 0 <= int(h) < self.data.num_heads_total]
        if not flats:
            return
        with param.parameterized.batch_call_watchers(self):
            self.head = flats[0]
            self.heads = flats

    def select_image(self, image: int) -> None:
        if 0 <= int(image) < self.data.num_images:
            self.image = int(image)
