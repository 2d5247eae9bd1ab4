"""Config overrides the tests' training runs share."""

# a run that writes no progress bar, TensorBoard events or curves.png (tests that check those leave them on)
QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.plot=false"]
