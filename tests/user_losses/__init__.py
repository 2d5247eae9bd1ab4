"""Losses written the way a user would, outside jaxspo, named in ``loss.terms`` as ``module:function``."""
