"""Config overrides the tests' training runs share."""

# a run that writes no progress bar, TensorBoard events or curves.png (tests that check those leave them on)
QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.plot=false"]

# the tiny model of the whole-run tests: 2 layers, width 32
TINY_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2"]

# the tiny model and synthetic data sizes of the whole-run tests (runs, resumes, stages, processes) and of
# benchmarks/run_programs.py
TINY_MODEL_AND_DATA = [
    *TINY_MODEL,
    "data.synthetic.num_sft=256",
    "data.synthetic.num_train=128",
    "data.synthetic.num_eval=32",
]

# the tiny model on less data: the runs that train a few steps of one phase (LoRA, bad rows, pipelines, contexts)
TINY_MODEL_SMALL_DATA = [
    *TINY_MODEL,
    "data.synthetic.num_sft=64",
    "data.synthetic.num_train=64",
    "data.synthetic.num_eval=16",
]
