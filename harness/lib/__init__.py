"""Library code that knows no run: video I/O, metrics, the DV tokenizer wrapper, prompts, the token dataset format,
synthetic artifacts."""
