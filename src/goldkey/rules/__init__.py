"""The condition language: models, save-time checks, the in-memory evaluator and the batch compiler."""
