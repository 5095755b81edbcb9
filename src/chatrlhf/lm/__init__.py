"""Building blocks with no stage logic: tokenizer, model, data, generation, training skeleton."""
