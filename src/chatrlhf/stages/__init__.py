"""One module per pipeline stage: load inputs, wire the building blocks, train, save a stage directory."""
