"""Uses of a trained model: sampling, fine-tuning, evaluation, in-context learning."""
