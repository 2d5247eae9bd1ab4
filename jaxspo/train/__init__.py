"""Training: state pytree, the pure train step, evaluation and the run loop."""
