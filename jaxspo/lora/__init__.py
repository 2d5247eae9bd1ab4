"""LoRA and the model views the training floor asks instead of branching on ``lora``.

- :mod:`~jaxspo.lora.adapters`: the adapters on the decoder's projections and their config.
- :mod:`~jaxspo.lora.views`: what a phase trains (the :class:`~jaxspo.lora.views.ModelView` protocol), the
  full-model view, and :func:`~jaxspo.lora.views.preference_view`, the one place that picks full or adapted.
- :mod:`~jaxspo.lora.adapted`: the adapted view (base frozen, adapters trained).
- :mod:`~jaxspo.lora.base`: the base record (pointer + sha256) a run's adapters belong to.
- :mod:`~jaxspo.lora.merge`: adapters merged into their base.
- :mod:`~jaxspo.lora.stages`: sequential stages with one adapter per stage (merged or stacked).
- :mod:`~jaxspo.lora.peft`, :mod:`~jaxspo.lora.export`: a LoRA run's merged or PEFT export.
"""
