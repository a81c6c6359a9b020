"""The Panel/HoloViews explorer. It reads results through `vit_jax_va` and owns no science."""
