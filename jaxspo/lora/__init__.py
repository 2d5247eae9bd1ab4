"""LoRA and the model views the training floor asks instead of branching on ``lora``.

- :mod:`~jaxspo.lora.adapters`: the adapters on the decoder's projections and their config.
- :mod:`~jaxspo.lora.views`: the step's full-model forwards, what a phase trains (the
  :class:`~jaxspo.lora.views.ModelView` protocol) and the full-model view.
- :mod:`~jaxspo.lora.model`, :mod:`~jaxspo.lora.adapted`: the step's adapted forwards and the adapted view
  (base frozen, adapters trained).
- :mod:`~jaxspo.lora.base`: the base record (pointer + sha256) a run's adapters belong to.
- :mod:`~jaxspo.lora.merge`: adapters merged into their base.
- :mod:`~jaxspo.lora.stages`: the sequential stages' views (whole model, or one adapter per stage).
- :mod:`~jaxspo.lora.peft`, :mod:`~jaxspo.lora.export`: a LoRA run's merged policy (export, eval) or PEFT export.
- :mod:`~jaxspo.lora.choose`: the one place that picks the full or the adapted view from the config (training,
  ``jaxspo compile``, export and eval).
"""
