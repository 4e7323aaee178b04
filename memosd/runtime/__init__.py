"""torch/transformers/peft live here only, imported lazily so the daemon starts fast."""
