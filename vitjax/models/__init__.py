"""Model families, one file each (timm's): config, Flax modules, timm reading rules, filters.

A family module holds ``CONFIG`` (a frozen dataclass with timm's argument names and
``to_dict``/``from_dict``), ``VARIANTS`` (timm name -> kwargs), ``MODEL`` (the Flax module:
``MODEL(cfg, dtype=...)``, applied to NHWC images), ``TIMM_CLASSES`` (the timm classes it
reads), ``config_from_timm(module)`` and ``checkpoint_filter_fn(state_dict, cfg, **kw)``
(foreign layouts -> timm keys). ``vitjax.registry.FAMILIES`` lists them.
"""
