"""jaxspo."""
