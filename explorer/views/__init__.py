"""The views of the explorer (METHOD.md sections 1-4): functions of `(data, state)`.

A view reads the selection from an `ExplorerState` and the numbers from a `RunData`. A view
that a click changes is a plain Bokeh figure (`explorer.figures`): its `*_frame` function gives
the empty figure (`Frame`: axes, size, tools), and its other functions return
`explorer.marks.Marks` (the columns of one glyph layer, and the title, ranges and colours it
sets), which `explorer.wiring` draws on that figure and redraws as the selection changes. The
two views no click changes, the pruning curve and the D1 prototypes (which change only with the
pattern space), are HoloViews elements. Titles name what is shown (the head, the image), which
the browser test reads.

View names follow the paper: A image overview; B1 head importance line and heat map, B2 partial
pruning modes, B3 top-5 predictions, the cumulative pruning curve; C1 head entropy across
layers, C2 n-hop profile, C3 entropy distribution, the mean-distance trend; D1 pattern map and
prototypes, D2 image with a source patch's attention, D3 source -> target links, D4 attention
matrix, D5 attention histogram.

Modules by the paper's areas: `images` (A), `importance` (B), `strength` (C), `patterns` (D);
`glyphs` holds what they share (colours, marks builders).
"""

from __future__ import annotations

from explorer.views.glyphs import (BAR, CLS_COLOUR, HIGHLIGHT, MAX_EXTRA_HEADS, MAX_LINKS,
                                   PATCH_COLOUR, SECONDARY, SOURCE_TARGETS, class_colours, layer_colours,
                                   set_defaults)
from explorer.views.images import image_marker, image_overview_frame, image_points
from explorer.views.importance import (data_top5, head_importance_boxes, head_importance_cells,
                                       head_importance_frame, head_importance_heatmap_frame,
                                       head_importance_line, head_importance_marks,
                                       head_importance_values, partial_pruning_bars,
                                       partial_pruning_frame, partial_pruning_glyphs,
                                       pruning_curve, top5_markdown)
from explorer.views.strength import (distance_band, distance_frame, distance_line,
                                     distance_marks, distance_points, entropy_ceiling,
                                     entropy_distribution, entropy_distribution_frame,
                                     entropy_frame, entropy_highlight, entropy_of_image,
                                     entropy_points, hop_profile_bars, hop_profile_frame,
                                     hop_profile_lines)
from explorer.views.patterns import (attention_histogram, attention_histogram_frame,
                                     attention_links, attention_links_frame, attention_matrix,
                                     attention_matrix_frame, attention_matrix_row,
                                     attention_threshold, image_attention, image_attention_frame,
                                     image_attention_outlines, image_picture, pattern_density,
                                     pattern_frame, pattern_heads, pattern_highlight,
                                     prototype_strip)
