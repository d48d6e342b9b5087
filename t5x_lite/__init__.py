"""t5x_lite: GPT-, BERT- and T5-style pretraining and fine-tuning in JAX/Flax."""

__version__ = "0.1.0"
