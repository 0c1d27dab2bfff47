"""Customer insight: models as first-class objects (definition, versioned artifact, metrics, scores
written back to profiles). See ``docs/insight.md``."""
