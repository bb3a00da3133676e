"""Self-configuring training: the data's fingerprint and the plan made from it and the compute budget."""
