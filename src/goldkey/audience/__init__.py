"""Audience: the field catalog, profile facts, traits, tags, segments and real-time membership."""
